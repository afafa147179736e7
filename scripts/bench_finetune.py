#!/usr/bin/env python3
"""Fine-tuning time per epoch: `tl finetune` against the same loop in PyTorch, same machine, same
run, interleaved.

Run after `cargo build --release` (needs torch, torchvision, safetensors, numpy, pillow; CI never
runs this):

    python3 scripts/bench_finetune.py --rounds 3 --models resnet18,vgg16 --threads 2

Inputs are generated in a temporary directory: 64 training and 16 validation PNG images (256x256,
two classes, `DATA/train/<class>`, `DATA/val/<class>`) and synthetic weights (scripts/synthetic.py,
as in bench_vs_torch.py). Each case trains `--freeze-until conv5` with a new Linear head, batch 16,
SGD lr 1e-3 momentum 0.9, for 2 epochs, and reports the second epoch (training + validation; tl's
from its metrics CSV, PyTorch's timed around the same two loops), so start-up and weight loading
are left out of both. With augmentation (the default set: flip, translate, rotate, scale,
brightness — in PyTorch RandomHorizontalFlip, RandomAffine(15, (0.1, 0.1), (0.9, 1.1)),
ColorJitter(brightness=0.2) between Resize(256) and CenterCrop(224)), and for ResNet-18 also
without augmentation over 10 epochs end to end, where tl trains from its frozen-feature cache: that
case compares tl's decode + cache + epochs + checkpoints (the total of the `time: <s> s (...)` line
`tl finetune` prints to stderr, weight loading left out) against PyTorch's loop, timed from the
first epoch to the last, which decodes every image every epoch and writes no checkpoints. For
that case it also prints CPU seconds (user + system, all threads): tl's whole process, PyTorch's
over the timed loop (`time.process_time`), a ratio less moved by other load on the machine.
"""

import argparse
import csv
import importlib.util
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_spec = importlib.util.spec_from_file_location("bench_vs_torch", os.path.join(HERE, "bench_vs_torch.py"))
bvt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bvt)


def make_data(root: str) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    for split, n in (("train", 32), ("val", 8)):
        for c, tint in (("a", (1.0, 0.6, 0.6)), ("b", (0.6, 0.6, 1.0))):
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                p = os.path.join(d, f"{i:03d}.png")
                if not os.path.exists(p):
                    a = rng.random((256, 256, 3)) * 255 * np.array(tint)
                    Image.fromarray(a.astype("uint8")).save(p)


