"""The callable a submitted job runs: one stage, preemption-safe, resumable whatever restarts it.

* SLURM sends USR2 `launcher.signal_delay_s` before the time limit, and on preemption when the
  cluster has `preempt_send_user_signal`. The handler only sets a flag; the training loop polls it
  at step boundaries (under DDP every rank polls its own flag and the ranks agree every
  `run.interrupt_every` steps with one collective, so all of them stop at the same step), rank 0
  saves checkpoint.pt at once and every rank raises `Interrupted`; then the job
  goes through submitit's checkpoint protocol (`checkpoint()` returns a fresh submission of this
  same callable, submitit requeues the job, the time-limit requeues are bounded by
  `launcher.max_num_timeout`). Submitit's own handler would requeue from inside the signal
  handler, before anything is saved, so it is called only once the checkpoint is on disk.
* SIGTERM also checkpoints at the next step boundary. Then, unless USR2 follows (submitit's
  preemption), the job asks SLURM for its own state: still RUNNING (`scancel --signal=TERM`, the
  GraceTime before a preemption's kill) it requeues itself as on USR2; cancelled, timed out or
  requeued by `scontrol requeue`, SLURM ends it and it waits for the kill.
* Once every stage of the job is done, USR2 and SIGTERM are ignored: a signal that lands while the
  process shuts down (Python restores default handlers then, and USR2's default is to die) must
  not turn a finished job into a failed one whose dependants SLURM cancels.
* A crash requeues the job up to `launcher.max_retries` times (counted per job id in
  `<stage>/retries.json`); every start resumes from the stage's checkpoint in the store, so an
  external `scontrol requeue` or a re-submission after `scancel` resumes too.
* `launcher.max_requeues` caps the restarts of one job, whatever their reason.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

from pathlib import Path

from ..core import store as files
from ..core.errors import Interrupted
from ..core.schema import LauncherConfig, from_dict, to_dict
from ..core.stage import Stage, from_spec, spec as stage_spec

RETRIES = "retries.json"
TERM_SETTLE_S = 3  # after a SIGTERM, how long a following USR2 (submitit's preemption) is awaited


def _say(text: str) -> None:
    print(f"[sslprune job] {text}", flush=True)


class Signals:
    """USR2 and SIGTERM set flags; the training loop reads them at step boundaries."""

    def __init__(self):
        self.usr2 = False
        self.term = False
        self.submitit_handler = None

    def install(self) -> "Signals":
        usr = preemption_signal()
        self.submitit_handler = signal.getsignal(usr)  # submitit's checkpoint-and-requeue (set before we run)
        signal.signal(usr, self._on_usr)
        signal.signal(signal.SIGTERM, self._on_term)
        return self

    def _on_usr(self, signum, frame) -> None:
        self.usr2 = True

    def _on_term(self, signum, frame) -> None:
        self.term = True

    def poll(self) -> bool:
        return self.usr2 or self.term

    def ignore(self) -> None:
        """The job's stages are done: nothing is left to checkpoint. SIG_IGN (not a Python handler,
        which interpreter shutdown resets to the default) holds until the process is gone, and
        replaces submitit's handler too, so neither a late requeue nor a kill by signal can follow."""
        for signum in (preemption_signal(), signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def preemption_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send before the time limit and on preemption: its public
    `JobEnvironment.USR_SIG` (USR2 unless $SUBMITIT_PREEMPT_SIGNAL names another), the name
    submitit's sbatch line `--signal=<USR_SIG>@<delay>` uses."""
    import submitit

    name = submitit.JobEnvironment.USR_SIG
    try:
        return signal.Signals[f"SIG{name}"]
    except KeyError:
        raise RuntimeError(f"SUBMITIT_PREEMPT_SIGNAL={name!r} names no signal (e.g. USR2)") from None


def restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def requeue_self(job_id: str) -> None:
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)


