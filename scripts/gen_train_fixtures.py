"""Training parity fixtures: three SGD-with-momentum steps of fine-tuning in PyTorch.

Run from the repository root:  python3 scripts/gen_train_fixtures.py
Needs torch, torchvision, safetensors, numpy. Writes tests/fixtures/train/*.safetensors.

Weights, head and inputs follow scripts/synthetic.py (twin of src/models/synthetic.rs).
- ResNet-18, --freeze-until conv5 (layer4 and the head train), head Linear(512, 3) named head.0.
- VGG16, --freeze-until conv5 --cut fc7 (features.24.. , fc6, fc7 and the head train), head
  Linear(4096, 3), input 32x32 for speed, the backbone's dropout off.
Frozen BatchNorm runs in eval mode; trainable BatchNorm in train mode. Augmentation, dropout and
shuffling are off; SGD lr 0.001 (the default), momentum 0.9; cross-entropy; one fixed batch, three steps.

The trained tensors are large (layer4 alone is 8.4M values), so the fixture keeps, for each
trainable tensor, the change `after - before` at 256 evenly spaced indices (index k*n//256), and
two sums over the whole change: `proj` = sum(delta * u) with u the synthetic unit vector
"proj/<name>", and `absproj` = sum(|delta * u|) (the scale `proj` is compared at). Small tensors
(BatchNorm statistics and parameters, the head) are kept whole.
"""

import os

import numpy as np
import torch
import torchvision
from safetensors.numpy import save_file
from torch import nn

import synthetic

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "train")
SAMPLES = 256
WHOLE = 4096


def sample_indices(n: int) -> np.ndarray:
    k = min(n, SAMPLES)
    return (np.arange(k, dtype=np.int64) * n) // k


def digest(name: str, before: np.ndarray, after: np.ndarray, out: dict) -> None:
    delta = (after.astype(np.float64) - before.astype(np.float64)).ravel()
    if delta.size <= WHOLE:
        out[name] = after.reshape(before.shape).astype(np.float32)
        return
    idx = sample_indices(delta.size)
    out[name + "#delta"] = delta[idx].astype(np.float32)
    u = synthetic.unit("proj/" + name, delta.size).astype(np.float64)
    out[name + "#proj"] = np.array([np.sum(delta * u)], dtype=np.float32)
    out[name + "#absproj"] = np.array([np.sum(np.abs(delta * u))], dtype=np.float32)


def run(model: nn.Module, head: nn.Module, trainable_prefixes, x, y, path: str) -> None:
    synthetic.fill(model)
    synthetic.fill(head)  # names inside head: "0.weight", renamed below
    with torch.no_grad():
        for name, t in head.state_dict().items():
            t.copy_(torch.from_numpy(synthetic.param("head." + name, tuple(t.shape))))
    named = {**dict(model.state_dict()), **{"head." + k: v for k, v in head.state_dict().items()}}
    before = {k: v.detach().clone().numpy() for k, v in named.items() if not k.endswith("num_batches_tracked")}
    trains = lambda n: n.startswith("head.") or any(n.startswith(p) for p in trainable_prefixes)
    for n, p in model.named_parameters():
        p.requires_grad = trains(n)
    model.train()
    for n, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and not trains(n + "."):
            m.eval()
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(model(x)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    named = {**dict(model.state_dict()), **{"head." + k: v for k, v in head.state_dict().items()}}
    out = {"losses": np.array(losses, dtype=np.float32)}
    for k, v in named.items():
        if k.endswith("num_batches_tracked"):
            continue
        after = v.detach().numpy()
        if trains(k) or k.endswith("running_mean") or k.endswith("running_var"):
            if trains(k):
                digest(k, before[k], after, out)
            elif not np.array_equal(before[k], after):
                raise SystemExit(f"frozen buffer {k} changed in PyTorch")
    save_file(out, path)
    print(path, "losses", losses, "tensors", len(out))


def regularization() -> None:
    """L1/L2 added to the loss by hand over the trainable weights (not biases), as Keras's
    regularizers: R = l1 * sum|w| + l2 * sum w^2; the first Linear is frozen."""
    net = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    synthetic.fill(net)
    net[0].weight.requires_grad_(False)
    net[0].bias.requires_grad_(False)
    x = torch.from_numpy(synthetic.tensor("reg/x", (4, 7)))
    y = torch.tensor([0, 2, 1, 2])
    l1, l2 = 0.01, 0.02
    ce = nn.functional.cross_entropy(net(x), y)
    w = net[2].weight
    penalty = l1 * w.abs().sum() + l2 * (w * w).sum()
    (ce + penalty).backward()
    out = {
        "ce": np.array([ce.item()], dtype=np.float32),
        "penalty": np.array([penalty.item()], dtype=np.float32),
        "2.weight.grad": net[2].weight.grad.numpy(),
        "2.bias.grad": net[2].bias.grad.numpy(),
    }
    save_file(out, os.path.join(OUT, "regularization.safetensors"))


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    regularization()
    y = torch.tensor([0, 1, 2, 1])

    resnet = torchvision.models.resnet18()
    resnet.fc = nn.Identity()
    x = torch.from_numpy(synthetic.tensor("train/resnet18", (4, 3, 64, 64)))
    run(resnet, nn.Sequential(nn.Linear(512, 3)), ["layer4."], x, y, os.path.join(OUT, "resnet18.safetensors"))

    vgg = torchvision.models.vgg16()
    vgg.classifier = vgg.classifier[:6]
    x = torch.from_numpy(synthetic.tensor("train/vgg16", (4, 3, 32, 32)))
    prefixes = [f"features.{i}." for i in range(24, 31)] + ["classifier."]
    run(vgg, nn.Sequential(nn.Linear(4096, 3)), prefixes, x, y, os.path.join(OUT, "vgg16.safetensors"))


if __name__ == "__main__":
    main()
