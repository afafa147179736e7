#!/usr/bin/env python3
"""tl vs PyTorch vs onnxruntime on this machine, in one run, interleaved: images/s and peak RSS.

Run from anywhere after `cargo build --release` (needs torch, torchvision, safetensors, numpy,
pillow, and, when `ort` is among `--tools` as it is by default, onnxruntime and onnx, all from
pip; CI never runs this):

    python3 scripts/bench_vs_torch.py --rounds 5 --images 32 --models vgg16,resnet18 --threads 2

Everything is generated in a temporary directory (or `--workdir DIR`, kept and reused): N
deterministic synthetic images (JPEG and PNG, 256x256 and 320x240), synthetic weight files made
with the repository's rule (scripts/synthetic.py on a torchvision model, saved with
safetensors.torch.save_file) and, for onnxruntime, each model's feature extractor exported from
those same weights with torch.onnx.export (opset 17, dynamic batch axis). Nothing is downloaded.

Three tools (`--tools`, default `tl,torch,ort`; tl must be one of them):
- `tl`: `tl features`;
- `torch`: the torchvision feature extractor as a PyTorch user writes it (transforms, DataLoader,
  inference_mode);
- `ort`: the exported ONNX model in an onnxruntime InferenceSession (CPUExecutionProvider, graph
  optimisation ALL, intra-op threads = --threads), preprocessing with PIL and numpy only, as an
  onnxruntime user writes it (no torch in that process).

Each job case runs every tool as a separate process in each round, rotating which goes first
(round r starts at tool r mod the number of tools), so each tool sees the same conditions. Wall
time is the whole process (start-up, weight loading, decoding, compute, writing the output), as a
user waits for it; the table shows the median over rounds, and the median and range of the
per-round speed ratios tl / other (a round's runs are neighbours in time, so their ratio is less
disturbed by other load than a ratio of medians), also without each Python tool's own import
time. Peak RSS is the child's own `ru_maxrss`, from `os.wait4` on that child. On Linux a child's
peak RSS starts from its parent's at fork and exec, so this driver stays small (it imports neither
numpy nor torch: generating the inputs and comparing the outputs run in child processes) and
prints its own peak RSS, the floor under every measurement. CPU time (user + system) per image is
reported too: it moves much less than wall time when other processes share the machine (note that
onnxruntime's worker threads spin while waiting by default, which counts as CPU time). tl's
output is compared with each other tool's (max relative difference, per image format), so the
numbers compare the same work.

Jobs (`--job`): `features` (tl features vs a torchvision feature extractor and its ONNX export).
A new job is one more entry in JOBS: a function that returns `Case`s (a command per tool and a
check of their outputs).
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

# The tools, in their default order, and how the report names them.
TOOLS = {"tl": "tl", "torch": "PyTorch", "ort": "ORT"}
# What each Python tool's child reports as "import", named in the table.
IMPORT = {"torch": "`import torch`", "ort": "`import onnxruntime`"}
ONNX_OPSET = 17


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


def make_onnx(directory: str, model: str, weights: str) -> str:
    """The feature extractor of torchvision `model` with the weights in `weights`, exported to ONNX
    (input "input", N x 3 x 224 x 224 float32, output "features", N x width; N is dynamic):
    VGG16 features -> avgpool -> flatten -> classifier[:5] (fc7 after its ReLU), ResNet-18 with
    fc replaced by Identity (the 512 pooled values). Written to a temporary name, then renamed."""
    path = os.path.join(directory, f"{model}-features-opset{ONNX_OPSET}.onnx")
    if os.path.exists(path):
        return path
    import importlib.util

    import torch
    import torchvision
    from safetensors.torch import load_file

    net = getattr(torchvision.models, model)()
    missing, unexpected = net.load_state_dict(load_file(weights), strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        sys.exit(f"{weights}: missing {missing}, unexpected {unexpected}")
    if model == "vgg16":
        net.classifier = net.classifier[:5]  # fc6, ReLU, Dropout, fc7, ReLU
    else:
        net.fc = torch.nn.Identity()  # flatten(avgpool(layer4)) = pool
    net.eval()
    x = torch.zeros(2, 3, 224, 224)
    # The torch.export-based exporter needs onnxscript; without it, the TorchScript-based one.
    dynamo = importlib.util.find_spec("onnxscript") is not None
    tmp = path + ".tmp"
    kwargs = {"external_data": False} if dynamo else {}
    with torch.inference_mode():
        torch.onnx.export(
            net, (x,), tmp, input_names=["input"], output_names=["features"],
            dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
            opset_version=ONNX_OPSET, dynamo=dynamo, **kwargs,
        )
    os.replace(tmp, path)
    return path


def list_images(directory: str) -> List[str]:
    """The image files under `directory` (any depth), sorted, as tl lists them."""
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
    return sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(directory)
        for f in names
        if f.lower().endswith(exts)
    )


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
    cmds: Dict[str, List[str]]  # tool ("tl", "torch", "ort") -> its command
    # Compares tl's output with each other tool's after a run: {tool: a short text}.
    check: Callable[[], Dict[str, str]]
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
    if "ort" in args.tools:
        prepare.append("--onnx")
    done = subprocess.run(prepare, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(prepare)}\n{done.stderr[-4000:]}")
    files = json.loads(done.stdout.splitlines()[-1])
    me = [sys.executable, os.path.abspath(__file__)]
    cases = []
    for model in args.models:
        stage, width = FEATURE_STAGE[model]
        weights = files["weights"][model]
        outs = {t: os.path.join(work, f"{t}-{model}.npy") for t in args.tools}
        cmds = {}
        if "tl" in args.tools:
            cmds["tl"] = [
                args.tl, "--threads", str(args.threads), "features", images, "--model", model,
                "--weights", weights, "--layer", stage, "-o", outs["tl"],
                "--batch-size", str(args.batch_size),
            ]
        if "torch" in args.tools:
            cmds["torch"] = me + [
                "_torch_features", "--model", model, "--weights", weights, "--images", images,
                "--out", outs["torch"], "--batch-size", str(args.batch_size),
                "--threads", str(args.threads), "--workers", str(args.torch_workers),
            ]
        if "ort" in args.tools:
            cmds["ort"] = me + [
                "_ort_features", "--onnx", files["onnx"][model], "--images", images,
                "--out", outs["ort"], "--batch-size", str(args.batch_size),
                "--threads", str(args.threads),
            ]
        check = me + ["_check_features", images, str(width), outs["tl"]] + [
            f"{t}={outs[t]}" for t in args.tools if t != "tl"
        ]

        def run_check(check=check):
            done = subprocess.run(check, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"check failed: {shlex.join(check)}\n{done.stdout}{done.stderr}")
            return json.loads(done.stdout.splitlines()[-1])

        cases.append(Case(f"{model} {stage}", args.images, cmds, run_check))
    return cases


def prepare(argv: List[str]) -> None:
    """Child process: writes the images, the weight files and (with --onnx) the ONNX exports,
    prints {"weights": {model: path}, "onnx": {model: path}}."""
    p = argparse.ArgumentParser()
    p.add_argument("--images", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--onnx", action="store_true")
    a = p.parse_args(argv)
    make_images(a.images, a.count)
    models = a.models.split(",")
    weights = {m: make_weights(a.work, m) for m in models}
    onnx = {m: make_onnx(a.work, m, weights[m]) for m in models} if a.onnx else {}
    print(json.dumps({"weights": weights, "onnx": onnx}))


def check_features(argv: List[str]) -> None:
    """Child process: compares tl's feature file with each other tool's (`tool=path`), per image
    format; prints {tool: "PNG x, JPEG y"} as JSON."""
    import numpy as np

    images, width, tl_out = argv[:3]
    paths = sorted(os.listdir(images))
    a = np.load(tl_out)
    if a.shape != (len(paths), int(width)):
        sys.exit(f"tl's output has shape {a.shape}, expected {(len(paths), int(width))}")
    result = {}
    for spec in argv[3:]:
        tool, out = spec.split("=", 1)
        b = np.load(out)
        if b.shape != a.shape:
            sys.exit(f"shapes differ: tl {a.shape}, {TOOLS[tool]} {b.shape}")
        parts = []
        for what, ext in (("PNG", ".png"), ("JPEG", ".jpg")):
            rows = [i for i, p in enumerate(paths) if p.endswith(ext)]
            if rows:
                parts.append(f"{what} {max_rel_diff(a[rows], b[rows]):.1e}")
        result[tool] = ", ".join(parts)
    print(json.dumps(result))


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
    files = list_images(a.images)

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
# The onnxruntime side (run as a child process of this script; no torch in it)


def ort_features(argv: List[str]) -> None:
    """The exported feature extractor in onnxruntime, as an onnxruntime user writes it: an
    InferenceSession on the CPU provider (intra-op threads = --threads, inter-op 1, all graph
    optimisations); preprocessing with PIL and numpy, step for step what torchvision's
    Resize(256), CenterCrop(224), ToTensor, Normalize do on a PIL image; batches of
    --batch-size."""
    t0 = time.perf_counter()
    p = argparse.ArgumentParser()
    for a in ("--onnx", "--images", "--out"):
        p.add_argument(a, required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    import numpy as np
    import onnxruntime
    from PIL import Image

    t_import = time.perf_counter()

    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(a.onnx, sess_options=so,
                                           providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    t_load = time.perf_counter()

    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)

    def preprocess(path):
        with Image.open(path) as im:
            im = im.convert("RGB")
        w, h = im.size
        # Resize(256): the shorter side to 256, the longer to int(256 * long / short).
        if w <= h:
            size = (256, int(256 * h / w))
        else:
            size = (int(256 * w / h), 256)
        if size != (w, h):
            im = im.resize(size, Image.BILINEAR)
        # CenterCrop(224).
        w, h = im.size
        top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
        im = im.crop((left, top, left + 224, top + 224))
        # ToTensor, Normalize: CHW float32 in [0, 1], then (x - mean) / std.
        x = np.asarray(im, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255)
        return (x - mean) / std

    files = list_images(a.images)
    rows = []
    for i in range(0, len(files), a.batch_size):
        x = np.ascontiguousarray(np.stack([preprocess(f) for f in files[i:i + a.batch_size]]))
        rows.append(session.run(None, {input_name: x})[0])
    np.save(a.out, np.concatenate(rows).astype(np.float32))
    t_end = time.perf_counter()
    print(json.dumps({
        "import": t_import - t0,
        "load": t_load - t_import,
        "run": t_end - t_load,
        "onnxruntime": onnxruntime.__version__,
    }))


# --------------------------------------------------------------------------------------------
# Driver


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    children = {"_torch_features": torch_features, "_ort_features": ort_features,
                "_prepare": prepare, "_check_features": check_features}
    if len(sys.argv) > 1 and sys.argv[1] in children:
        children[sys.argv[1]](sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default="features", choices=sorted(JOBS))
    p.add_argument("--tools", default=",".join(TOOLS),
                   help="tools to run, comma-separated: tl (required), torch, ort "
                   "(default: %(default)s; order of the first round)")
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
    args.tools = list(dict.fromkeys(t.strip() for t in args.tools.split(",") if t.strip()))
    for t in args.tools:
        if t not in TOOLS:
            sys.exit(f"--tools: unknown tool {t!r} (known: {', '.join(TOOLS)})")
    if "tl" not in args.tools or len(args.tools) < 2:
        sys.exit("--tools: needs tl and at least one of torch, ort")
    if not os.path.exists(args.tl):
        sys.exit(f"{os.path.relpath(args.tl)} not found: run `cargo build --release` first")
    command = "python3 scripts/bench_vs_torch.py " + shlex.join(sys.argv[1:])
    tools = args.tools
    others = [t for t in tools if t != "tl"]

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

    runs: Dict[str, Dict[str, List[Run]]] = {c.name: {t: [] for t in tools} for c in cases}
    checks: Dict[str, Dict[str, str]] = {}
    for r in range(args.rounds):
        for c in cases:
            k = r % len(tools)  # each tool goes first, second, ... equally often
            for tool in tools[k:] + tools[:k]:
                log = os.path.join(work, f"log-{c.name.replace(' ', '-')}-{tool}")
                run = run_child(c.cmds[tool], env, log)
                runs[c.name][tool].append(run)
                print(f"round {r + 1}/{args.rounds} {c.name:14} {tool:5} {run.wall:7.2f} s "
                      f"{c.items / run.wall:7.2f} img/s  cpu {run.cpu:6.2f} s  {run.maxrss_mib:6.0f} MiB  "
                      f"load {run.load:.2f}", file=sys.stderr)
            if c.name not in checks:
                checks[c.name] = c.check()

    rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "unknown"
    loads = [x.load for c in cases for t in tools for x in runs[c.name][t]]
    versions = []
    for t, key, label in (("torch", "torch", "PyTorch"), ("ort", "onnxruntime", "onnxruntime")):
        found = {x.report.get(key) for c in cases for x in runs[c.name].get(t, []) if x.report}
        if found:
            versions.append(f"{label} {', '.join(sorted(v for v in found if v))}")
    print()
    print(f"`{command}`")
    print()
    print(f"{args.job}, {args.images} images (JPEG+PNG, 256x256 and 320x240), batch "
          f"{args.batch_size}, {args.threads} threads each, {args.rounds} rounds interleaved "
          f"(first tool rotating); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; load average {min(loads):.2f}-{max(loads):.2f} during the "
          f"runs; tl = {tl_label} (repository at {rev}); {'; '.join(versions)}.")
    print()

    def ratios(c, t, warm=False):
        """Per-round speed ratios tl / `t` (wall of `t` over wall of tl, same round)."""
        return [((o.wall - o.report.get("import", 0.0)) if warm else o.wall) / l.wall
                for l, o in zip(runs[c.name]["tl"], runs[c.name][t])]

    head = ["job", "tl img/s"]
    for t in others:
        head += [f"{TOOLS[t]} img/s", f"tl / {TOOLS[t]}, median of rounds (range)"]
    for t in others:
        head += [f"{TOOLS[t]} img/s without {IMPORT[t]}", "tl / that"]
    head += [f"{TOOLS[t]} peak RSS" for t in tools]
    head += [f"RSS tl / {TOOLS[t]}" for t in others]
    head += [f"max rel. diff tl vs {TOOLS[t]}" for t in others]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for c in cases:
        wall = {t: median([x.wall for x in runs[c.name][t]]) for t in tools}
        rss = {t: median([x.maxrss_mib for x in runs[c.name][t]]) for t in tools}
        row = [c.name, f"{c.items / wall['tl']:.2f}"]
        for t in others:
            pair = ratios(c, t)
            row += [f"{c.items / wall[t]:.2f}",
                    f"**{median(pair):.2f}×** ({min(pair):.2f}–{max(pair):.2f})"]
        for t in others:
            warm = median([x.wall - x.report.get("import", 0.0) for x in runs[c.name][t]])
            row += [f"{c.items / warm:.2f}", f"{median(ratios(c, t, warm=True)):.2f}×"]
        row += [f"{rss[t]:.0f} MiB" for t in tools]
        row += [f"**{rss['tl'] / rss[t]:.2f}**" for t in others]
        row += [checks[c.name].get(t, "") for t in others]
        print("| " + " | ".join(row) + " |")
    print()
    print("CPU time (user + system, all threads), median seconds per image; less sensitive than "
          "wall time to other processes on the machine:")
    print()
    for c in cases:
        cpu = {t: median([x.cpu for x in runs[c.name][t]]) / c.items for t in tools}
        parts = [f"tl {cpu['tl']:.3f} s"] + [
            f"{TOOLS[t]} {cpu[t]:.3f} s ({TOOLS[t]} / tl = {cpu[t] / cpu['tl']:.2f})"
            for t in others
        ]
        print(f"- {c.name}: " + ", ".join(parts))
    print()
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"Peak RSS floor (this driver's own, inherited by each child at fork): {floor:.0f} MiB.")
    stages = {
        "torch": ("PyTorch's process", "import torch / build model + load weights"),
        "ort": ("onnxruntime's process", "import onnxruntime / create the InferenceSession"),
    }
    for t in others:
        who, what = stages[t]
        print()
        print(f"{who}, median seconds: {what} / decode + compute + write:")
        print()
        for c in cases:
            rep = [x.report for x in runs[c.name][t] if x.report]
            if rep:
                parts = " / ".join(f"{median([x[k] for x in rep]):.2f}"
                                   for k in ("import", "load", "run"))
                tl_wall = median([x.wall for x in runs[c.name]["tl"]])
                print(f"- {c.name}: {parts} s (tl's whole process: {tl_wall:.2f} s)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
