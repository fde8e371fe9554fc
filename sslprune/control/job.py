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
* SIGTERM (scancel, `scontrol requeue`, the kill at the time limit) also checkpoints at the next
  step boundary, then waits to be killed, or requeues if USR2 follows (submitit's preemption).
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
from typing import Optional

from . import store as files
from .config import LauncherConfig
from .stage import Interrupted, Stage

RETRIES = "retries.json"


def _say(text: str) -> None:
    print(f"[sslprune job] {text}", flush=True)


class Signals:
    """USR2 and SIGTERM set flags; the training loop reads them at step boundaries."""

    def __init__(self):
        self.usr2 = False
        self.term = False
        self.submitit_handler = None

    def install(self) -> "Signals":
        import submitit

        usr = submitit.JobEnvironment._usr_sig()
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


def restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def requeue_self(job_id: str) -> None:
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)


class StageJob:
    """Run one stage of the store inside a submitit job (SLURM or local)."""

    def __init__(self, stage: Stage, launcher: Optional[LauncherConfig] = None):
        self.stage = stage
        self.launcher = launcher or stage.cfg.launcher

    def __repr__(self) -> str:
        return f"StageJob({self.stage.label})"

    def checkpoint(self, *args, **kwargs):
        """submitit's protocol: what to run after a requeue. The state lives in the store."""
        import submitit

        return submitit.helpers.DelayedSubmission(StageJob(self.stage, self.launcher))

    def __call__(self) -> dict:
        import submitit

        env = submitit.JobEnvironment()
        stage, L = self.stage, self.launcher
        _say(f"{stage.label} -> {stage.dir}; job {env.job_id} rank {env.global_rank}/{env.num_tasks} "
             f"restart {restarts()}; code {os.path.dirname(os.path.abspath(__file__))}")
        if stage.done():
            _say("already done")
            return {"stage": stage.label, "dir": str(stage.dir), **stage.result()}
        sig = Signals().install()
        try:
            # Ranks and rendezvous come from the SLURM environment (sslprune.compute.runtime).
            result = stage.run("environment", interrupt=sig.poll)
        except Interrupted as e:
            self._interrupted(env, sig, e)
            raise  # not reached: _interrupted requeues and exits, or raises
        except Exception as e:
            if env.global_rank == 0:
                self._maybe_retry(env, e)
            raise
        return {"stage": stage.label, "dir": str(stage.dir), "accuracy": result["accuracy"]}

    # --- after the loop saved its checkpoint
    def _interrupted(self, env, sig: Signals, e: Interrupted) -> None:
        why = 'USR2 (preemption or time limit)' if sig.usr2 else 'SIGTERM' if sig.term else 'another rank'
        _say(f"rank {env.global_rank}: {e}: {why}")
        if env.global_rank != 0:
            # Every rank stopped at this same step (they agree on it); rank 0 wrote the checkpoint and
            # requeues the job, and SLURM then ends this task. Never linger in a collective.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                time.sleep(0.5)
            raise RuntimeError(f"rank {env.global_rank} stopped at step {e.step}; the job was not requeued")
        if not sig.usr2:
            # SIGTERM alone: scancel, `scontrol requeue` or the kill at the time limit. Wait for the
            # kill (or for submitit's USR2 that may follow), then fail if neither comes.
            deadline = time.monotonic() + 120
            while not sig.usr2 and time.monotonic() < deadline:
                time.sleep(0.2)
            if not sig.usr2:
                raise RuntimeError("terminated (SIGTERM) and not requeued; checkpoint saved")
        if restarts() >= self.launcher.max_requeues:
            raise RuntimeError(f"not requeued: the job already restarted {restarts()} times "
                               f"(launcher.max_requeues={self.launcher.max_requeues}); checkpoint saved")
        handler = sig.submitit_handler
        if callable(handler):  # submitit: checkpoint() -> dump the submission -> scontrol requeue -> exit
            handler(self._usr_signum(), None)
        requeue_self(env.job_id)  # outside submitit's SLURM environment (should not happen)
        sys.exit(-1)

    @staticmethod
    def _usr_signum() -> int:
        import submitit

        return submitit.JobEnvironment._usr_sig()

    # --- crashes
    def _maybe_retry(self, env, error: BaseException) -> None:
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            return
        path = self.stage.dir / RETRIES
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

    def __init__(self, stages: list[Stage]):
        self.stages = stages

    def __call__(self) -> list[dict]:
        out = []
        for s in self.stages:
            out.append(StageJob(s)())
        return out
