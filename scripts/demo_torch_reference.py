#!/usr/bin/env python3
"""PyTorch reference for "learning on the demo's images" without pretrained weights.

Trains torchvision's ResNet-18 from random weights on an image folder drawn by `tl demo` (classes
as sub-folders), the way a PyTorch user would: the images resized and centre-cropped to
`--size`, a seeded 80/20 split, Adam, batch 16, cross-entropy; either every stage trainable
(`--trainable all`) or only layer4 and the new fc (`--trainable conv5`, the other stages frozen
with their BatchNorm in eval mode, as `tl finetune --freeze-until conv5` does), optionally with
flips and 90-degree rotations of each batch (`--augment`). Prints training and validation loss
and accuracy per epoch, so the figures of `tl finetune` on the same folder can be set beside
PyTorch's. CI never runs this; it needs torch and torchvision.

    cargo run --release -- demo --dir /tmp/d --per-class 200 --epochs 1 --image-size 64
    python3 scripts/demo_torch_reference.py /tmp/d/data --size 64 --trainable all --epochs 15
"""

import argparse
import random
import time

import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms as T


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="an image folder: one sub-folder per class")
    p.add_argument("--size", type=int, default=64, help="crop side (resize to size*256/224)")
    p.add_argument("--trainable", choices=["all", "conv5"], default="all")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--augment", action="store_true", help="random flips and 90-degree rotations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    tf = T.Compose([
        T.Resize(a.size * 256 // 224),
        T.CenterCrop(a.size),
        T.ToTensor(),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    ds = torchvision.datasets.ImageFolder(a.data, tf)
    order = list(range(len(ds)))
    rng.shuffle(order)
    n_val = len(ds) // 5
    x = torch.stack([ds[i][0] for i in order])
    y = torch.tensor([ds[i][1] for i in order])
    x_val, y_val, x_tr, y_tr = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    print(f"{len(ds.classes)} classes ({', '.join(ds.classes)}), {len(x_tr)} training and "
          f"{n_val} validation images at {a.size}x{a.size}", flush=True)

    model = torchvision.models.resnet18(num_classes=len(ds.classes))
    frozen = []
    if a.trainable == "conv5":
        frozen = [model.conv1, model.bn1, model.layer1, model.layer2, model.layer3]
        for m in frozen:
            m.requires_grad_(False)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=a.lr)
    best = 0.0
    for epoch in range(1, a.epochs + 1):
        t0 = time.time()
        model.train()
        for m in frozen:
            m.eval()
        perm = torch.randperm(len(x_tr))
        loss_sum, correct = 0.0, 0
        for b in range(0, len(x_tr), 16):
            idx = perm[b:b + 16]
            xb = x_tr[idx]
            if a.augment:
                if rng.random() < 0.5:
                    xb = xb.flip(3)
                if rng.random() < 0.5:
                    xb = xb.flip(2)
                xb = torch.rot90(xb, rng.randrange(4), (2, 3))
            out = model(xb)
            loss = F.cross_entropy(out, y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == y_tr[idx]).sum().item()
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            val_loss = F.cross_entropy(out, y_val).item()
            val_acc = (out.argmax(1) == y_val).float().mean().item()
        best = max(best, val_acc)
        print(f"epoch {epoch:3d}  train_loss {loss_sum / len(x_tr):.4f}  "
              f"train_acc {correct / len(x_tr):.3f}  val_loss {val_loss:.4f}  "
              f"val_acc {val_acc:.3f}  {time.time() - t0:.1f}s", flush=True)
    print(f"best val_acc {best:.3f} (chance {1 / len(ds.classes):.3f})")


if __name__ == "__main__":
    main()
