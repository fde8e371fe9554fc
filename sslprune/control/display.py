"""What a local run shows while it works: the experiment's stages done out of all, an estimate of
the time left, and one line per running worker (its stage, step, loss, accuracy, images/s).

On a terminal it is one live display (rich) redrawn in place; anywhere else (a SLURM log, CI, a
file) it is plain lines at a fixed cadence (`run.progress_seconds`), plus one line per warning a
stage gives. The time left comes from the stages measured in this run, per kind of stage (an IMP
level and a probe take different times), divided among the workers, so it is updated at every
finished stage and stays honest when stages differ in length.
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import Optional

from ..core.progress import clock


class Display:
    def __init__(self, experiment: str, total: int, done: int, remaining_kinds: dict, workers: int,
                 every: float = 30.0, stream=None, live: Optional[bool] = None):
        self.experiment, self.total, self.done = experiment, total, done
        self.left = dict(remaining_kinds)  # kind -> stages of that kind still to run
        self.workers, self.every = max(1, workers), every
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.t0 = time.monotonic()
        self.last_line = float("-inf")
        self.running: dict = {}  # worker -> {"label", "kind", "step", "total", "metrics", "since"}
        self.seconds: dict = defaultdict(list)  # kind -> measured stage durations
        self._live = None
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(), console=Console(file=self.stream), refresh_per_second=2,
                              transient=False)
            self._live.start()

    # ---------------------------------------------------------------- events (from workers)

    def event(self, kind: str, worker, *payload) -> None:
        if kind == "start":
            label, stage_kind = payload
            self.running[worker] = {"label": label, "kind": stage_kind, "step": None, "total": None, "metrics": {},
                                    "since": time.monotonic()}
        elif kind == "log":
            step, total, metrics = payload
            if worker in self.running:
                self.running[worker].update(step=step, total=total, metrics=metrics)
        elif kind == "note":
            (text,) = payload
            label = self.running.get(worker, {}).get("label", "sslprune")
            if "warning" in text or "resumed" in text or "waiting" in text:
                self.say(f"[{label}] {text}")
        elif kind in ("finish", "fail", "stopped"):
            run = self.running.pop(worker, None)
            if run is not None and kind == "finish":
                self.seconds[run["kind"]].append(time.monotonic() - run["since"])
                self.done += 1
                self.left[run["kind"]] = max(0, self.left.get(run["kind"], 0) - 1)
            if kind == "fail" and run is not None:
                self.say(f"[{run['label']}] failed: {payload[0]}")
        self.refresh()

    # ---------------------------------------------------------------- what is shown

    def eta(self) -> Optional[float]:
        """Seconds left: every stage still to run at the mean time measured for its kind (all kinds'
        mean for a kind not measured yet), spread over the workers; None before any stage ended."""
        measured = [s for v in self.seconds.values() for s in v]
        if not measured:
            return None
        overall = sum(measured) / len(measured)
        work = sum(n * (sum(self.seconds[k]) / len(self.seconds[k]) if self.seconds.get(k) else overall)
                   for k, n in self.left.items())
        # The stages running now are part of `left`: count only what they still have to do.
        for run in self.running.values():
            mean = sum(self.seconds[run["kind"]]) / len(self.seconds[run["kind"]]) if self.seconds.get(run["kind"]) \
                else overall
            work -= min(mean, time.monotonic() - run["since"])
        return max(0.0, work) / self.workers

    def headline(self) -> str:
        eta = self.eta()
        left = f"about {clock(eta)} left" if eta is not None else "time left: after the first stage"
        return (f"[sslprune] {self.experiment}: {self.done}/{self.total} stages done, "
                f"elapsed {clock(time.monotonic() - self.t0)}, {left}")

    @staticmethod
    def worker_line(run: dict) -> str:
        m = run["metrics"]
        where = f"step {run['step']}/{run['total']}" if run["step"] is not None else "starting"
        parts = [where] + [f"{k} {m[k]:.4g}" for k in ("loss", "acc") if k in m]
        if "ips" in m:
            parts.append(f"{m['ips']:.0f} img/s")
        return f"{run['label']}: " + "  ".join(parts)

    def _render(self):
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        table.add_row(Text(self.headline()))  # Text: "[sslprune]" is not rich markup
        for i, run in enumerate(self.running.values(), 1):
            table.add_row(Text(f"  worker {i}  {self.worker_line(run)}"))
        return table

    def refresh(self, force: bool = False) -> None:
        if self._live is not None:
            self._live.update(self._render())
            return
        now = time.monotonic()
        if force or now - self.last_line >= self.every:
            self.last_line = now
            lines = [self.headline()] + [f"[sslprune]   {self.worker_line(r)}" for r in self.running.values()]
            print("\n".join(lines), file=self.stream, flush=True)

    def say(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None
        else:
            self.refresh(force=True)


class QueueObserver:
    """A stage's progress, sent from a worker process to the main process's Display."""

    def __init__(self, queue, worker):
        self.queue, self.worker = queue, worker

    def _put(self, *event) -> None:
        try:
            self.queue.put_nowait(event)
        except Exception:  # a full or closed queue must never stop training
            pass

    def start(self, label: str, kind: str) -> None:
        self._put("start", self.worker, label, kind)

    def log(self, step: int, total: int, metrics: dict) -> None:
        self._put("log", self.worker, step, total, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    def note(self, text: str) -> None:
        self._put("note", self.worker, text)

    def finish(self, result: dict) -> None:
        self._put("finish", self.worker)

    def fail(self, error: BaseException) -> None:
        from ..core.errors import Interrupted

        if isinstance(error, Interrupted):  # stopped on request, checkpointed: not a failure
            self._put("stopped", self.worker)
        else:
            self._put("fail", self.worker, f"{type(error).__name__}: {error}")


class DirectObserver(QueueObserver):
    """The same, for stages run in the main process itself."""

    def __init__(self, display: Display, worker="main"):
        self.display, self.worker = display, worker

    def _put(self, *event) -> None:
        self.display.event(*event)
