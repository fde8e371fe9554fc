"""Input-pipeline throughput: torchvision's stock ImageFolder pipeline against sslprune's FolderLoader.

What it measures (images/s delivered to the device as training batches, same process, same
DataLoader worker count, same batch size, crop size and tree of JPEGs):
  reference  the stock path: torchvision.datasets.ImageFolder with RandomResizedCrop,
             RandomHorizontalFlip, ToTensor and Normalize, a DataLoader (shuffle, drop_last,
             pin_memory on CUDA), each batch moved to the device.
  pipeline   sslprune's FolderLoader (`data.decode`, default auto: decoded on the GPU when there is
             one, else in the workers), normalised batches on the device (channels_last on CUDA).
The reference starts its DataLoader workers every epoch; FolderLoader keeps its workers for the
whole stage, as a stage does, so its CPU time per image misses the workers it has not reaped yet
(read the wall-time ratio). Each epoch is timed from its first batch on (steady state); one untimed epoch of each warms the page cache first. Repetitions alternate the order of the two; the table shows
medians, min and max, and the process CPU time per image (this process and its reaped worker
processes), steadier than wall time on a shared machine.

With --device cuda --model resnet50 it then trains the model (bf16 autocast, channels_last, SGD)
a few steps on the pipeline's batches and on one synthetic batch held on the GPU, and prints
`real/synthetic: <ratio>` (>= 0.95 means the input pipeline keeps up with the GPU).

The tree (built unless --root holds one): JPEGs in ImageNet's shape and size distribution, made
from the two photographs scikit-learn ships (crops at random scales and positions, resized,
mirrored, with pixel noise so they compress like photos): long side 500 for most, 375x500 the
most common shape, some smaller, a few up to 1000 px; quality chosen so that a 375x500 image
takes 75-110 kB. --root DIR reuses DIR's tree, or builds one there when DIR is missing or empty.

Read the output: the last lines are
  pipeline/reference: R   median over repetitions of (pipeline img/s / reference img/s)
  real/synthetic: Q       (only with --model) training img/s on the pipeline's batches / on synthetic ones

Commands:
  python benchmarks/input_pipeline.py                        # CPU, 2 workers, 512 images, ~2 min on 2 cores
  python benchmarks/input_pipeline.py --device cuda --model resnet50 --workers 10 --batch 256
From another script (benchmarks/gpu_check.py):
  sys.path.insert(0, "benchmarks"); import input_pipeline
  input_pipeline.main(["--device", "cuda", "--model", "resnet50", "--workers", "10", "--batch", "256"])
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = 8
VAL_PER_CLASS = 2


# ---------------------------------------------------------------- the tree of JPEGs


def shape(rng: np.random.RandomState) -> tuple:
    """(height, width) drawn from an ImageNet-like mix of shapes."""
    u = rng.rand()
    if u < 0.7:
        long, short = 500, int(rng.choice([375, 333, 500, 281], p=[0.6, 0.2, 0.12, 0.08]))
    elif u < 0.92:
        long = int(rng.randint(200, 500))
        short = int(long * rng.uniform(0.6, 1.0))
    else:
        long = int(rng.randint(501, 1001))
        short = int(long * rng.uniform(0.6, 0.8))
    return (short, long) if rng.rand() < 0.75 else (long, short)


def _photos():
    from sklearn.datasets import load_sample_images

    return load_sample_images().images  # china.jpg and flower.jpg, 427 x 640


def make_jpeg(index: int, photos=None) -> bytes:
    """Image `index` of the tree as JPEG bytes (a pure function of index)."""
    from PIL import Image

    photos = photos if photos is not None else _photos()
    rng = np.random.RandomState(index)
    h, w = shape(rng)
    src = photos[index % len(photos)]
    ph, pw = src.shape[:2]
    # the largest window of the target's aspect ratio, scaled by 0.5..1, at a random place
    ch = min(ph, int(pw * h / w)) * rng.uniform(0.5, 1.0)
    cw = ch * w / h
    y0, x0 = rng.uniform(0, ph - ch), rng.uniform(0, pw - cw)
    im = Image.fromarray(src).resize((w, h), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.rand() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    scale = h * w / (375 * 500)  # ImageNet's 375x500 JPEGs take 75-110 kB, ~0.5 B/pixel
    low, high = 75_000 * scale, rng.uniform(80_000, 110_000) * scale
    base = np.asarray(im).astype(np.int16)
    for amplitude in (8, 14, 22):  # grain, as photos have: more where the crop was blown up smooth
        noisy = Image.fromarray(np.clip(base + rng.randint(-amplitude, amplitude + 1, base.shape), 0, 255).astype(np.uint8))
        for quality in (95, 92, 90, 87, 85, 80, 75, 70, 60):
            buf = io.BytesIO()
            noisy.save(buf, "JPEG", quality=quality)
            if buf.tell() <= high:
                break
        if buf.tell() >= low:
            break
    return buf.getvalue()


def _write(job) -> int:
    path, index = job
    data = make_jpeg(index, _PHOTOS)
    Path(path).write_bytes(data)
    return len(data)


_PHOTOS = None


def _init_worker():
    global _PHOTOS
    _PHOTOS = _photos()


def build_tree(root: Path, images: int, jobs: int) -> dict:
    """root/train/c<k>/<i>.JPEG (images in all) and root/val/c<k>/ (VAL_PER_CLASS each)."""
    todo = []
    for split, n in (("train", images), ("val", CLASSES * VAL_PER_CLASS)):
        for c in range(CLASSES):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            offset = 0 if split == "train" else images
            todo.append((str(root / split / f"c{i % CLASSES}" / f"{i:06d}.JPEG"), offset + i))
    with multiprocessing.get_context("fork").Pool(jobs, initializer=_init_worker) as pool:
        pool.map(_write, todo, chunksize=16)
    return describe(root)


def describe(root: Path) -> dict:
    from PIL import Image

    files = sorted((root / "train").glob("*/*"))
    dims = []
    for f in files:
        with Image.open(f) as im:
            dims.append(im.size)
    kb = [f.stat().st_size / 1000 for f in files]
    common = [k for f, k, (w, h) in zip(files, kb, dims) if {w, h} == {375, 500}]
    return {"images": len(files), "mean_kb": statistics.mean(kb),
            "kb_375x500": (min(common), max(common)) if common else None,
            "mean_hw": (statistics.mean(h for _, h in dims), statistics.mean(w for w, _ in dims)),
            "max_side": max(max(d) for d in dims)}


# ---------------------------------------------------------------- one epoch of each pipeline


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_epoch(root: Path, size: int, batch: int, workers: int, device, epoch: int) -> tuple:
    """img/s and CPU s/img of one epoch of the stock torchvision pipeline."""
    import torch
    from torchvision import datasets, transforms as T

    tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = datasets.ImageFolder(str(root / "train"), tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                     pin_memory=device.type == "cuda",
                                     generator=torch.Generator().manual_seed(epoch))
    return _timed((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in dl)(device)


def pipeline_epoch(ld, device, epoch: int) -> tuple:
    """img/s and CPU s/img of one epoch of sslprune's loader."""
    return _timed(ld.batches(epoch))(device)


