#!/usr/bin/env python3
"""tl against PyTorch on this machine, in one run, interleaved: images/s and peak RSS.

Run from anywhere after `cargo build --release` (needs torch, torchvision, safetensors, numpy,
pillow; CI never runs this):

    python3 scripts/bench_vs_torch.py --rounds 5 --images 32 --models vgg16,resnet18 --threads 2

Everything is generated in a temporary directory (or `--workdir DIR`, kept and reused): N
deterministic synthetic images (JPEG and PNG, 256x256 and 320x240) and synthetic weight files made
with the repository's rule (scripts/synthetic.py on a torchvision model, saved with
safetensors.torch.save_file). Nothing is downloaded.

Each job case runs tl and the equivalent PyTorch program as separate processes, alternating which
goes first in each round. Wall time is the whole process (start-up, weight loading, decoding,
compute, writing the output), as a user waits for it; the table shows the median over rounds,
and the median and range of the per-round speed ratios (a round's two runs are neighbours in
time, so their ratio is less disturbed by other load than a ratio of medians). Peak RSS is the
child's own `ru_maxrss`, from `os.wait4` on that child. On Linux a child's peak RSS starts from
its parent's at fork and exec, so this driver stays small (it imports neither numpy nor torch:
generating the inputs and comparing the outputs run in child processes) and prints its own peak
RSS, the floor under every measurement. CPU time (user + system) per image is reported too: it
moves much less than wall time when other processes share the machine. The outputs of the two
tools are compared, so the numbers compare the same work.

Jobs (`--job`): `features` (tl features vs a torchvision feature extractor). A new job is one more
entry in JOBS: a function that returns `Case`s (a tl command, a PyTorch command, and a check of
their outputs).
"""

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TL = os.path.join(ROOT, "target", "release", "tl")

# Feature stage of each model, as tl names it, and how many values it has.
FEATURE_STAGE = {"vgg16": ("fc7", 4096), "resnet18": ("pool", 512)}


# --------------------------------------------------------------------------------------------
# Generated inputs


def make_images(directory: str, n: int) -> List[str]:
    """`n` deterministic RGB images: smooth colour ramps and rings plus mild noise, alternating
    JPEG (quality 90) and PNG, 256x256 and 320x240 (the second one is resized by both tools)."""
    import numpy as np
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(1234)
    sizes = [(256, 256), (320, 240), (256, 256), (240, 320)]
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        ext = "jpg" if i % 2 == 0 else "png"
        path = os.path.join(directory, f"img{i:04d}.{ext}")
        paths.append(path)
        if os.path.exists(path):
            continue
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, size=3)
        freq = rng.uniform(0.02, 0.08, size=3)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = np.hypot(xx - cx, yy - cy)
        chans = []
        for c in range(3):
            v = 128 + 60 * np.sin(freq[c] * r + phase[c]) + 50 * (xx / w - 0.5) * (c - 1)
            v += 40 * (yy / h - 0.5) * (1 - c) + rng.normal(0, 12, size=(h, w))
            chans.append(v)
        img = np.clip(np.stack(chans, axis=-1), 0, 255).astype(np.uint8)
        if ext == "jpg":
            Image.fromarray(img, "RGB").save(path, quality=90)
        else:
            Image.fromarray(img, "RGB").save(path)
    return paths


