"""The progress protocol, one module: what a running stage reports and who listens.

A stage's `Progress` prints lines for people watching a terminal or a SLURM log (where, how far,
how long left) and forwards every logged metric and note to its sinks. A sink (observer) has
`log(step, total, metrics)`, and optionally `note(text)`, `finish(result)`, `fail(error)`; it must
never raise into training. The store stays the source of truth: `progress.json` in the stage
directory (`ProgressFile`) always holds the latest and best logged metrics (for sslprune-status).
The other sinks subscribe from outside the compute plane, which never imports them: sslprune-run's
live display (sslprune.control.display) and the W&B mirror (sslprune.control.dashboard), handed to
sslprune.compute.runner.run by the app layer (sslprune.api.compute). Only the writing rank observes.
"""
from __future__ import annotations

import errno
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from . import store as files

PROGRESS = "progress.json"


def clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Prints progress lines and forwards every logged metric to its sinks (progress file, W&B).

    A sink has `log(step: int, total: int, metrics: dict)`; sinks must never raise into training."""

    def __init__(self, label: str, quiet: bool = False, stream=None, sinks=()):
        self.label, self.quiet, self.stream = label, quiet, stream or sys.stdout
        self.sinks = list(sinks)
        self.t0 = time.monotonic()
        self.first_step = 0

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(f"[{self.label}] {text}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self._print(text)
        for sink in self.sinks:
            if hasattr(sink, "note"):
                sink.note(text)

    def start(self, step: int, total: int) -> None:
        self.t0, self.first_step = time.monotonic(), step

    def update(self, step: int, total: int, **metrics) -> None:
        for sink in self.sinks:
            sink.log(step, total, dict(metrics))
        elapsed = time.monotonic() - self.t0
        done = step - self.first_step
        eta = elapsed / done * (total - step) if done else 0.0
        parts = [f"epoch {metrics.pop('epoch'):.2f}", f"step {step}/{total}"]
        parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
        parts += [f"elapsed {clock(elapsed)}", f"eta {clock(eta)}"]
        self._print(" ".join(parts))


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


def open_for(stage, is_writer: bool, mirror: Optional[Callable] = None) -> Monitor:
    """The observers of one stage run: its progress file, and `mirror(stage)` (the W&B observer, or
    None when W&B is disabled) when one is given. Only the writing rank observes."""
    if not is_writer:
        return Monitor([])
    observers = [ProgressFile(stage.dir / PROGRESS)]
    mirrored = mirror(stage) if mirror is not None else None
    if mirrored is not None:
        observers.append(mirrored)
    return Monitor(observers)