def _timed(batches):
    """Steady-state img/s (the images after the first batch over the time after it: an epoch's
    worker start-up and first-batch latency, ~1 s here and nothing in an ImageNet epoch of
    thousands of batches, are left out) and CPU s/img over the whole epoch."""
    def run(device):
        cpu, n, first, start = _cpu_seconds(), 0, 0, None
        for x, _ in batches:
            n += len(x)
            if start is None:
                _sync(device)
                start, first = time.perf_counter(), n
        _sync(device)
        wall = time.perf_counter() - start
        return (n - first) / wall, (_cpu_seconds() - cpu) / max(n, 1)
    return run


def project_loader(root: Path, size: int, batch: int, workers: int, device, decode: str):
    from sslprune.core.schema import DataConfig
    from sslprune.compute import dataset, loader

    data = dataset.load(DataConfig(name="imagenet", root=str(root), image_size=size, workers=workers, decode=decode))
    return loader.make(data, batch, 0, device, channels_last=device.type == "cuda")


def compare(root: Path, size: int, batch: int, workers: int, device, decode: str, reps: int) -> float:
    ld = project_loader(root, size, batch, workers, device, decode)
    reference_epoch(root, size, batch, workers, device, 0)  # warm: page cache, lazy imports
    pipeline_epoch(ld, device, 0)
    rows = []
    for r in range(reps):
        order = ("reference", "pipeline") if r % 2 == 0 else ("pipeline", "reference")
        got = {}
        for name in order:
            got[name] = (reference_epoch(root, size, batch, workers, device, r + 1) if name == "reference"
                         else pipeline_epoch(ld, device, r + 1))
        rows.append(got)
        print(f"rep {r}: reference {got['reference'][0]:8.1f} img/s   pipeline {got['pipeline'][0]:8.1f} img/s   "
              f"ratio {got['pipeline'][0] / got['reference'][0]:.3f}", flush=True)
    for name in ("reference", "pipeline"):
        ips = [row[name][0] for row in rows]
        cpu = statistics.median(row[name][1] for row in rows) * 1e3
        print(f"{name}: {statistics.median(ips):.1f} img/s (median of {reps}; min {min(ips):.1f}, max {max(ips):.1f})"
              f"   cpu {cpu:.2f} ms/img (whole epochs, worker start-up included)")
    ratios = [row["pipeline"][0] / row["reference"][0] for row in rows]
    cpu_ratio = statistics.median(row["reference"][1] for row in rows) / statistics.median(
        row["pipeline"][1] for row in rows)
    spread = max(max(row[n][0] for row in rows) / min(row[n][0] for row in rows) for n in ("reference", "pipeline"))
    if spread > 1.25:
        print(f"warning: img/s varied {spread:.2f}x across repetitions (a busy machine): trust the ratios "
              f"where the wall-time ratio and the CPU-time ratio agree")
    print(f"cpu reference/pipeline (CPU time per image): {cpu_ratio:.3f}")
    ratio = statistics.median(ratios)
    print(f"pipeline/reference: {ratio:.3f}", flush=True)
    return ratio


