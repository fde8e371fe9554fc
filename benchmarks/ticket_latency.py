"""Inference time of pruned tickets, measured: dense PyTorch against a sparse kernel PyTorch has.

For every IMP level of one chain of a finished store (model.pt and mask.pt of each level), or for
global-magnitude masks at the demo's levels on a freshly built network (--synthetic), it times one
forward pass (eval mode, no autograd) at batch 1 and batch 64 of:
  dense    the plain network with its pruned weights zero (the control: dense kernels do the same
           work whatever the mask, so its time must stay flat across levels);
  sparse   the same network with every masked conv and linear layer computed from CSR weights
           with torch.sparse.mm: a linear layer directly, a 1x1 convolution as a matrix product
           over the pixels, a k x k convolution as unfold (im2col) then the sparse product.
           Batch norm, pooling, ReLU and the (never pruned) head are the dense modules.
and, so that the formulation's own overhead is visible apart from sparsity,
  unfold   the sparse path's im2col formulation with the dense weight matrix (torch.mm).
Every repetition runs the three in a rotated order; each time is the minimum over the repetitions
of the time per forward pass of `--calls` passes (the minimum is the least disturbed by other
processes on a shared machine). With one thread (the default) the clock is the process CPU time,
which does not count the time other processes hold the core; with more, wall time. The other
clock is printed in brackets. Ratios sparse/dense and unfold/dense compare the same clock. The sparse
path's outputs are checked against the dense network's (max abs difference printed).

The last lines say, per batch size, from which level (fraction of weights remaining) on the sparse
path is faster than dense, or that it never is.

    python benchmarks/ticket_latency.py --store runs --experiment demo --signal rotnet --seed 0
    python benchmarks/ticket_latency.py --synthetic --model resnet18_cifar --width 64 --image-size 32
    python benchmarks/ticket_latency.py --synthetic --model resnet50 --width 64 --image-size 224 --device cuda
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sslprune.core.schema import ModelConfig  # noqa: E402
from sslprune.compute import mask as masks, model as models  # noqa: E402


class SparseConv2d(nn.Module):
    """A convolution computed as CSR weights (out x in*k*k) times the unfolded input."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("only ungrouped, undilated convolutions")
        self.weight = conv.weight.detach().flatten(1).to_sparse_csr()
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.k, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.out = conv.out_channels

    def columns(self, x):
        n, c, h, w = x.shape
        ho = (h + 2 * self.padding[0] - self.k[0]) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.k[1]) // self.stride[1] + 1
        if self.k == (1, 1) and self.padding == (0, 0):
            # 1x1: no im2col, the channels of every (strided) pixel are a column
            x = x[:, :, ::self.stride[0], ::self.stride[1]]
            cols = x.permute(1, 0, 2, 3).reshape(c, n * ho * wo)
        else:
            cols = F.unfold(x, self.k, padding=self.padding, stride=self.stride)  # n x (c*k*k) x L
            cols = cols.permute(1, 0, 2).reshape(cols.shape[1], n * ho * wo)
        return cols, n, ho, wo

    def product(self, cols):
        return torch.sparse.mm(self.weight, cols)

    def forward(self, x):
        cols, n, ho, wo = self.columns(x)
        y = self.product(cols).view(self.out, n, ho, wo).permute(1, 0, 2, 3)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


