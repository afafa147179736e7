#!/usr/bin/env python3
"""Conv2d forward and backward GFLOP/s: tl against PyTorch, on the same machine in the same run.

Shapes: those of `tl bench conv` (VGG16's conv1_2, conv2_2, conv3_1, conv4_2, conv5_1 and
ResNet-18's layer1 and layer4, 3x3, padding 1, bias), all of them or those named by `--layers`;
the script takes each shape's size and channels from tl's `--json` rows, so both sides always run
the same shapes. Forward is timed without gradients; backward is the time of `backward` after a
recorded forward, computing the gradients of the input, the weight and the bias (as `tl bench`
does). Both sides use the same number of threads. Rounds alternate tl and PyTorch (and which goes
first) so that both see the same machine conditions; the reported times are medians over all
timed repetitions.

Run from the repository root after `cargo build --release` (needs torch):

    python3 scripts/bench_conv.py [--threads 2] [--rounds 5] [--iters 10] [--layers conv3_1,layer4]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def flops(batch, side, c_in, c_out):
    return 2.0 * batch * c_out * side * side * c_in * 9


def run_tl(binary, threads, batch, iters, layers):
    """tl's median seconds by (layer, pass), and its shapes in order: (name, side, c_in, c_out)."""
    cmd = [binary, "--threads", str(threads), "bench", "conv", "--batch", str(batch),
           "--iters", str(iters), "--json"] + (["--layers", layers] if layers else [])
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr}")
    times, shapes = {}, []
    for line in run.stdout.splitlines():
        row = json.loads(line)
        times[(row["layer"], row["pass"])] = row["median_ms"] / 1e3
        shape = (row["layer"], row["side"], row["c_in"], row["c_out"])
        if shape not in shapes:
            shapes.append(shape)
    return times, shapes


def run_torch(batch, iters, shapes, warmup=2):
    times = {}
    gen = torch.Generator().manual_seed(0)
    for name, side, c_in, c_out in shapes:
        x = torch.randn(batch, c_in, side, side, generator=gen)
        w = torch.randn(c_out, c_in, 3, 3, generator=gen) * 0.03
        b = torch.randn(c_out, generator=gen)
        g = torch.randn(batch, c_out, side, side, generator=gen)
        fwd, bwd = [], []
        for i in range(warmup + iters):
            with torch.no_grad():
                t = time.perf_counter()
                y = F.conv2d(x, w, b, padding=1)
                f = time.perf_counter() - t
            del y
            xr, wr, br = (v.clone().requires_grad_(True) for v in (x, w, b))
            y = F.conv2d(xr, wr, br, padding=1)
            t = time.perf_counter()
            y.backward(g)
            bt = time.perf_counter() - t
            if i >= warmup:
                fwd.append(f)
                bwd.append(bt)
        times[(name, "forward")] = statistics.median(fwd)
        times[(name, "backward")] = statistics.median(bwd)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--layers", default="",
                    help="comma-separated shape names of `tl bench conv` (default: all)")
    ap.add_argument("--tl", default=os.path.join(ROOT, "target", "release", "tl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    samples = {"tl": [], "torch": []}
    shapes = None
    for r in range(args.rounds):
        # tl goes first in the first round, which gives the shapes.
        order = ["tl", "torch"] if r % 2 == 0 else ["torch", "tl"]
        for who in order:
            if who == "tl":
                times, shapes = run_tl(args.tl, args.threads, args.batch, args.iters, args.layers)
                samples["tl"].append(times)
            else:
                samples["torch"].append(run_torch(args.batch, args.iters, shapes))

    print(f"Conv2d 3x3, padding 1, batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds of {args.iters}; median ms and GFLOP/s")
    print(f"torch {torch.__version__} (oneDNN {torch.backends.mkldnn.is_available()}); "
          f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    header = f"{'layer':<8} {'shape':<16} {'pass':<8} {'tl ms':>8} {'tl GF/s':>8} " \
             f"{'torch ms':>9} {'torch GF/s':>10} {'tl/torch':>8}"
    print(header)
    print("-" * len(header))
    for name, side, c_in, c_out in shapes:
        for pass_ in ["forward", "backward"]:
            work = flops(args.batch, side, c_in, c_out) * (1 if pass_ == "forward" else 2)
            t_tl = statistics.median(s[(name, pass_)] for s in samples["tl"])
            t_pt = statistics.median(s[(name, pass_)] for s in samples["torch"])
            shape = f"{side}x{side}x{c_in}->{c_out}"
            print(f"{name:<8} {shape:<16} {pass_:<8} {t_tl * 1e3:>8.2f} {work / t_tl / 1e9:>8.1f} "
                  f"{t_pt * 1e3:>9.2f} {work / t_pt / 1e9:>10.1f} {t_pt / t_tl:>8.2f}")


if __name__ == "__main__":
    main()