# ---------------------------------------------------------------- training on real and synthetic batches


def real_over_synthetic(root: Path, device, model_name: str = "resnet50", batch: int = 256, size: int = 224,
                        workers: int = 10, steps: int = 30, warmup: int = 10, reps: int = 3,
                        decode: str = "auto") -> float:
    """Train `model_name` (bf16 autocast, channels_last, SGD) `warmup` + `steps` steps on the
    loader's batches and on one synthetic batch, `reps` times alternately; print and return the
    median img/s ratio real/synthetic."""
    import torch
    from torch.nn import functional as F

    from sslprune.core.schema import ModelConfig
    from sslprune.compute import model as models

    torch.backends.cudnn.benchmark = True
    ld = project_loader(root, size, batch, workers, device, decode)
    net = models.build(ModelConfig(model_name, 64), 3, CLASSES, 0).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    fake = (torch.randn(batch, 3, size, size, device=device, generator=g).contiguous(memory_format=torch.channels_last),
            torch.randint(0, CLASSES, (batch,), device=device, generator=g))

    def step(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def real():
        epoch = 0
        while True:
            for x, y in ld.batches(epoch):
                yield x, y
            epoch += 1

    def run(source) -> float:
        it = source()
        try:
            for _ in range(warmup):
                step(*next(it))
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step(*next(it))
            _sync(device)
            return steps * batch / (time.perf_counter() - start)
        finally:
            it.close()  # stops the loader's workers and decoding thread

    def synthetic():
        while True:
            yield fake

    ratios = []
    for r in range(reps):
        s, q = run(synthetic), run(real)
        ratios.append(q / s)
        print(f"train rep {r}: synthetic {s:8.1f} img/s   real {q:8.1f} img/s   ratio {q / s:.3f}", flush=True)
    ratio = statistics.median(ratios)
    print(f"real/synthetic: {ratio:.3f}", flush=True)
    return ratio


# ---------------------------------------------------------------- command line


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="input_pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, help="ImageFolder tree to use, or where to build one (default: a temporary one)")
    p.add_argument("--images", type=int, help="training images to build (default 512; with --model enough for one "
                                              "epoch of warm-up + steps + 2 batches)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, both pipelines (default 2)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224, help="crop size (default 224)")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--decode", default="auto", choices=["auto", "device", "workers"], help="the loader's data.decode")
    p.add_argument("--model", help="with --device cuda: also train this sslprune model (resnet50) on real and "
                                   "synthetic batches")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per repetition (with --model)")
    p.add_argument("--warmup", type=int, default=10, help="untimed training steps first (with --model)")
    p.add_argument("--threads", type=int, help="torch threads in this process")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes that build the tree")
    args = p.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda but no CUDA device is visible (torch.cuda.is_available() is False)")
    if args.model is not None:
        from sslprune.core.schema import MODELS

        if args.device != "cuda":
            p.error(f"--model {args.model} trains on the GPU: add --device cuda")
        if args.model not in MODELS:
            p.error(f"--model {args.model!r} is not one of {', '.join(MODELS)}")
    for name in ("workers", "reps", "steps"):
        if getattr(args, name) < (0 if name == "workers" else 1):
            p.error(f"--{name} {getattr(args, name)} is too small")
    if args.batch < 1 or args.size < 1:
        p.error("--batch and --size must be >= 1")
    if args.root is not None and args.root.exists() and not (args.root / "train").is_dir() and any(args.root.iterdir()):
        p.error(f"--root {args.root} is neither an ImageFolder tree (no train/) nor empty")
    if args.images is None:
        args.images = args.batch * (args.warmup + args.steps + 2) if args.model else 512
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    made = None
    root = args.root
    if root is None:
        made = root = Path(tempfile.mkdtemp(prefix="input_pipeline_"))
    try:
        if not (root / "train").is_dir():
            start = time.perf_counter()
            info = build_tree(root, args.images, args.jobs)
            print(f"built {info['images']} JPEGs under {root} in {time.perf_counter() - start:.0f} s", flush=True)
        else:
            info = describe(root)
        kb = info["kb_375x500"]
        print(f"tree: {info['images']} training images, mean {info['mean_hw'][0]:.0f}x{info['mean_hw'][1]:.0f} px "
              f"(largest side {info['max_side']}), mean {info['mean_kb']:.0f} kB"
              + (f", 375x500 ones {kb[0]:.0f}-{kb[1]:.0f} kB" if kb else ""))
        print(f"device {device}, {args.workers} workers, batch {args.batch}, crop {args.size}, decode {args.decode}, "
              f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs", flush=True)
        out = {"pipeline/reference": compare(root, args.size, args.batch, args.workers, device, args.decode, args.reps)}
        if args.model:
            out["real/synthetic"] = real_over_synthetic(root, device, args.model, args.batch, args.size, args.workers,
                                                        args.steps, args.warmup, 3, args.decode)
        return out
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    main()
