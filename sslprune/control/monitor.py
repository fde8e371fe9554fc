"""Observers of a running stage: where its metrics go besides the terminal.

The store stays the source of truth: `progress.json` in the stage directory always holds the
latest and best logged metrics (for `sslprune-status`). Other observers (W&B) mirror it.
Only the writing rank observes, and an observer must never fail a training job.
"""
from __future__ import annotations

import errno
import sys
import time
from pathlib import Path

from . import store as files

PROGRESS = "progress.json"


class ProgressFile:
    def __init__(self, path: Path):
        self.path = path
        self.best: dict = {}

    def log(self, step: int, total: int, metrics: dict) -> None:
        for k in ("acc",):
            if k in metrics and metrics[k] > self.best.get(k, float("-inf")):
                self.best[k] = metrics[k]
        try:
            files.write_json({"step": step, "total": total, "time": time.time(), "latest": metrics,
                                   "best": self.best}, self.path)
        except OSError as e:  # a full disk must not kill training; the checkpoint write will say so
            if e.errno != errno.ENOSPC:
                print(f"[monitor] could not write {self.path}: {e}", file=sys.stderr)

    def finish(self, result: dict) -> None:
        pass

    def fail(self, error: BaseException) -> None:
        pass


class Monitor:
    """Fans out to every observer of one stage run."""

    def __init__(self, observers):
        self.observers = list(observers)

    def log(self, step: int, total: int, metrics: dict) -> None:
        for o in self.observers:
            o.log(step, total, metrics)

    def note(self, text: str) -> None:
        for o in self.observers:
            if hasattr(o, "note"):
                o.note(text)

    def finish(self, result: dict) -> None:
        for o in self.observers:
            o.finish(result)

    def fail(self, error: BaseException) -> None:
        for o in self.observers:
            o.fail(error)


def open_for(stage, is_writer: bool) -> Monitor:
    if not is_writer:
        return Monitor([])
    observers = [ProgressFile(stage.dir / PROGRESS)]
    from . import dashboard  # cheap: imports wandb only when W&B is enabled

    wandb_run = dashboard.observer(stage)
    if wandb_run is not None:
        observers.append(wandb_run)
    return Monitor(observers)
