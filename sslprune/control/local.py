"""The local way to run an experiment: every missing stage in this process or in worker processes.

Chains are independent, so locally they run in parallel worker processes when there are spare
cores (a small CPU model gains more from two single-threaded processes than from two threads in
one). Workers hand their stages to the compute plane through `compute` (sslprune.api.compute: this
plane never imports the compute plane, the app layer passes its entry point in); this module plans
and waits.

* Threads: every stage computes with `run.threads` threads, or cores // workers when it is 0, where
  workers is `run.workers` (or one per core). It depends on the config and the machine only, never
  on how many chains are left, so a re-run recomputes a missing stage bit for bit.
* Ctrl-C / SIGTERM: every worker checkpoints at its next step boundary and stops; this process
  prints what is kept and how to resume, then exits 130 (SIGINT) or 143 (SIGTERM). A second
  Ctrl-C stops at once (what was trained since the last checkpoint is lost, nothing is corrupted).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from typing import Callable, Optional

from ..core import store as files
from ..core.errors import Interrupted, Stopped
from ..core.progress import clock
from ..core.schema import Config, RunConfig
from ..core.stage import Stage
from . import workload
from .display import DirectObserver, Display, QueueObserver
from .experiment import chains, check_inputs, depth
from .index import write_chains


# ---------------------------------------------------------------- worker side

_stop: Optional[object] = None  # the worker's view of the main process's stop event
_events: Optional[object] = None  # where the worker's stages report their progress (the Display)
_parent: Optional[int] = None  # the main process's pid, to notice when it is gone


def _worker_init(event, queue) -> None:
    global _stop, _events, _parent
    _stop, _events, _parent = event, queue, os.getppid()
    # Ctrl-C reaches the whole process group: the worker must not die mid-write, it stops at the
    # next step boundary when the main process sets the event.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _orphaned() -> bool:
    """In a worker: the main process that started it is gone (its pid is no longer our parent)."""
    return _parent is not None and os.getppid() != _parent


def _run_chain(cfg: Config, chain_index: int, compute: Callable, interrupt: Optional[Callable[[], bool]] = None,
               observer=None) -> dict:
    """Run the missing stages of one chain with `compute` (stage, rt, interrupt, started, observer) ->
    result; stops (checkpointed) when `interrupt` says so."""
    # A worker also stops (checkpointed, at its next step) when the main process is gone: after a
    # `kill -9` of sslprune-run it would otherwise train the rest of its chain unseen, holding the
    # stages' locks against the re-run, for as long as the chain takes (an hour for a twin's chain).
    interrupt = interrupt or (lambda: _stop is not None and (_stop.is_set() or _orphaned()))
    if observer is None and _events is not None:
        observer = QueueObserver(_events, os.getpid())
    done, stopped = [], None
    for stage in chains(cfg)[chain_index]:
        if interrupt():
            stopped = stage.label
            break
        if stage.done():
            continue
        try:
            compute(stage, interrupt=interrupt, observer=observer)
        except Interrupted as e:
            stopped = f"{stage.label} at step {e.step} (checkpoint {stage.dir})"
            break
        done.append(stage.label)
    if _orphaned():  # everything is checkpointed; nobody is left to take the result or give more work,
        os._exit(1)  # and the dead pool's queue would keep this worker waiting forever
    return {"done": done, "stopped": stopped}


# ---------------------------------------------------------------- main side


def resources(cfg: Config, cuda: bool) -> tuple[int, int]:
    """(worker processes, threads per stage), from the config and the machine alone."""
    cores = os.cpu_count() or 1
    workers = cfg.run.workers or (1 if cuda else cores)
    threads = cfg.run.threads or max(1, cores // workers)
    return workers, threads


def verify(stages: list[Stage]) -> list[str]:
    """The sha256 of every finished stage's outputs (they are read once); a stage whose files do not
    match its result.json is set aside, so this run recomputes it. Stale temporary files of killed
    writers (older than a minute) are removed on the way. Returns one line per stage set aside."""
    lines = []
    for stage in stages:
        files.clean(stage.dir)
        if stage.state(deep=True) == "corrupt":
            lines.append(f"{stage.label}: {stage.set_aside()}")
    return lines


def run_local(cfg: Config, compute: Callable, uses_cuda: Callable[[RunConfig], bool],
              check: Optional[Callable[[Config], None]] = None) -> int:
    """Run every missing stage of the experiment here; returns how many stages ran.

    The app layer passes in the compute plane (sslprune.api): `compute(stage, rt, interrupt, started,
    observer)` runs one stage in this process or a worker (a module-level function: it pickles by
    name), `uses_cuda(cfg.run)` says whether stages compute on a GPU (it imports torch), `check(cfg)`
    refuses what only a built network can tell (a pretrained file that does not fit it, a target's
    scope), for every chain before any stage runs."""
    # The data checks first: they are torch-free, so a bad data root is answered before torch loads
    # (uses_cuda imports it: about 2 s). run.device=cuda without a GPU is refused next, before any
    # work and even on a finished store.
    check_inputs(cfg)
    cuda = uses_cuda(cfg.run)
    if check is not None:
        check(cfg)
    write_chains(cfg)
    all_chains = chains(cfg)
    damaged = verify([s for c in all_chains for s in c])
    for line in damaged:
        print(f"[sslprune] warning: {line}; it is recomputed", flush=True)
    states = {s.key(): s.state() for c in all_chains for s in c}
    done = frozenset(k for k, v in states.items() if v == "done")
    todo = [i for i, c in enumerate(all_chains) if any(s.key() not in done for s in c)]
    total = len(states)
    missing = total - len(done)
    print(f"[sslprune] experiment {cfg.experiment}: {total} stages, {total - missing} already done, "
          f"{missing} to run" + (f" ({len(damaged)} corrupt: recomputed)" if damaged else "") +
          f", store {cfg.store}", flush=True)
    if not todo:
        return 0
    workers, threads = resources(cfg, cuda)
    cfg = replace(cfg, run=replace(cfg.run, threads=threads))
    kinds: dict = {}
    for c in all_chains:
        for st in c:
            if states[st.key()] != "done":
                kinds[st.kind] = kinds.get(st.kind, 0) + 1
    display = None if cfg.run.quiet else Display(cfg.experiment, total, total - missing, kinds, workers,
                                                  every=cfg.run.progress_seconds)
    t0 = time.monotonic()
    stopped = []
    signals = _Signals(display).install()
    try:
        # Chains that start from another chain's network (pruning during transfer) wait for a later wave.
        for wave in sorted({depth(cfg, all_chains[i][0].signal) for i in todo}):
            batch = [i for i in todo if depth(cfg, all_chains[i][0].signal) == wave]
            batch = workload.longest_first(all_chains, batch, done)
            if workers <= 1:
                observer = DirectObserver(display) if display is not None else None
                for i in batch:
                    out = _run_chain(cfg, i, compute, signals.requested, observer)
                    if out["stopped"]:
                        stopped.append(out["stopped"])
                    if signals.signum:
                        break
            else:
                _pool(cfg, batch, workers, signals, stopped, display, compute)
            if signals.signum:
                raise Stopped(signals.signum, stopped)
    except (Stopped, KeyboardInterrupt) as e:
        if display is not None:
            display.close()
            display = None
        if isinstance(e, KeyboardInterrupt):  # the second Ctrl-C: a short message, not 107 lines of traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a third one while this prints changes nothing
            print(f"\n[sslprune] stopped at once by a second Ctrl-C: {_finished(all_chains, states)} stage(s) "
                  f"finished in this run are kept in {cfg.store}; the running stages lose what they trained since "
                  "their last checkpoint (nothing is corrupted); re-run the same command to resume", flush=True)
            raise Stopped(signal.SIGINT, []) from None
        _say_stopped(cfg, e, _finished(all_chains, states))
        raise
    finally:
        signals.restore()
        if display is not None:
            display.close()
    ran = _finished(all_chains, states)
    print(f"[sslprune] ran {ran} stages in {clock(time.monotonic() - t0)}", flush=True)
    return ran


def _finished(all_chains, states: dict) -> int:
    """How many stages this run finished: those not done before it and done now. (Counting the
    stages each chain ran counted a stage two chains share, the dense re-training, once per chain
    that waited for it.)"""
    todo = {s.key(): s for c in all_chains for s in c if states[s.key()] != "done"}
    return sum(1 for s in todo.values() if s.done())


def _pool(cfg, batch, workers, signals, stopped, display, compute) -> None:
    ctx = multiprocessing.get_context("spawn")
    event, queue = ctx.Event(), ctx.Queue()
    signals.event = event
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(event, queue)) as pool:
        pending = {pool.submit(_run_chain, cfg, i, compute) for i in batch}
        while pending:
            finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            _drain(queue, display)
            for f in finished:
                out = f.result()
                if out["stopped"]:
                    stopped.append(out["stopped"])
            if signals.signum:
                for f in pending:
                    f.cancel()  # chains not started yet
        _drain(queue, display)


def _drain(queue, display) -> None:
    """Hand the workers' progress events to the display (or drop them when there is none)."""
    while True:
        try:
            event = queue.get_nowait()
        except Exception:  # queue.Empty, or a queue closed by a dying worker
            break
        if display is not None:
            display.event(*event)
    if display is not None:
        display.refresh()


