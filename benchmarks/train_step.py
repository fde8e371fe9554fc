"""Training-step throughput: sslprune's `fit` against a hand-written PyTorch loop, dense and masked.

What it measures (images/s of loader images, warm-up excluded, same process, same device):
  reference  a plain loop: randperm indexing into in-memory uint8 tensors, batched pad-and-crop
             + flip, normalize, forward, cross-entropy, zero_grad, backward, optimizer.step, with
             the same model (sslprune.compute.model.build), optimizer and hyper-parameters, and the same
             precision policy as the project (bf16 autocast + channels_last on CUDA, fp32 on CPU).
  dense      the real `sslprune.compute.trainer.fit` (MemoryLoader, the real task, OptimConfig, Progress)
             with an empty mask `{}`.
  masked     the same with a real global-magnitude mask of ~20% density (mask.magnitude).
Both sides run warmup + steps + 1 steps and time the `steps` steps after the warm-up: the project
side from its step hooks (Fit.hooks run at the start of every step) at steps `warmup` and
`warmup + steps`, so fit()'s per-step work is timed but its one-off end-of-run log, finite checks
and final checkpoint save (in the untimed last step's wake) are not. Each repetition runs the
three in a rotated order on a freshly built model; the table shows medians (and min/max) over
repetitions, plus the median process CPU time per image, which is steadier than wall time on a
shared CPU (it counts every thread, spinning ones included; meaningless on CUDA). A warning is
printed when img/s varied more than 1.25x across repetitions, and the median of per-repetition
ratios is shown too: on a busy machine, trust the ratios only where these agree.

Read the output: the last two lines are
  project/reference: R   (R < 1: fit() is slower than the plain loop; target >= 0.95)
  masked/dense: M        (M < 1: applying the mask costs throughput; target >= 0.95)
Data are synthetic uint8 images held in memory (sslprune.compute.dataset.MemoryData), also for 224px
ResNet-50: this times the training step, not JPEG decoding (FolderLoader is not exercised).
Note with --task rotnet the network sees 4x the images reported.

Commands:
  CPU (default, ~1-3 min on 2 cores):
    python benchmarks/train_step.py --threads 2
  GPU, CIFAR ResNet-18 at batch 512 (bf16 autocast + channels_last):
    python benchmarks/train_step.py --device cuda --model resnet18_cifar --width 64 --batch 512 --steps 50 --warmup 10
  GPU, ResNet-50 at 224px, batch 256, bf16:
    python benchmarks/train_step.py --device cuda --model resnet50 --width 64 --batch 256 --image-size 224 \
        --steps 30 --warmup 10 --pad 16
"""
from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from sslprune.core.progress import Progress
from sslprune.core.schema import ModelConfig, OptimConfig, RunConfig, TaskConfig
from sslprune.compute import mask as masks, model as models, task as tasks
from sslprune.compute.dataset import MemoryData, Split
from sslprune.compute.loader import MemoryLoader
from sslprune.compute.runtime import local
from sslprune.compute.trainer import Fit, fit


PAIRS = (("dense", "reference"), ("masked", "dense"))