def process_start() -> float:
    """When this process started (wall clock), so start-up costs (Python, imports, CUDA, data) count."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, in clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class StageJob:
    """Run one stage, or a pack of stages one after the other, inside a submitit job (SLURM or local).

    A pack (`launcher.pack`) holds stages that are ready at the same time (the re-training starts and
    evaluations of one IMP level of one chain): they run in this one process, so Python, imports,
    CUDA and the data are paid once. Each keeps its own checkpoint, result, lock and W&B run; a
    preempted pack requeues and resumes with the first stage that is not done.

    What is pickled for the job is plain data: each stage's `spec` and either the path of the
    experiment's config as JSON (written once per submission, `config_file`) or that JSON itself,
    so a thousand jobs cost a thousand small pickles, not a thousand copies of the config; and
    `compute`, the function that runs a stage (sslprune.api.compute, from the app layer: this plane
    never imports the compute plane), pickled by its name."""

    def __init__(self, stage, compute: Callable, launcher: Optional[LauncherConfig] = None,
                 config_file: Optional[Path] = None):
        stages = list(stage) if isinstance(stage, (list, tuple)) else [stage]
        self._stages = stages
        self.specs = [stage_spec(s) for s in stages]
        self.config_file = str(config_file) if config_file else None
        self.config = None if config_file else to_dict(stages[0].cfg)
        self.launcher = launcher or stages[0].cfg.launcher
        self.compute = compute

    def __getstate__(self) -> dict:
        return {"specs": self.specs, "config_file": self.config_file, "config": self.config, "launcher": self.launcher,
                "compute": self.compute}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._stages = None

    @property
    def stages(self) -> list[Stage]:
        if self._stages is None:
            data = self.config if self.config is not None else files.read_json(self.config_file)
            cfg = from_dict(data)
            self._stages = [from_spec(cfg, spec) for spec in self.specs]
        return self._stages

    @property
    def stage(self) -> Stage:
        """The stage this job works on now: the first one that is not done."""
        return next((s for s in self.stages if not s.done()), self.stages[-1])

    def __repr__(self) -> str:
        return f"StageJob({', '.join(s.label for s in self.stages)})"

    def checkpoint(self, *args, **kwargs):
        """submitit's protocol: what to run after a requeue. The state lives in the store."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

    def __call__(self):
        import submitit

        env = submitit.JobEnvironment()
        started = process_start()
        _say(f"job {env.job_id} rank {env.global_rank}/{env.num_tasks} restart {restarts()}: "
             f"{len(self.stages)} stage(s); code {os.path.dirname(os.path.abspath(__file__))}")
        sig = Signals().install()
        out = []
        for stage in self.stages:
            _say(f"{stage.label} -> {stage.dir}")
            if env.num_tasks == 1 and stage.done():  # several ranks: rank 0 decides for all (runner.run)
                _say("already done")
                out.append({"stage": stage.label, "dir": str(stage.dir), **stage.result()})
                continue
            try:
                # Ranks and rendezvous come from the SLURM environment (sslprune.compute.runtime).
                result = self.compute(stage, "environment", interrupt=sig.poll, started=started)
            except Interrupted as e:
                self._interrupted(env, sig, e)
                raise  # not reached: _interrupted requeues and exits, or raises
            except Exception as e:
                if env.global_rank == 0:
                    self._maybe_retry(env, e, stage)
                raise
            if result.get("startup_s") is not None:
                _say(f"{stage.label}: first training step {result['startup_s']:.1f} s after the "
                     f"{'job started' if not out else 'previous stage ended'} (Python, imports, device, data)")
            out.append({"stage": stage.label, "dir": str(stage.dir), "accuracy": result["accuracy"]})
            started = time.time()  # the next stage of a pack pays only its own set-up
        sig.ignore()
        return out[0] if len(out) == 1 else out

    # --- after the loop saved its checkpoint
    def _interrupted(self, env, sig: Signals, e: Interrupted) -> None:
        why = 'USR2 (preemption or time limit)' if sig.usr2 else 'SIGTERM' if sig.term else 'another rank'
        # Only rank 0 writes the checkpoint: the other ranks must not claim they saved one.
        _say(f"rank {env.global_rank}: {e}: {why}" if env.global_rank == 0 else
             f"rank {env.global_rank}: interrupted at step {e.step} (rank 0 writes the checkpoint): {why}")
        if env.global_rank != 0:
            # Every rank stopped at this same step (they agree on it); rank 0 wrote the checkpoint and
            # requeues the job, and SLURM then ends this task. Never linger in a collective.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                time.sleep(0.5)
            raise RuntimeError(f"rank {env.global_rank} stopped at step {e.step}; the job was not requeued")
        if not sig.usr2:
            self._after_term(env, sig)
        if restarts() >= self.launcher.max_requeues:
            raise RuntimeError(f"not requeued: the job already restarted {restarts()} times "
                               f"(launcher.max_requeues={self.launcher.max_requeues}); checkpoint saved")
        handler = sig.submitit_handler
        if callable(handler):  # submitit: checkpoint() -> dump the submission -> scontrol requeue -> exit
            # Through the signal itself, as SLURM would have delivered it had we not held it back:
            # Python runs the handler before raise_signal returns, so its exit or error surfaces here.
            usr = preemption_signal()
            signal.signal(usr, handler)
            signal.raise_signal(usr)
        requeue_self(env.job_id)  # outside submitit's SLURM environment (should not happen)
        sys.exit(-1)

    @staticmethod
    def _after_term(env, sig: Signals) -> None:
        """SIGTERM alone. Give submitit's USR2 a moment to follow (preemption), then ask SLURM: a
        job still RUNNING was sent SIGTERM without an end (`scancel --signal=TERM`, a preemption's
        GraceTime) and requeues itself; any other state (CANCELLED, TIMEOUT, requeued by `scontrol
        requeue`: SLURM ends or restarts it) waits for the kill, and fails if none comes."""
        from . import slurm

        deadline = time.monotonic() + TERM_SETTLE_S
        while not sig.usr2 and time.monotonic() < deadline:
            time.sleep(0.2)
        if sig.usr2:
            return
        state = slurm.state(env.job_id)
        if state == "RUNNING":
            _say("SIGTERM and the job is still RUNNING: requeueing it; it resumes from the checkpoint")
            return
        _say(f"SIGTERM and the job is {state or 'unknown to squeue'}: waiting for SLURM to end it")
        deadline = time.monotonic() + 120
        while not sig.usr2 and time.monotonic() < deadline:
            time.sleep(0.2)
        if not sig.usr2:
            raise RuntimeError(f"terminated (SIGTERM, job {state or 'unknown'}) and not requeued; checkpoint saved")

    # --- crashes
    def _maybe_retry(self, env, error: BaseException, stage: Stage) -> None:
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            return
        path = stage.dir / RETRIES
        counts = files.read_json(path) if path.exists() else {}
        done = int(counts.get(env.job_id, 0))
        if done >= self.launcher.max_retries or restarts() >= self.launcher.max_requeues:
            _say(f"crashed ({type(error).__name__}: {error}); no retry left "
                 f"({done}/{self.launcher.max_retries} retries used)")
            return
        counts[env.job_id] = done + 1
        files.write_json(counts, path)
        _say(f"crashed ({type(error).__name__}: {error}); requeueing (retry {done + 1}/{self.launcher.max_retries}), "
             "it resumes from its latest checkpoint")
        import traceback

        traceback.print_exc()
        requeue_self(env.job_id)
        sys.exit(-1)


class ChainJob:
    """submitit_local: the stages of one chain, in order, in one local job."""

    def __init__(self, stages: list[Stage], compute: Callable):
        self.stages, self.compute = stages, compute

    def __call__(self) -> list[dict]:
        out = []
        for s in self.stages:
            out.append(StageJob(s, self.compute)())
        return out