def _say_stopped(cfg: Config, e: Stopped, ran: int) -> None:
    lines = [f"[sslprune] {e}: {ran} stage(s) finished in this run and kept in {cfg.store}"]
    lines += [f"[sslprune]   partial, checkpointed: {s}" for s in e.kept]
    lines.append("[sslprune] re-run the same command to resume from the checkpoints")
    print("\n".join(lines), flush=True)


class _Signals:
    """SIGINT/SIGTERM in the main process: the first asks every stage to stop at its next step
    boundary (through `event` for workers, `requested` in this process); a second Ctrl-C stops at once."""

    def __init__(self, display=None):
        self.signum = 0
        self.event = None
        self.display = display
        self.previous = {}

    def install(self) -> "_Signals":
        for s in (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)

    def requested(self) -> bool:
        return bool(self.signum)

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:  # the second Ctrl-C: stop now
            for child in multiprocessing.active_children():
                child.kill()
            raise KeyboardInterrupt
        self.signum = signum
        if self.event is not None:
            self.event.set()
        text = (f"[sslprune] {signal.Signals(signum).name}: stopping at the next step boundary "
                "(checkpointing); Ctrl-C again to stop at once")
        if self.display is not None:
            self.display.say(text)
        else:
            print("\n" + text, flush=True)
