"""The training loop: one plain loop, read top to bottom.

What varies between stages enters through the task (what a batch means), the mask (what stays
zero), the step at which the schedule starts (rewinding), and step-boundary hooks (saving the
rewind point). Resuming is loading the latest checkpoint: batches, augmentation and the
learning rate are pure functions of the step, so a resumed run is bit-identical on CPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import random

import numpy as np
import torch
from torch import nn

from . import checkpoint, mask as masks
from ..control.config import OptimConfig, RunConfig
from ..control.progress import Progress
from ..control.stage import Interrupted, NonFiniteLoss
from .schedule import lr_at


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
    params: Optional[Iterable[nn.Parameter]] = None  # default: all parameters
    hooks: list[Hook] = field(default_factory=list)
    net: Optional[nn.Module] = None
    # Polled at every step boundary (a cheap Python check); when it returns True the loop
    # checkpoints at once and raises Interrupted. Set by the cluster code on SLURM's signal.
    interrupt: Optional[Callable[[], bool]] = None


def optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(job: Fit, run: RunConfig, progress: Progress, is_writer: bool = True) -> dict:
    """Train to the end of the schedule (resuming from job.checkpoint if present)."""
    net = job.net or job.model
    device = next(net.parameters()).device
    spe = job.loader.steps_per_epoch
    total = job.optim.epochs * spe
    opt = optimizer(job.optim, job.params if job.params is not None else net.parameters())
    apply_mask = masks.Applier(net, job.mask)
    step = job.start_step
    if job.checkpoint.exists():
        state = checkpoint.load(job.checkpoint, device)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        job.task.load_state_dict(state.get("task", {}))
        set_rng_state(state["rng"])
        step = state["step"]
        progress.note(f"resumed from {job.checkpoint} at step {step}/{total}")
    apply_mask()  # masks hold on load too

    amp = run.amp and device.type == "cuda"
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    last_save, last_log, last_log_step = time.monotonic(), time.monotonic(), step
    progress.start(step, total)

    def save(at_step: int) -> None:
        if is_writer:
            checkpoint.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": at_step,
                             "rng": rng_state(), "mask": job.mask, "task": job.task.state_dict()}, job.checkpoint)

    def check_finite(at_step: int, weights: bool = False) -> None:
        bad = int(first_bad.item())
        where = None
        if bad >= 0:
            where = f"non-finite loss at step {bad} (epoch {bad // spe})"
        elif weights and not bool(torch.stack([torch.isfinite(p).all() for p in net.parameters()]).all()):  # one sync
            where = f"non-finite weights after step {at_step} (epoch {at_step // spe}), the loss was still finite"
        if where:
            raise NonFiniteLoss(
                f"{where} while training towards step {total}; stopped at step {at_step}; "
                f"the last good checkpoint ({job.checkpoint}) is kept")

    job.model.train()
    batches = None
    while step < total:
        if job.interrupt is not None and job.interrupt():
            check_finite(step, weights=True)
            save(step)
            raise Interrupted(step)
        for hook in job.hooks:
            hook(step, net)
        epoch, index = divmod(step, spe)
        if batches is None or index == 0:
            batches = iter(job.loader.batches(epoch, index))
        x, y = next(batches)
        x, target = job.task.prepare(x, y)
        lr = lr_at(step, job.optim, spe)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = job.model(x)
            loss = job.task.loss(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        apply_mask()
        step += 1

        loss = loss.detach()
        first_bad = torch.where(~torch.isfinite(loss) & (first_bad < 0), step - 1, first_bad)
        loss_sum += loss
        right, n = job.task.score(logits.detach().float(), target)
        correct += right
        seen += n
        if step % run.log_every == 0 or step == total:
            check_finite(step)
            n = step - last_log_step
            now = time.monotonic()
            progress.update(step, total, epoch=step / spe, loss=loss_sum.item() / max(n, 1),
                            acc=correct.item() / max(seen, 1), lr=lr, ips=seen / max(now - last_log, 1e-9))
            loss_sum.zero_(), correct.zero_()
            seen, last_log, last_log_step = 0, now, step
        due = (run.checkpoint_steps and step % run.checkpoint_steps == 0) or \
              (run.checkpoint_minutes and time.monotonic() - last_save > 60 * run.checkpoint_minutes)
        if due and step < total:
            check_finite(step, weights=True)  # never overwrite a good checkpoint with a diverged one
            save(step)
            last_save = time.monotonic()
    check_finite(step, weights=True)
    for hook in job.hooks:
        hook(step, net)
    save(step)
    return {"steps": total, "start_step": job.start_step}


@torch.no_grad()
def evaluate(model: nn.Module, task, loader, batch_size: int, amp: bool = True) -> dict:
    """The task's test metric (`accuracy` is its headline number), every test image counted once
    across ranks. Random draws a task makes (Exemplar's augmentation) come from a fixed seed, so
    evaluation is repeatable and leaves the training random state untouched."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    metric = task.metric()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for x, y in loader.eval_batches(batch_size):
            x, target = task.eval_prepare(x, y)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                outputs = model(x).float()
            metric.add(outputs, target)
    model.train(was_training)
    return metric.result()
