"""Learning rate as a pure function of the step: nothing stateful to replay on resume."""
from __future__ import annotations

import math

from ..core.schema import OptimConfig


def lr_at(step: int, cfg: OptimConfig, steps_per_epoch: int) -> float:
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    passed = sum(step >= m * steps_per_epoch for m in cfg.milestones)
    return cfg.lr * cfg.gamma ** passed
