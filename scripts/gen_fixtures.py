#!/usr/bin/env python3
"""Writes the PyTorch parity fixtures that tests/layers_parity.rs and tests/optim_parity.rs read.

Run from the repository root (needs torch and safetensors; CI does not, the output is committed):

    python3 scripts/gen_fixtures.py

Outputs (deterministic: seeded, float32, one thread):

- tests/fixtures/layers.safetensors: per layer case, the input `x`, the parameters and buffers
  under their PyTorch names, the output `y`, a random upstream gradient `gy`, and every gradient
  (`grad.x`, `grad.weight`, ...), as `<kind>/<case>/<tensor>`. Train-mode BatchNorm also stores
  the updated running statistics (`after.running_mean`, `after.running_var`). Losses store the
  loss `loss` and `grad.x` for an upstream gradient of 1.
- tests/fixtures/optim.safetensors: a small conv net (conv-bn-relu-pool-flatten-linear) with
  its initial parameters (`init/<name>`), a batch (`data/x`, `data/t`), and for each optimizer
  run the parameters and buffers after each of three steps (`<run>/step<i>/<name>`) plus the
  loss before each step (`<run>/loss`).

The `__metadata__` of each file holds `cases`: a JSON list of {kind, name, config}, so the Rust
tests know every case and its hyper-parameters without a second copy of this table.
"""

import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


class Fixtures:
    def __init__(self):
        self.tensors = {}
        self.cases = []

    def add(self, kind, name, config, tensors):
        self.cases.append({"kind": kind, "name": name, "config": config})
        for key, value in tensors.items():
            full = f"{kind}/{name}/{key}"
            assert full not in self.tensors, full
            self.tensors[full] = value.detach().to(torch.float32).contiguous().clone()

    def add_raw(self, key, value):
        assert key not in self.tensors, key
        self.tensors[key] = value.detach().contiguous().clone()

    def save(self, path):
        save_file(self.tensors, path, metadata={"cases": json.dumps(self.cases)})
        return os.path.getsize(path)


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def run_module(module, x, *, train=True):
    """Forward and backward through `module` with a random upstream gradient; returns the output,
    the upstream gradient, and the gradient of every input and parameter by name."""
    module.train(train)
    x = x.clone().requires_grad_(True)
    y = module(x)
    gy = randn(*y.shape)
    y.backward(gy)
    grads = {"grad.x": x.grad}
    for name, p in module.named_parameters():
        grads[f"grad.{name}"] = p.grad
    return y, gy, grads


def state(module, prefix=""):
    return {f"{prefix}{k}": v.clone() for k, v in module.state_dict().items()
            if v.dtype.is_floating_point}


def conv_cases(fx):
    # (name, N, C_in, H, W, C_out, k, S, P, bias): every k in {1,3,7}, S in {1,2}, P in {0,1,3},
    # with and without bias, odd sides, a kernel wider than the image with padding.
    cases = [
        ("k1_s1_p0_bias", 2, 3, 5, 5, 4, 1, 1, 0, True),
        ("k1_s2_p0_nobias", 2, 4, 6, 7, 3, 1, 2, 0, False),
        ("k3_s1_p1_bias", 2, 3, 7, 7, 4, 3, 1, 1, True),
        ("k3_s2_p1_nobias", 3, 2, 7, 6, 4, 3, 2, 1, False),
        ("k3_s2_p0_bias", 2, 3, 8, 9, 2, 3, 2, 0, True),
        ("k3_s1_p3_bias", 2, 2, 4, 5, 3, 3, 1, 3, True),
        ("k7_s2_p3_bias", 2, 3, 11, 11, 4, 7, 2, 3, True),
        ("k7_s1_p3_nobias", 2, 2, 3, 3, 3, 7, 1, 3, False),
        ("k7_s1_p0_nobias", 2, 2, 9, 8, 2, 7, 1, 0, False),
        ("k7_s1_p3_from1x1", 2, 2, 1, 1, 3, 7, 1, 3, True),
        ("k7_s2_p3_from2x3", 2, 2, 2, 3, 3, 7, 2, 3, True),
    ]
    for name, n, ci, h, w, co, k, s, p, bias in cases:
        m = nn.Conv2d(ci, co, k, stride=s, padding=p, bias=bias)
        x = randn(n, ci, h, w)
        y, gy, grads = run_module(m, x)
        config = {"kernel": k, "stride": s, "padding": p, "bias": bias}
        fx.add("conv2d", name, config, {"x": x, "y": y, "gy": gy, **state(m), **grads})


