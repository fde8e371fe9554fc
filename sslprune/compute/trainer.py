"""The training loop: one plain loop, read top to bottom.

What varies between stages enters through the task (what a batch means, and for the two-view
tasks its own trainable modules and momentum target: `modules`, `begin`, `after_step`), the mask (what stays
zero), the step at which the schedule starts (rewinding), and step-boundary hooks (saving the
rewind point). Resuming is loading the latest checkpoint: batches, augmentation, every random
number a task draws (seed.Draws) and the learning rate are pure functions of the step, so a
resumed run is bit-identical on CPU at the same thread count, whatever ran before in the process.

Under DDP every rank polls its own interrupt flag; every `run.interrupt_every` steps the ranks
agree on it with one collective (`Fit.agree`), so all of them stop at the same step boundary,
rank 0 checkpoints, and none is left waiting in a collective the others never join. The same
collective carries rank 0's clock (a checkpoint due by `run.checkpoint_minutes`), and the finiteness
checks agree too: every branch that leads to a collective or a raise is taken by all ranks or none.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from . import checkpoint, distributed, mask as masks
from . import seed as seeds
from ..core.errors import Interrupted, NonFiniteLoss
from ..core.progress import Progress
from ..core.schema import OptimConfig, RunConfig
from .schedule import lr_at
from .classification import at_least_fp32


Hook = Callable[[int, nn.Module], None]  # called with the number of updates done so far


@dataclass
class Fit:
    model: nn.Module  # possibly DDP-wrapped; `net` below is the bare module
    task: object
    loader: object
    optim: OptimConfig
    mask: masks.Mask
    checkpoint: Path
    start_step: int = 0  # the schedule starts here (k when rewound), training runs to the end
    end_step: Optional[int] = None  # stop here instead (the schedule unchanged): a pretrained level 0 stops at k
    params: Optional[Iterable[nn.Parameter]] = None  # default: all parameters
    hooks: list[Hook] = field(default_factory=list)
    net: Optional[nn.Module] = None
    # Polled at step boundaries (a cheap Python check); when it returns True the loop checkpoints
    # at once and raises Interrupted. Set by the cluster code on SLURM's signal, by sslprune-run on Ctrl-C.
    interrupt: Optional[Callable[[], bool]] = None
    # The ranks' elementwise maximum of a few integers (one collective, Runtime.agree_all; what
    # distributed.agree_stop and agree_non_finite ask through): their common
    # answer to "does any rank want to stop?" and the like; None: one process.
    agree: Optional[Callable[[list], list]] = None
    # The checkpoint to continue from, already read (sslprune.compute.checkpoint.resume_state);
    # None: read `checkpoint` (or its previous generation) if there is one.
    resume: Optional[dict] = None
    # Autocast dtype for the forward pass; None: bf16 on CUDA when run.amp, else off. Losses are
    # always computed in fp32 outside it.
    autocast: Optional[torch.dtype] = None
    threads: int = 0  # the intra-op thread count this stage computes with (recorded in checkpoints)


def optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def rng_state() -> dict:
    """torch's CPU generator, saved with each checkpoint. No training draw uses it (every draw has its
    own seeded generator), but a resumed process then starts exactly where the killed one was.

    No CUDA generator is saved: no draw uses the default ones (seed.Draws makes its numbers on the
    CPU, the loaders' augmentation draws from generators seeded per batch, seed.generator), and
    `get_rng_state_all` holds one state per *visible* GPU, so a checkpoint of an 8-GPU job could not
    be resumed where fewer are visible."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    """Checkpoints are read to the CPU, so this is a CPU ByteTensor whatever the run's device. A
    "cuda" entry (checkpoints of earlier versions: one state per GPU the job saw) is ignored."""
    torch.set_rng_state(state["torch"])


def restore(state: dict, net: nn.Module, opt: torch.optim.Optimizer, task) -> int:
    """Continue from a checkpoint read to the CPU: load_state_dict copies weights and optimizer
    state onto the parameters' device; returns the step it was taken at."""
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    task.load_state_dict(state.get("task", {}))
    set_rng_state(state["rng"])
    return int(state["step"])


def fit(job: Fit, run: RunConfig, progress: Progress, is_writer: bool = True) -> dict:
    """Train to the end of the schedule (resuming from job.checkpoint if present)."""
    net = job.net or job.model
    device = next(net.parameters()).device
    spe = job.loader.steps_per_epoch
    total = job.optim.epochs * spe
    # A task's own trainable modules (a projection tail, BYOL's predictor) train beside the network.
    extra = [p for m in getattr(job.task, "modules", list)() for p in m.parameters()]
    opt = optimizer(job.optim, [*(job.params if job.params is not None else net.parameters()), *extra])
    after_step = getattr(job.task, "after_step", None)
    apply_mask = masks.Applier(net, job.mask)
    step = job.start_step
    state = job.resume if job.resume is not None else checkpoint.resume_state(job.checkpoint, progress.note)
    if state is not None:
        step = restore(state, net, opt, job.task)
        # The file it came from: checkpoint.prev.pt when the latest was damaged.
        progress.note(f"resumed from {state.get(checkpoint.FROM, job.checkpoint)} at step {step}/{total}")
    apply_mask()  # masks hold on load too

    rank, world = getattr(job.loader, "rank", 0), getattr(job.loader, "world", 1)
    local_batch = job.optim.batch_size // world
    channels_last = getattr(job.loader, "channels_last", False)
    amp = job.autocast or (torch.bfloat16 if run.amp and device.type == "cuda" else None)
    every = 1 if job.agree is None else max(1, run.interrupt_every)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    last_save, last_log, last_log_step = time.monotonic(), time.monotonic(), step
    progress.start(step, total)

    saved = [None]  # the step the latest checkpoint holds: an interrupt right after one does not write it again

    def save(at_step: int) -> None:
        if is_writer and saved[0] != at_step:
            saved[0] = at_step
            checkpoint.save_training({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": at_step,
                                      "rng": rng_state(), "mask": job.mask, "task": job.task.state_dict(),
                                      "threads": job.threads or torch.get_num_threads()}, job.checkpoint)

    def check_finite(at_step: int, weights: bool = False) -> None:
        bad = int(first_bad.item())
        bad_weights = weights and bad < 0 and \
            not bool(torch.stack([torch.isfinite(p).all() for p in net.parameters()]).all())  # one sync
        bad, bad_weights = distributed.agree_non_finite(job.agree, bad, bad_weights, total)  # all ranks raise, or none
        where = None
        if bad >= 0:
            where = f"non-finite loss at step {bad} (epoch {bad // spe})"
        elif bad_weights:
            where = f"non-finite weights after step {at_step} (epoch {at_step // spe}), the loss was still finite"
        if where:
            kept = next((p for p in (job.checkpoint, checkpoint.previous(job.checkpoint)) if p.exists()), None)
            raise NonFiniteLoss(
                f"{where} while training towards step {total}; stopped at step {at_step}; " +
                (f"the last good checkpoint ({kept}) is kept" if kept is not None else
                 "no checkpoint had been saved yet, so a re-run starts this stage from its beginning"))

    def clock_due() -> bool:
        return bool(run.checkpoint_minutes) and time.monotonic() - last_save > 60 * run.checkpoint_minutes

    job.model.train()
    begin = getattr(job.task, "begin", None)
    if begin is not None:  # after the state was loaded and the mask applied: a momentum task's target
        begin(net, job.mask, step, total)
    batches = None
    end = total if job.end_step is None else job.end_step
    first_step_at = time.time() if step >= end else None  # nothing left to train: set-up is all there was
    time_due = False  # under DDP: rank 0's clock, as of the last agreement
    while step < end:
        if step % every == 0:
            wanted = bool(job.interrupt is not None and job.interrupt())
            if job.agree is not None:  # rank 0's clock decides for all: the ranks' clocks differ
                wanted, time_due = distributed.agree_stop(job.agree, wanted, rank == 0 and clock_due())
            if wanted:
                check_finite(step, weights=True)
                save(step)
                raise Interrupted(step)
        for hook in job.hooks:
            hook(step, net)
        epoch, index = divmod(step, spe)
        if batches is None or index == 0:
            batches = iter(job.loader.batches(epoch, index))
        x, y = next(batches)
        if first_step_at is None:
            first_step_at = time.time()
        draws = seeds.Draws.for_batch(seeds.derive(job.loader.seed, "task", step), rank, local_batch, device)
        x, target = job.task.prepare(x, y, draws)
        if channels_last and x.dim() == 4:  # a task's rotations and concatenations return NCHW
            x = x.contiguous(memory_format=torch.channels_last)
        lr = lr_at(step, job.optim, spe)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            logits = job.model(x)
        logits = at_least_fp32(logits)
        loss = job.task.loss(logits, target)  # fp32, autocast off
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(extra)  # outside DDP: averaged here as DDP averages the network's
        opt.step()
        apply_mask()
        step += 1
        if after_step is not None:
            after_step(net, job.mask, step)

        loss = loss.detach()
        first_bad = torch.where(~torch.isfinite(loss) & (first_bad < 0), step - 1, first_bad)
        loss_sum += loss
        right, n = job.task.score(logits.detach(), target)
        correct += right
        seen = seen + n  # an int, or a tensor (no host sync until the log line)
        if step % run.log_every == 0 or step == end:
            check_finite(step)
            n = step - last_log_step
            now = time.monotonic()
            count = float(seen)
            progress.update(step, total, epoch=step / spe, loss=loss_sum.item() / max(n, 1),
                            acc=correct.item() / max(count, 1), lr=lr, ips=count / max(now - last_log, 1e-9))
            loss_sum.zero_(), correct.zero_()
            seen, last_log, last_log_step = 0, now, step
        due = (run.checkpoint_steps and step % run.checkpoint_steps == 0) or \
              (time_due if job.agree is not None else clock_due())
        if due and step < end:
            check_finite(step, weights=True)  # never overwrite a good checkpoint with a diverged one
            save(step)
            last_save, time_due = time.monotonic(), False
    check_finite(step, weights=True)
    for hook in job.hooks:
        hook(step, net)
    save(step)
    out = {"steps": total, "start_step": job.start_step, "first_step_at": first_step_at}
    if job.end_step is not None:
        out["end_step"] = end  # stopped early (the schedule's length stays `steps`)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, task, loader, batch_size: int, amp: bool = True) -> dict:
    """The task's test metric (`accuracy` is its headline number), every test image counted once
    across ranks. Random draws a task makes (Exemplar's views) are a function of each test image's
    position in the test set (the loaders split it by rank with stride `world`), so evaluation is
    repeatable, the same for any rank count and batch size, and draws nothing from the global RNG."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    metric = task.metric()
    rank, world = getattr(loader, "rank", 0), getattr(loader, "world", 1)
    channels_last = getattr(loader, "channels_last", False)
    seed, done = seeds.derive(loader.seed, "eval"), 0
    for x, y in loader.eval_batches(batch_size):
        positions = distributed.test_positions(rank, world, done, len(y))
        done += len(y)
        x, target = task.eval_prepare(x, y, seeds.Draws(seed, positions, device))
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            outputs = model(x)
        metric.add(at_least_fp32(outputs), target)
    model.train(was_training)
    return metric.result()