def synthetic(n: int, channels: int, size: int, pad: int, seed: int = 0) -> MemoryData:
    g = torch.Generator().manual_seed(seed)
    train = Split(torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n,), generator=g))
    test = Split(train.images[:8].clone(), train.labels[:8].clone())
    return MemoryData("synthetic", train, test, 10, (0.5,) * channels, (0.25,) * channels, pad=pad, flip=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    def __init__(self, args):
        self.args = args
        self.rt = local(RunConfig(device=args.device, threads=args.threads))
        self.device = self.rt.device
        self.end = args.warmup + args.steps  # timing stops at the start of step `end`
        self.total = self.end + 1  # one untimed last step takes fit()'s end-of-run work
        # one epoch of exactly `total` steps: fit() runs epochs * steps_per_epoch steps
        self.data = synthetic(args.batch * self.total, args.channels, args.image_size, args.pad)
        self.loader = MemoryLoader(self.data, args.batch, seed=0, device=self.device,
                                   channels_last=self.rt.channels_last)
        self.task = tasks.make(TaskConfig(args.task), self.data)
        self.optim = OptimConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                                 batch_size=args.batch, epochs=1)
        self.mcfg = ModelConfig(args.model, args.width)
        self.run_cfg = RunConfig(device=args.device, amp=True, log_every=10**9,
                                 checkpoint_steps=0, checkpoint_minutes=0, quiet=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="sslprune-bench-")  # removed at exit
        self.tmp = Path(self._tmp.name)
        net = self.net()
        self.mask = masks.magnitude(dict(net.named_parameters()), masks.ones(net), 0.8)  # 1 - 0.8 = 20% kept
        self.density = masks.density(self.mask)

    def net(self):
        net = models.build(self.mcfg, self.args.channels, self.task.num_outputs, seed=0).to(self.device)
        return net.to(memory_format=torch.channels_last) if self.rt.channels_last else net

    def project(self, masked: bool) -> float:
        net, ckpt, marks = self.net(), self.tmp / "checkpoint.pt", {}
        ckpt.unlink(missing_ok=True)  # never resume from a previous repetition

        def hook(step, _net):
            if step in (self.args.warmup, self.end):
                sync(self.device)
                marks[step] = (time.perf_counter(), time.process_time())

        job = Fit(model=net, net=net, task=self.task, loader=self.loader, optim=self.optim,
                  mask=self.mask if masked else {}, checkpoint=ckpt, hooks=[hook])
        fit(job, self.run_cfg, Progress("bench", quiet=True))
        ckpt.unlink(missing_ok=True)
        return self.rate(marks[self.args.warmup], marks[self.end])

    def rate(self, start, end) -> tuple[float, float]:
        """(images per wall second, process CPU milliseconds per image) between two marks."""
        n = self.args.batch * self.args.steps
        return n / (end[0] - start[0]), 1e3 * (end[1] - start[1]) / n

    def reference(self) -> float:
        a, dev, L = self.args, self.device, self.loader
        net = self.net()
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=self.optim.lr, momentum=self.optim.momentum,
                              weight_decay=self.optim.weight_decay)
        amp = dev.type == "cuda"
        xs, ys, p, s = L.train_x, L.train_y, self.data.pad, a.image_size
        mean, std = L.mean, L.std
        order = torch.randperm(len(ys), device=dev)
        ar = torch.arange(s, device=dev)
        bidx = torch.arange(a.batch, device=dev).view(-1, 1, 1, 1)
        cidx = torch.arange(a.channels, device=dev).view(1, -1, 1, 1)
        marks = {}
        for i in range(self.total):
            if i in (a.warmup, self.end):
                sync(dev)
                marks[i] = (time.perf_counter(), time.process_time())
            idx = order[i * a.batch:(i + 1) * a.batch]
            x, y = xs[idx], ys[idx]
            if p:
                dy = torch.randint(0, 2 * p + 1, (a.batch,), device=dev)
                dx = torch.randint(0, 2 * p + 1, (a.batch,), device=dev)
                x = F.pad(x, (p, p, p, p))[bidx, cidx, (dy.view(-1, 1) + ar).view(a.batch, 1, s, 1),
                                          (dx.view(-1, 1) + ar).view(a.batch, 1, 1, s)]
            flip = torch.rand(a.batch, device=dev) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            x = (x.float() / 255 - mean) / std
            if a.task == "rotnet":
                x = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
                y = torch.arange(4, device=dev).repeat_interleave(a.batch)
            if self.rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return self.rate(marks[a.warmup], marks[self.end])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18_cifar", choices=["resnet_small", "resnet18_cifar", "resnet50"])
    ap.add_argument("--width", type=int, default=None, help="default 16 (CIFAR nets) / 64 (resnet50)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--pad", type=int, default=2, help="pad-and-crop padding (CIFAR-10 uses 2)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per repetition")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default")
    ap.add_argument("--task", default="labels", choices=["labels", "rotnet"])
    args = ap.parse_args(argv)
    if args.width is None:
        args.width = 64 if args.model == "resnet50" else 16
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be >= 1")

    b = Bench(args)
    print(f"device {b.device} threads {torch.get_num_threads()} torch {torch.__version__} | {args.model} "
          f"width {args.width} batch {args.batch} {args.channels}x{args.image_size}px task {args.task} | "
          f"{args.warmup}+{args.steps} steps x {args.reps} reps | mask density {b.density:.3f}", flush=True)
    runs = {"reference": b.reference, "dense": lambda: b.project(False), "masked": lambda: b.project(True)}
    names = list(runs)
    ips, cpu = {n: [] for n in names}, {n: [] for n in names}
    for r in range(args.reps):
        for n in names[r % 3:] + names[:r % 3]:  # rotate the order each repetition
            rate, ms = runs[n]()
            ips[n].append(rate), cpu[n].append(ms)
            gc.collect()
        print(f"rep {r}: " + "  ".join(f"{n} {ips[n][-1]:.1f}" for n in names), flush=True)
    med = {n: statistics.median(v) for n, v in ips.items()}
    print(f"{'':10s} {'median img/s':>12s} {'min':>9s} {'max':>9s} {'cpu ms/img':>10s}")
    for n in names:
        print(f"{n:10s} {med[n]:12.1f} {min(ips[n]):9.1f} {max(ips[n]):9.1f} {statistics.median(cpu[n]):10.3f}")
    spread = max(max(v) / min(v) for v in ips.values())
    if spread > 1.25:
        print(f"warning: img/s varied {spread:.2f}x across repetitions: the machine is busy or throttling, "
              "so the ratios are noisy; rerun on a quiet machine or with more --reps")
    paired = [statistics.median(a / b for a, b in zip(ips[x], ips[y])) for x, y in PAIRS]
    print("median of per-repetition ratios (steadier on a busy machine): "
          f"project/reference {paired[0]:.3f}, masked/dense {paired[1]:.3f}")
    print(f"project/reference: {med['dense'] / med['reference']:.3f}")
    print(f"masked/dense: {med['masked'] / med['dense']:.3f}")

if __name__ == "__main__":
    main()