def pool_cases(fx):
    for name, shape, k, s, p in [
        ("k3_s2_p1_odd", (2, 3, 7, 7), 3, 2, 1),
        ("k3_s2_p1_even", (2, 2, 8, 6), 3, 2, 1),
        ("k2_s2_p0_even", (2, 3, 6, 6), 2, 2, 0),
        ("k2_s2_p0_odd", (2, 2, 7, 5), 2, 2, 0),
    ]:
        x = randn(*shape)
        y, gy, grads = run_module(nn.MaxPool2d(k, s, p), x)
        fx.add("max_pool2d", name, {"kernel": k, "stride": s, "padding": p},
               {"x": x, "y": y, "gy": gy, **grads})
    for name, shape, k, s, p in [
        ("k2_s2_p0", (2, 3, 6, 7), 2, 2, 0),
        ("k3_s2_p1", (2, 2, 7, 7), 3, 2, 1),
        ("k3_s1_p0", (2, 2, 5, 6), 3, 1, 0),
    ]:
        x = randn(*shape)
        y, gy, grads = run_module(nn.AvgPool2d(k, s, p), x)
        fx.add("avg_pool2d", name, {"kernel": k, "stride": s, "padding": p},
               {"x": x, "y": y, "gy": gy, **grads})
    for name, shape in [
        ("from_1x1", (2, 3, 1, 1)),
        ("from_5x5", (2, 3, 5, 5)),
        ("from_14x14", (2, 2, 14, 14)),
        ("from_9x11", (2, 2, 9, 11)),
        ("from_7x7", (2, 2, 7, 7)),
    ]:
        x = randn(*shape)
        y, gy, grads = run_module(nn.AdaptiveAvgPool2d((7, 7)), x)
        fx.add("adaptive_avg_pool2d", name, {"out_h": 7, "out_w": 7},
               {"x": x, "y": y, "gy": gy, **grads})


def batch_norm_cases(fx):
    for name, cls, shape in [
        ("2d", nn.BatchNorm2d, (4, 3, 5, 5)),
        ("2d_batch2", nn.BatchNorm2d, (2, 4, 3, 3)),
        ("1d", nn.BatchNorm1d, (6, 5)),
    ]:
        c = shape[1]
        for mode in ["train", "eval"]:
            m = cls(c)
            with torch.no_grad():
                m.weight.copy_(1.0 + 0.5 * randn(c))
                m.bias.copy_(0.5 * randn(c))
                m.running_mean.copy_(0.3 * randn(c))
                m.running_var.copy_(0.5 + torch.rand(c))
            before = state(m)
            x = 1.5 * randn(*shape) + 0.7
            y, gy, grads = run_module(m, x, train=(mode == "train"))
            after = {f"after.{k}": v for k, v in state(m).items()}
            config = {"spatial": cls is nn.BatchNorm2d, "mode": mode, "eps": m.eps,
                      "momentum": m.momentum}
            fx.add("batch_norm", f"{name}_{mode}", config,
                   {"x": x, "y": y, "gy": gy, **before, **grads, **after})


def linear_cases(fx):
    for name, n, i, o, bias in [("bias", 4, 6, 3, True), ("nobias", 3, 5, 4, False)]:
        m = nn.Linear(i, o, bias=bias)
        x = randn(n, i)
        y, gy, grads = run_module(m, x)
        fx.add("linear", name, {"bias": bias}, {"x": x, "y": y, "gy": gy, **state(m), **grads})