def torch_finetune(argv) -> None:
    """Child: the PyTorch loop; prints {"epoch": seconds of the last epoch, "total": seconds,
    "cpu": CPU seconds of all its threads over the same span as "total"}."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--augment", default="all")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import torch
    import torchvision
    from safetensors.torch import load_file
    from torchvision import transforms as T

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    aug = []
    if a.augment == "all":
        aug = [T.RandomHorizontalFlip(), T.RandomAffine(15, translate=(0.1, 0.1), scale=(0.9, 1.1)),
               T.ColorJitter(brightness=0.2)]
    norm = [T.CenterCrop(224), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    train_tf = T.Compose([T.Resize(256)] + aug + norm)
    val_tf = T.Compose([T.Resize(256)] + norm)
    train = torchvision.datasets.ImageFolder(os.path.join(a.data, "train"), train_tf)
    val = torchvision.datasets.ImageFolder(os.path.join(a.data, "val"), val_tf)
    tl_ = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True, num_workers=0)
    vl = torch.utils.data.DataLoader(val, batch_size=16, shuffle=False, num_workers=0)
    net = getattr(torchvision.models, a.model)()
    net.load_state_dict(load_file(a.weights), strict=False)
    if a.model == "resnet18":
        net.fc = torch.nn.Linear(512, 2)
        trains = lambda n: n.startswith("layer4") or n.startswith("fc")
    else:
        net.classifier[6] = torch.nn.Linear(4096, 2)
        trains = lambda n: n.startswith("classifier") or any(n.startswith(f"features.{i}.") for i in range(24, 31))
    for n, q in net.named_parameters():
        q.requires_grad = trains(n)
    opt = torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=1e-3, momentum=0.9)

    def set_train():
        net.train()
        for n, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d) and not trains(n + "."):
                m.eval()

    start, cpu_start = time.perf_counter(), time.process_time()
    last = 0.0
    for _ in range(a.epochs):
        t0 = time.perf_counter()
        set_train()
        for x, y in tl_:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            for x, y in vl:
                torch.nn.functional.cross_entropy(net(x), y)
        last = time.perf_counter() - t0
    print(json.dumps({"epoch": last, "total": time.perf_counter() - start,
                      "cpu": time.process_time() - cpu_start}))


def tl_epoch(metrics: str) -> float:
    """The last epoch's seconds (training + validation) from tl's metrics CSV."""
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["seconds"])


TIME_LINE = re.compile(r"^time: ([0-9]+(?:\.[0-9]+)?) s\b")


def tl_total(stderr_log: str) -> float:
    """tl's end-to-end seconds (decoding, frozen-feature cache, epochs, checkpoints) from the
    `time: <s> s (...)` line `tl finetune` prints to stderr."""
    with open(stderr_log) as f:
        # Progress bars may share a line via carriage returns; look at each piece.
        found = [m.group(1) for l in re.split(r"[\r\n]", f.read()) if (m := TIME_LINE.match(l))]
    if not found:
        sys.exit(f"no `time: <s> s` line in {stderr_log}")
    return float(found[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_torch":
        torch_finetune(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", default="resnet18,vgg16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tl", default=bvt.TL)
    args = p.parse_args()
    command = "python3 scripts/bench_finetune.py " + shlex.join(sys.argv[1:])
    work = tempfile.mkdtemp(prefix="tl-bench-ft-")
    data = os.path.join(work, "data")
    make_data(data)
    tl = os.path.join(work, "tl-under-test")
    subprocess.run(["cp", args.tl, tl], check=True)
    env = bvt.child_env(args.threads)
    cases = []
    for m in [x.strip() for x in args.models.split(",") if x.strip()]:
        w = bvt.make_weights(work, m)
        cases.append((f"{m} conv5, augmented, per epoch", m, w, "all", 2, "epoch"))
        if m == "resnet18":
            cases.append((f"{m} conv5, no augmentation, 10 epochs", m, w, "none", 10, "total"))
    results = {c[0]: {"tl": [], "torch": []} for c in cases}
    # CPU seconds (user + system, all threads) of the end-to-end cases.
    cpu = {c[0]: {"tl": [], "torch": []} for c in cases}
    for r in range(args.rounds):
        for name, m, w, aug, epochs, what in cases:
            order = ["tl", "torch"] if r % 2 == 0 else ["torch", "tl"]
            for tool in order:
                log = os.path.join(work, f"log-{m}-{aug}-{tool}")
                if tool == "tl":
                    out = os.path.join(work, f"ft-{m}-{aug}.safetensors")
                    cmd = [tl, "--threads", str(args.threads), "finetune", data, "--model", m, "--weights", w,
                           "--freeze-until", "conv5", "--epochs", str(epochs), "--batch-size", "16",
                           "--patience", "0", "--augment", "none" if aug == "none" else
                           "flip,translate,rotate,scale,brightness", "-o", out]
                    run = bvt.run_child(cmd, env, log)
                    epoch = tl_epoch(out.replace(".safetensors", ".metrics.csv"))
                    total = tl_total(log + ".err") if what == "total" else None
                    cpu_s = run.cpu
                else:
                    cmd = [sys.executable, os.path.abspath(__file__), "_torch", "--model", m, "--weights", w,
                           "--data", data, "--epochs", str(epochs), "--augment", aug, "--threads", str(args.threads)]
                    rep = bvt.run_child(cmd, env, log).report
                    epoch, total, cpu_s = rep["epoch"], rep["total"], rep["cpu"]
                v = epoch if what == "epoch" else total
                results[name][tool].append(v)
                if what == "total":
                    cpu[name][tool].append(cpu_s)
                print(f"round {r + 1}/{args.rounds} {name:40} {tool:5} {v:7.2f} s  load {os.getloadavg()[0]:.2f}",
                      file=sys.stderr)
    print(f"\n`{command}`\n")
    print("| job (64 training + 16 validation images, batch 16) | tl s | PyTorch s | PyTorch / tl (median of rounds, range) |")
    print("|---|---|---|---|")
    for name, *_ in cases:
        t, h = results[name]["tl"], results[name]["torch"]
        pair = [b / a for a, b in zip(t, h)]
        print(f"| {name} | {statistics.median(t):.2f} | {statistics.median(h):.2f} | "
              f"**{statistics.median(pair):.2f}×** ({min(pair):.2f}–{max(pair):.2f}) |")
    ends = [name for name, *_ in cases if cpu[name]["tl"]]
    if ends:
        print("\nCPU time (user + system, all threads), less sensitive than wall time to other processes "
              "on the machine; tl's whole process (start-up and weight loading included), PyTorch's over "
              "the timed loop:\n")
        for name in ends:
            t, h = cpu[name]["tl"], cpu[name]["torch"]
            pair = [b / a for a, b in zip(t, h)]
            print(f"- {name}: tl {statistics.median(t):.2f} s, PyTorch {statistics.median(h):.2f} s "
                  f"(PyTorch / tl = {statistics.median(pair):.2f}, {min(pair):.2f}–{max(pair):.2f})")


if __name__ == "__main__":
    main()
