"""Progress lines for people watching a terminal or a SLURM log: where, how far, how long left."""
from __future__ import annotations

import sys
import time


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