def activation_cases(fx):
    for kind, module in [
        ("relu", nn.ReLU()),
        ("sigmoid", nn.Sigmoid()),
        ("tanh", nn.Tanh()),
        ("softmax", nn.Softmax(dim=-1)),
    ]:
        for name, shape in [("2d", (3, 5)), ("4d", (2, 3, 4, 5))]:
            x = 2.0 * randn(*shape)
            y, gy, grads = run_module(module, x)
            fx.add(kind, name, {}, {"x": x, "y": y, "gy": gy, **grads})
    x = randn(3, 4)
    x[0, 0] = 0.0
    fx.add("step", "2d", {}, {"x": x, "y": torch.heaviside(x, torch.tensor(1.0))})
    for name, p, train in [("p0_train", 0.0, True), ("p05_eval", 0.5, False)]:
        x = randn(2, 3, 4)
        y, gy, grads = run_module(nn.Dropout(p), x, train=train)
        fx.add("dropout", name, {"p": p, "train": train}, {"x": x, "y": y, "gy": gy, **grads})


def loss_cases(fx):
    for name, n, c in [("n5_c4", 5, 4), ("n3_c10", 3, 10)]:
        z = (3.0 * randn(n, c)).requires_grad_(True)
        t = torch.randint(0, c, (n,))
        loss = F.cross_entropy(z, t)
        loss.backward()
        fx.add("cross_entropy", name, {"targets": t.tolist()},
               {"x": z, "loss": loss.reshape(1), "grad.x": z.grad})
    for name, reduction in [("mean", "mean"), ("half_sum", "half_sum")]:
        o = randn(3, 4).requires_grad_(True)
        t = randn(3, 4)
        if reduction == "mean":
            loss = F.mse_loss(o, t)
        else:
            loss = 0.5 * ((t - o) ** 2).sum()
        loss.backward()
        fx.add("mse", name, {"reduction": reduction},
               {"x": o, "target": t, "loss": loss.reshape(1), "grad.x": o.grad})


def small_net():
    # Named as nn.Sequential names its children: 0 conv, 1 bn, 2 relu, 3 pool, 4 flatten, 5 fc.
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def optim_fixtures():
    fx = Fixtures()
    net = small_net()
    init = {k: v.clone() for k, v in net.state_dict().items() if v.dtype.is_floating_point}
    x = randn(6, 3, 8, 8)
    t = torch.randint(0, 3, (6,))
    for k, v in init.items():
        fx.add_raw(f"init/{k}", v)
    fx.add_raw("data/x", x)
    fx.add_raw("data/t", t)
    runs = [
        ("sgd_momentum", "sgd", {"lr": 0.1, "momentum": 0.9}),
        ("sgd_nesterov_wd", "sgd",
         {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "dampening": 0.0}),
        ("adam", "adam", {"lr": 0.01}),
        ("adam_wd", "adam", {"lr": 0.005, "weight_decay": 0.01, "betas": [0.8, 0.99], "eps": 1e-6}),
    ]
    cases = []
    for name, kind, config in runs:
        net.load_state_dict(init, strict=False)
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.num_batches_tracked.zero_()
        net.train()
        if kind == "sgd":
            opt = torch.optim.SGD(net.parameters(), **config)
        else:
            opt = torch.optim.Adam(net.parameters(), **config)
        losses = []
        for step in range(1, 4):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), t)
            losses.append(loss.item())
            loss.backward()
            opt.step()
            for k, v in state(net).items():
                fx.add_raw(f"{name}/step{step}/{k}", v)
        fx.add_raw(f"{name}/loss", torch.tensor(losses, dtype=torch.float32))
        cases.append({"kind": kind, "name": name, "config": config})
    fx.cases = cases
    return fx


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    os.makedirs(OUT, exist_ok=True)

    fx = Fixtures()
    conv_cases(fx)
    pool_cases(fx)
    batch_norm_cases(fx)
    linear_cases(fx)
    activation_cases(fx)
    loss_cases(fx)
    size = fx.save(os.path.join(OUT, "layers.safetensors"))
    print(f"layers.safetensors: {len(fx.cases)} cases, {len(fx.tensors)} tensors, {size} bytes")

    torch.manual_seed(1)
    fx = optim_fixtures()
    size = fx.save(os.path.join(OUT, "optim.safetensors"))
    print(f"optim.safetensors: {len(fx.cases)} runs, {len(fx.tensors)} tensors, {size} bytes")


if __name__ == "__main__":
    main()
