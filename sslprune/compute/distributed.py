"""Every collective the compute plane runs, and how a global batch is shared out among ranks.

Setting up the process group is `runtime.from_environment`'s; what the ranks then say to each
other is here, so a reader finds in one module every point where a rank can wait for the others.
Each function is a no-op for one process. The order of every sum is part of the recorded results
(a float sum is not associative): a total is summed per rank first, then over ranks, rank by rank
as the backend does, and gathered rows are put back in the order one process would hold them.

Rank slicing: a training batch is a function of (seed, epoch, index) for the *global* batch, and
rank r takes the r-th contiguous block of it (`share`), so the global batch does not depend on the
number of ranks. Evaluation gives rank r the test images r, r + world, r + 2 world, ... (`test_share`)
with no padding, so every image is counted once.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


def active() -> bool:
    """True when this process is one of several ranks of an initialised process group."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def collective_device() -> torch.device:
    """Where a collective's tensors must live: NCCL takes CUDA tensors only, gloo CPU ones."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------- rank slicing of the global batch


def check_divisible(batch_size: int, world: int) -> None:
    """Every rank holds an equal share of the global batch (GlobalBatchNorm derives its count from it)."""
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by {world} ranks")


def share(index: int, batch_size: int, rank: int, world: int) -> slice:
    """This rank's contiguous block of global batch `index`, as positions in the epoch's order."""
    per_rank = batch_size // world
    lo = index * batch_size + rank * per_rank
    return slice(lo, lo + per_rank)


def test_share(rank: int, world: int) -> slice:
    """This rank's test images: every world-th one from its rank on."""
    return slice(rank, None, world)


def test_positions(rank: int, world: int, start: int, count: int) -> torch.Tensor:
    """The places in the test set of this rank's test images start .. start + count - 1."""
    return rank + world * (start + torch.arange(count))


# ---------------------------------------------------------------- decisions (CPU integers, the control group)


def max_over_ranks(values: list[int], world: int, group=None) -> list[int]:
    """The elementwise maximum over ranks of a few CPU integers (one all-reduce): what every rank
    then acts on, so no rank takes a branch alone and waits in a collective the others skip."""
    if world <= 1:
        return [int(v) for v in values]
    flags = torch.tensor([int(v) for v in values], dtype=torch.long)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=group)
    return flags.tolist()


def from_rank0(value: int, world: int, group=None) -> int:
    """Rank 0's `value` on every rank (one broadcast of one CPU integer)."""
    if world <= 1:
        return int(value)
    flag = torch.tensor([int(value)], dtype=torch.long)
    torch.distributed.broadcast(flag, src=0, group=group)
    return int(flag.item())


Agree = Callable[[list], list]  # max_over_ranks bound to a runtime's ranks (Runtime.agree_all)


def agree_stop(agree: Optional[Agree], wanted: bool, clock_due: bool) -> tuple[bool, bool]:
    """(does any rank want to stop, is a timed checkpoint due) on every rank. `clock_due` counts
    from rank 0 alone (pass False elsewhere): the ranks' clocks differ. None: one process."""
    if agree is None:
        return bool(wanted), bool(clock_due)
    wanted, due = (bool(v) for v in agree([int(wanted), int(clock_due)]))
    return wanted, due


def agree_non_finite(agree: Optional[Agree], bad: int, bad_weights: bool, total: int) -> tuple[int, int]:
    """(the earliest step at which any rank saw a non-finite loss, -1 for none; whether any rank's
    weights are non-finite). A loss is one rank's own: all ranks raise when any saw one, else the
    others would wait in the next collective. The earliest step is sent as the largest total - step."""
    if agree is None:
        return bad, bad_weights
    earliest, bad_weights = agree([total + 1 - bad if bad >= 0 else 0, int(bad_weights)])
    return (total + 1 - earliest if earliest else -1), bad_weights


# ---------------------------------------------------------------- sums


def sum_over_ranks(*values) -> list[float]:
    """Sums of per-rank running totals over all ranks. A total that is still None (a rank whose
    share of a tiny test set was empty) counts as 0, and that rank still joins the collective."""
    device = next((v.device for v in values if v is not None), None) or collective_device()
    stats = torch.stack([torch.zeros((), dtype=torch.float64, device=device) if v is None else v.double()
                         for v in values])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats)
    return stats.tolist()


def global_count(count: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the sum of `count` over ranks, the number of ranks), without a host sync; a loss divides by
    the global count and multiplies by the rank count so DDP's gradient average is the global mean."""
    if not active():
        return count, 1
    count = count.detach().clone()
    torch.distributed.all_reduce(count)
    return count, torch.distributed.get_world_size()


def average_gradients(params: list) -> None:
    """The mean over ranks of the gradients of parameters DDP does not hold (a task's own modules),
    summed rank by rank then divided, as DDP averages the network's."""
    if not active():
        return
    world = torch.distributed.get_world_size()
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        torch.distributed.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


def differentiable_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """The sum over the ranks of `group` of x, with gradients (GlobalBatchNorm's statistics)."""
    return _AllReduceSum.apply(x, group)


# ---------------------------------------------------------------- gathers


class _GatherRows(torch.autograd.Function):
    """all_gather of equal-sized row blocks, differentiable: the gradient of a gathered row goes back
    to the rank that computed it (summed over ranks, as every rank's loss may use it)."""

    @staticmethod
    def forward(ctx, x):
        dist = torch.distributed
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), len(x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the rows of every rank's equal-sized block, rank after rank; where this rank's rows start)."""
    if not active():
        return x, 0
    return _GatherRows.apply(x), torch.distributed.get_rank() * len(x)


def gather_batch(*tensors: torch.Tensor) -> tuple:
    """Each tensor's rows of every rank's equal-sized share of the global batch, rank after rank
    (no gradient): the global batch, as one process holds it."""
    if not active():
        return tensors
    world = torch.distributed.get_world_size()
    out = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(world)]
        torch.distributed.all_gather(parts, t.contiguous())
        out.append(torch.cat(parts))
    return tuple(out)


def gather_test_rows(t: torch.Tensor) -> torch.Tensor:
    """The test rows of every rank in the test set's own order (`test_share`), so ties are broken
    as in one process; ranks hold different numbers of rows and all_gather needs equal shapes:
    pad, then cut."""
    if not active():
        return t
    dist = torch.distributed
    n = torch.tensor([len(t)], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    top = int(max(s.item() for s in sizes))
    padded = torch.zeros(top, *t.shape[1:], dtype=t.dtype, device=t.device)
    padded[:len(t)] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    world = len(sizes)
    positions = torch.cat([test_positions(r, world, 0, int(s.item())) for r, s in enumerate(sizes)])
    rows = torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])
    return rows[torch.argsort(positions).to(rows.device)]