def make_weights(directory: str, model: str) -> str:
    """The synthetic weights of scripts/synthetic.py for a torchvision `model`, as safetensors."""
    path = os.path.join(directory, f"{model}-synthetic.safetensors")
    if os.path.exists(path):
        return path
    sys.path.insert(0, HERE)
    import synthetic
    import torchvision
    from safetensors.torch import save_file

    net = getattr(torchvision.models, model)()
    synthetic.fill(net)
    state = {
        k: v.contiguous()
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    save_file(state, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


# --------------------------------------------------------------------------------------------
# Running a child and measuring it


@dataclass
class Run:
    wall: float  # seconds, the whole process
    maxrss_mib: float  # the child's own peak RSS
    cpu: float  # user + system seconds of the child (and of children it waited for)
    load: float  # 1-minute load average just before the run
    report: dict  # what the child printed as JSON on its last stdout line, if anything


def run_child(cmd: List[str], env: dict, log: str) -> Run:
    """Runs `cmd`, waits with os.wait4 (its rusage is this child's alone), fails loudly."""
    load = os.getloadavg()[0]
    with open(log + ".out", "w") as out, open(log + ".err", "w") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        with open(log + ".err") as f:
            sys.exit(f"failed ({p.returncode}): {shlex.join(cmd)}\n{f.read()[-4000:]}")
    report = {}
    with open(log + ".out") as f:
        lines = [l for l in f.read().splitlines() if l.startswith("{")]
        if lines:
            report = json.loads(lines[-1])
    return Run(wall, ru.ru_maxrss / 1024.0, ru.ru_utime + ru.ru_stime, load, report)


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[k] = str(threads)
    env.pop("RUST_BACKTRACE", None)
    return env


# --------------------------------------------------------------------------------------------
# Jobs


@dataclass
class Case:
    name: str  # a table row, e.g. "vgg16 fc7"
    items: int  # images per run (for images/s)
    tl_cmd: List[str]
    torch_cmd: List[str]
    check: Callable[[], str]  # compares the two outputs after a run; returns a short text
    extra: Dict[str, str] = field(default_factory=dict)


def max_rel_diff(a, b) -> float:
    """max |a - b| / max |b| (elementwise error at the scale of the reference)."""
    import numpy as np

    scale = float(np.abs(b).max()) or 1.0
    return float(np.abs(a - b).max()) / scale


def features_job(args, work: str) -> List[Case]:
    images = os.path.join(work, "images")
    prepare = [sys.executable, os.path.abspath(__file__), "_prepare", "--images", images,
               "--count", str(args.images), "--work", work, "--models", ",".join(args.models)]
    weights = json.loads(subprocess.run(prepare, check=True, capture_output=True,
                                        text=True).stdout.splitlines()[-1])
    cases = []
    for model in args.models:
        stage, width = FEATURE_STAGE[model]
        tl_out = os.path.join(work, f"tl-{model}.npy")
        torch_out = os.path.join(work, f"torch-{model}.npy")
        tl_cmd = [
            args.tl, "--threads", str(args.threads), "features", images, "--model", model,
            "--weights", weights[model], "--layer", stage, "-o", tl_out,
            "--batch-size", str(args.batch_size),
        ]
        torch_cmd = [
            sys.executable, os.path.abspath(__file__), "_torch_features", "--model", model,
            "--weights", weights[model], "--images", images, "--out", torch_out,
            "--batch-size", str(args.batch_size), "--threads", str(args.threads),
            "--workers", str(args.torch_workers),
        ]
        check = [sys.executable, os.path.abspath(__file__), "_check_features", tl_out,
                 torch_out, images, str(width)]

        def run_check(check=check):
            return subprocess.run(check, check=True, capture_output=True,
                                  text=True).stdout.strip()

        cases.append(Case(f"{model} {stage}", args.images, tl_cmd, torch_cmd, run_check))
    return cases


def prepare(argv: List[str]) -> None:
    """Child process: writes the images and weight files, prints {model: weights path}."""
    p = argparse.ArgumentParser()
    p.add_argument("--images", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--models", required=True)
    a = p.parse_args(argv)
    make_images(a.images, a.count)
    print(json.dumps({m: make_weights(a.work, m) for m in a.models.split(",")}))


def check_features(argv: List[str]) -> None:
    """Child process: compares tl's and PyTorch's feature files, per image format."""
    import numpy as np

    tl_out, torch_out, images, width = argv
    paths = sorted(os.listdir(images))
    a, b = np.load(tl_out), np.load(torch_out)
    if a.shape != b.shape or a.shape != (len(paths), int(width)):
        sys.exit(f"shapes differ: tl {a.shape}, PyTorch {b.shape}")
    parts = []
    for what, ext in (("PNG", ".png"), ("JPEG", ".jpg")):
        rows = [i for i, p in enumerate(paths) if p.endswith(ext)]
        if rows:
            parts.append(f"{what} {max_rel_diff(a[rows], b[rows]):.1e}")
    print(", ".join(parts))


JOBS = {"features": features_job}


# --------------------------------------------------------------------------------------------
# The PyTorch side (run as a child process of this script)


def torch_features(argv: List[str]) -> None:
    """Torchvision feature extraction as a PyTorch user writes it: Resize(256), CenterCrop(224),
    ToTensor, Normalize; a DataLoader (`--workers` processes, 0 = a plain loop in this process);
    eval mode and inference_mode; the model built on the meta device and its weights assigned
    from the safetensors file (no random initialisation to pay for)."""
    t0 = time.perf_counter()
    p = argparse.ArgumentParser()
    for a in ("--model", "--weights", "--images", "--out"):
        p.add_argument(a, required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args(argv)

    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from safetensors.torch import load_file
    from torchvision import transforms

    torch.set_num_threads(a.threads)
    t_import = time.perf_counter()

    with torch.device("meta"):
        model = getattr(torchvision.models, a.model)()
    state = load_file(a.weights)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.zeros((), dtype=torch.long)
    model.load_state_dict(state, assign=True)
    model.eval()
    if a.model == "vgg16":
        classifier = model.classifier[:5]  # fc6, ReLU, Dropout, fc7, ReLU

        def features(x):
            return classifier(torch.flatten(model.avgpool(model.features(x)), 1))

    else:
        model.fc = torch.nn.Identity()  # flatten(avgpool(layer4)) = pool

        def features(x):
            return model(x)

    t_load = time.perf_counter()

    tf = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
    files = sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(a.images)
        for f in names
        if f.lower().endswith(exts)
    )

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as im:
                return tf(im.convert("RGB"))

    loader = torch.utils.data.DataLoader(
        Files(), batch_size=a.batch_size, shuffle=False, num_workers=a.workers
    )
    rows = []
    with torch.inference_mode():
        for x in loader:
            rows.append(features(x).numpy())
    np.save(a.out, np.concatenate(rows).astype(np.float32))
    t_end = time.perf_counter()
    print(json.dumps({
        "import": t_import - t0,
        "load": t_load - t_import,
        "run": t_end - t_load,
        "torch": torch.__version__,
    }))


# --------------------------------------------------------------------------------------------
# Driver


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    children = {"_torch_features": torch_features, "_prepare": prepare,
                "_check_features": check_features}
    if len(sys.argv) > 1 and sys.argv[1] in children:
        children[sys.argv[1]](sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default="features", choices=sorted(JOBS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--models", default="vgg16,resnet18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--torch-workers", type=int, default=0,
                   help="DataLoader worker processes for PyTorch (0: load in the main process)")
    p.add_argument("--tl", default=TL, help="the tl binary (default: target/release/tl)")
    p.add_argument("--workdir", help="keep generated files here and reuse them (default: a "
                   "temporary directory, deleted at the end)")
    args = p.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in FEATURE_STAGE:
            sys.exit(f"--models: unknown model {m!r} (known: {', '.join(FEATURE_STAGE)})")
    if not os.path.exists(args.tl):
        sys.exit(f"{os.path.relpath(args.tl)} not found: run `cargo build --release` first")
    command = "python3 scripts/bench_vs_torch.py " + shlex.join(sys.argv[1:])

    tmp = None
    if args.workdir:
        work = args.workdir
        os.makedirs(work, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tl-bench-")
        work = tmp.name
    # A private copy, so that a rebuild of target/release during the run cannot swap binaries.
    snapshot = os.path.join(work, "tl-under-test")
    shutil.copy2(args.tl, snapshot)
    tl_label = os.path.relpath(args.tl, ROOT)
    args.tl = snapshot
    print(f"preparing inputs in {work} ...", file=sys.stderr)
    cases = JOBS[args.job](args, work)
    env = child_env(args.threads)

    runs: Dict[str, Dict[str, List[Run]]] = {c.name: {"tl": [], "torch": []} for c in cases}
    checks: Dict[str, str] = {}
    for r in range(args.rounds):
        for c in cases:
            order = ["tl", "torch"] if r % 2 == 0 else ["torch", "tl"]
            for tool in order:
                cmd = c.tl_cmd if tool == "tl" else c.torch_cmd
                log = os.path.join(work, f"log-{c.name.replace(' ', '-')}-{tool}")
                run = run_child(cmd, env, log)
                runs[c.name][tool].append(run)
                print(f"round {r + 1}/{args.rounds} {c.name:14} {tool:5} {run.wall:7.2f} s "
                      f"{c.items / run.wall:7.2f} img/s  cpu {run.cpu:6.2f} s  {run.maxrss_mib:6.0f} MiB  "
                      f"load {run.load:.2f}", file=sys.stderr)
            if c.name not in checks:
                checks[c.name] = c.check()

    rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "unknown"
    loads = [x.load for c in cases for t in ("tl", "torch") for x in runs[c.name][t]]
    print()
    print(f"`{command}`")
    print()
    print(f"{args.job}, {args.images} images (JPEG+PNG, 256x256 and 320x240), batch "
          f"{args.batch_size}, {args.threads} threads each, {args.rounds} rounds interleaved; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
          f"{min(loads):.2f}-{max(loads):.2f} during the runs; tl = {tl_label} (repository at "
          f"{rev}).")
    print()
    print("| job | tl img/s | PyTorch img/s | tl / PyTorch, median of rounds (range) | "
          "PyTorch img/s without `import torch` | tl / that | tl peak RSS | PyTorch peak RSS | "
          "RSS tl / PyTorch | features max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        tl_runs, th_runs = runs[c.name]["tl"], runs[c.name]["torch"]
        tl_wall = median([x.wall for x in tl_runs])
        th_wall = median([x.wall for x in th_runs])
        th_warm = median([x.wall - x.report.get("import", 0.0) for x in th_runs])
        pair = [h.wall / t.wall for t, h in zip(tl_runs, th_runs)]
        pair_warm = [(h.wall - h.report.get("import", 0.0)) / t.wall
                     for t, h in zip(tl_runs, th_runs)]
        tl_rss = median([x.maxrss_mib for x in tl_runs])
        th_rss = median([x.maxrss_mib for x in th_runs])
        print(f"| {c.name} | {c.items / tl_wall:.2f} | {c.items / th_wall:.2f} | "
              f"**{median(pair):.2f}×** ({min(pair):.2f}–{max(pair):.2f}) | "
              f"{c.items / th_warm:.2f} | {median(pair_warm):.2f}× | {tl_rss:.0f} MiB | "
              f"{th_rss:.0f} MiB | **{tl_rss / th_rss:.2f}** | {checks[c.name]} |")
    print()
    print("CPU time (user + system, all threads), median seconds per image; less sensitive than "
          "wall time to other processes on the machine:")
    print()
    for c in cases:
        tl_cpu = median([x.cpu for x in runs[c.name]["tl"]]) / c.items
        th_cpu = median([x.cpu for x in runs[c.name]["torch"]]) / c.items
        print(f"- {c.name}: tl {tl_cpu:.3f} s, PyTorch {th_cpu:.3f} s "
              f"(PyTorch / tl = {th_cpu / tl_cpu:.2f})")
    print()
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"Peak RSS floor (this driver's own, inherited by each child at fork): {floor:.0f} MiB.")
    print()
    print("PyTorch's process, median seconds: import torch / build model + load weights / "
          "decode + compute + write:")
    print()
    for c in cases:
        rep = [x.report for x in runs[c.name]["torch"] if x.report]
        if rep:
            parts = " / ".join(f"{median([x[k] for x in rep]):.2f}" for k in ("import", "load",
                                                                               "run"))
            tl_wall = median([x.wall for x in runs[c.name]["tl"]])
            print(f"- {c.name}: {parts} s (tl's whole process: {tl_wall:.2f} s)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