class UnfoldConv2d(SparseConv2d):
    """The same formulation with the dense weight matrix: what im2col costs by itself."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv)
        self.weight = conv.weight.detach().flatten(1).contiguous()

    def product(self, cols):
        return torch.mm(self.weight, cols)


class SparseLinear(nn.Module):
    def __init__(self, linear: nn.Linear, sparse: bool = True):
        super().__init__()
        w = linear.weight.detach()
        self.weight = w.to_sparse_csr() if sparse else w.contiguous()
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.sparse = sparse

    def forward(self, x):
        y = (torch.sparse.mm(self.weight, x.t()) if self.sparse else torch.mm(self.weight, x.t())).t()
        return y if self.bias is None else y + self.bias


def converted(net: nn.Module, mask: dict, sparse: bool) -> nn.Module:
    """A copy of `net` whose masked conv and linear layers use SparseConv2d/SparseLinear
    (or, `sparse=False`, the dense im2col formulation)."""
    import copy

    net = copy.deepcopy(net)
    names = {n[:-len(".weight")] for n in mask}
    for name, module in list(net.named_modules()):
        if name not in names:
            continue
        parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
        if isinstance(module, nn.Conv2d):
            new = SparseConv2d(module) if sparse else UnfoldConv2d(module)
        else:
            new = SparseLinear(module, sparse)
        setattr(parent, name.rpartition(".")[2], new)
    return net


def tickets_from_store(args):
    """(level, network, mask) of every finished IMP level of one chain."""
    from sslprune import api
    from sslprune.core import catalog
    from sslprune.core.stage import ImpLevel
    from sslprune.core.sweep import signal_data
    from sslprune.compute import checkpoint

    cfg = api.config(args.experiment, *args.overrides, store=args.store)
    out = []
    for level in range(cfg.prune.levels + 1):
        stage = ImpLevel(cfg, args.signal, args.seed, level)
        if not stage.done():
            continue
        weights = checkpoint.load(stage.dir / "model.pt")
        mask = checkpoint.load(stage.dir / "mask.pt")
        channels = catalog.CHANNELS[signal_data(cfg, args.signal).name]
        net = models.build(cfg.model, channels, weights["head.weight"].shape[0], 0)
        net.load_state_dict(weights)
        out.append((level, net, mask))
    if not out:
        raise SystemExit(f"no finished IMP level of {args.signal} seed {args.seed} in {args.store}")
    from sslprune.compute import dataset

    size = dataset.input_size(dataset.load(signal_data(cfg, args.signal)))
    return out, size, f"{args.experiment}: {cfg.model.name} width {cfg.model.width}, signal {args.signal}, " \
                      f"seed {args.seed} ({args.store})"


def tickets_synthetic(args):
    """Global magnitude masks at 0.8^L (the demo's levels) on one freshly built network: the
    pruning function IMP uses, applied to the initial weights (no training)."""
    net = models.build(ModelConfig(name=args.model, width=args.width), args.channels, 10, 0)
    mask = masks.ones(net)
    out = []
    for level in range(args.levels + 1):
        pruned = models.build(ModelConfig(name=args.model, width=args.width), args.channels, 10, 0)
        with torch.no_grad():
            for n, p in pruned.named_parameters():
                if n in mask:
                    p.mul_(mask[n])
        out.append((level, pruned, {k: v.clone() for k, v in mask.items()}))
        mask = masks.magnitude(dict(pruned.named_parameters()), mask, 0.2)
    size = (args.channels, args.image_size, args.image_size)
    return out, size, f"synthetic: {args.model} width {args.width}, global magnitude masks on its initial weights"


def best_times(fns: dict, x, calls: int, reps: int) -> dict:
    """{name: {"cpu": least process seconds per call, "wall": least wall seconds per call}} over `reps`
    repetitions of `calls` calls, the functions in a rotated order every repetition."""
    best = {k: {"cpu": math.inf, "wall": math.inf} for k in fns}
    order = list(fns)
    with torch.inference_mode():
        for f in fns.values():  # warm-up: allocator, kernels chosen
            f(x)
        for r in range(reps):
            for name in order[r % len(order):] + order[:r % len(order)]:
                f = fns[name]
                sync(x)
                w0, p0 = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    f(x)
                sync(x)
                wall, cpu = (time.perf_counter() - w0) / calls, (time.process_time() - p0) / calls
                best[name] = {"cpu": min(cpu, best[name]["cpu"]), "wall": min(wall, best[name]["wall"])}
    return best


def sync(x) -> None:
    """Wait for queued GPU work, so a timed interval holds its kernels (no-op on the CPU)."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="runs")
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--signal", default="rotnet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--levels", type=int, default=14)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--calls", type=int, default=5, help="forward passes per timed repetition")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (CUDA: wall time, synchronised)")
    ap.add_argument("--every", type=int, default=1, help="time every n-th level (and the last)")
    ap.add_argument("overrides", nargs="*", help="the experiment's overrides (model.width=4 ...)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    tickets, size, what = tickets_synthetic(args) if args.synthetic else tickets_from_store(args)
    tickets = [t for i, t in enumerate(tickets) if i % args.every == 0 or i == len(tickets) - 1]
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{what}; input {tuple(size)}; torch {torch.__version__}, {args.device}, {args.threads} thread(s), "
          f"best of {args.reps} x {args.calls} calls")
    device = torch.device(args.device)
    clock = "cpu" if args.threads == 1 and device.type == "cpu" else "wall"
    print(f"times: the least {'process CPU' if clock == 'cpu' else 'wall'} time per forward pass over the repetitions "
          f"({'one thread: CPU time is the work done, and what other processes take is not counted' if clock == 'cpu' else 'several threads: wall time'}); "
          "the other clock in brackets")
    print("level  remaining  batch   dense ms  sparse ms  unfold ms  sparse/dense  unfold/dense  "
          "(other clock: dense / sparse ms)  max|diff|")
    other = "wall" if clock == "cpu" else "cpu"
    rows = []
    g = torch.Generator().manual_seed(0)
    for (level, net, mask), batch in itertools.product(tickets, batches):
        net = net.eval().to(device)
        sparse, unfold = converted(net, mask, True).eval(), converted(net, mask, False).eval()
        x = torch.randn(batch, *size, generator=g).to(device)
        with torch.inference_mode():
            diff = float((sparse(x) - net(x)).abs().max())
        t = best_times({"dense": net, "sparse": sparse, "unfold": unfold}, x, args.calls, args.reps)
        rem = masks.density(mask)
        r = {"level": level, "remaining": rem, "batch": batch, **{k: v[clock] for k, v in t.items()}}
        rows.append(r)
        print(f"{level:5d}  {100 * rem:8.2f}%  {batch:5d}  {1e3 * r['dense']:9.3f}  {1e3 * r['sparse']:9.3f}  "
              f"{1e3 * r['unfold']:9.3f}  {r['sparse'] / r['dense']:12.2f}  {r['unfold'] / r['dense']:12.2f}  "
              f"({1e3 * t['dense'][other]:.3f} / {1e3 * t['sparse'][other]:.3f})  {diff:.1e}", flush=True)
    for batch in batches:
        mine = [r for r in rows if r["batch"] == batch]
        d = [r["dense"] for r in mine]
        print(f"batch {batch}: dense control {1e3 * min(d):.3f}-{1e3 * max(d):.3f} ms across levels "
              f"(max/min {max(d) / min(d):.2f})")
        faster = [r for r in mine if r["sparse"] < r["dense"]]
        # the first level from which every sparser level is faster too
        tail = next((i for i in range(len(mine)) if all(s["sparse"] < s["dense"] for s in mine[i:])), None)
        if not faster:
            b = min(mine, key=lambda r: r["sparse"] / r["dense"])
            print(f"batch {batch}: sparse never overtakes dense (best sparse/dense {b['sparse'] / b['dense']:.2f} "
                  f"at level {b['level']}, {100 * b['remaining']:.2f}% remaining)")
        elif tail is None:
            print(f"batch {batch}: sparse faster at levels {[r['level'] for r in faster]} only, not from one level on")
        else:
            r = mine[tail]
            print(f"batch {batch}: sparse overtakes dense at level {r['level']} ({100 * r['remaining']:.2f}% "
                  f"of the weights remaining, sparsity {100 * (1 - r['remaining']):.2f}%) and stays faster")

if __name__ == "__main__":
    main()
