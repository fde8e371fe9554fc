"""W&B mirror of the store: one W&B run per stage, one summary run per experiment.

The store stays the source of truth; nothing here may fail a training job (every error is
caught and reported once, then W&B is left alone for that stage). `wandb` is imported only
when W&B is enabled.

- Mode: wandb_mode.py; the experiment's summary run: wandb_report.py.
- Config. A run's config is the experiment's settings (experiment_settings: what the numbers
  depend on and how they were run), not the launcher's or W&B's own, plus the stage's identity.
- Run ids. A stage's W&B run id is a hash of the store's token (`<store>/.wandb_id`, created
  once, so two stores of the same experiment never share runs, and a moved store keeps its
  ids) and the stage directory relative to the store (which encodes config hash, seed, level,
  scheme or probe). A requeued or re-run stage therefore resumes its W&B run (resume="allow").
- Steps. Rows are logged at the training step. A resumed stage restarts from its checkpoint,
  which may be behind what was already logged (kill -9): steps at or below the last step the
  run already holds (the server's step when resuming online; offline, the last step in the
  earlier attempts' `.wandb` files, read with wandb's own reader) are skipped, so the history
  appends and never rewinds. wandb-core writes an offline run's file every
  `wandb.flush_seconds`: a kill -9 loses at most that much of the curves (never the store's data).
- Scale. Online start-up of SLURM array task i waits (i * stagger) % stagger_max seconds
  (first stage of a process only); an online init that fails or times out (wandb.init_timeout)
  falls back to offline (wandb.fallback) for the rest of the process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Optional

from ..core import store as files
from ..core.schema import Config, WandbConfig
from .wandb_mode import fall_back, resolve, say

STORE_TOKEN = ".wandb_id"
_process: dict = {"staggered": False}


# ---------------------------------------------------------------- identity


def store_token(store: Path) -> str:
    """A random token naming this store, created once (atomically: many jobs may race to create it)."""
    path = Path(store) / STORE_TOKEN
    for _ in range(50):
        try:
            text = path.read_text().strip()
            if text:
                return text
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{STORE_TOKEN}.{os.getpid()}.{secrets.token_hex(4)}")
            tmp.write_text(secrets.token_hex(8) + "\n")
            try:
                os.link(tmp, path)  # fails if another job created it first; then read theirs
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            continue
        time.sleep(0.1)
    raise RuntimeError(f"{path} exists but stays empty")


def run_id(store: Path, what: str, kind: str) -> str:
    """A W&B run id derived from the store and what the run mirrors (a path inside the store)."""
    h = hashlib.sha256(f"{store_token(store)}/{what}".encode()).hexdigest()[:20]
    return f"{re.sub(r'[^a-z0-9]+', '', kind.lower())[:8] or 'run'}-{h}"


def stage_path(stage) -> str:
    return Path(stage.dir).relative_to(stage.store).as_posix()


def remaining(stage) -> Optional[float]:
    """Fraction of weights remaining under the stage's mask (a probe or SVM uses its IMP level's)."""
    if getattr(stage, "at_init", False):  # the random-features reference: the dense initial weights
        return 1.0
    for d in (stage.dir, *(p.dir for p in stage.parents() if stage.kind in ("probe", "svm", "finetune"))):
        f = Path(d) / "sparsity_report.json"
        if f.exists():
            try:
                return float(files.read_json(f)["global"]["density"])
            except (OSError, KeyError, ValueError, TypeError):
                return None
    return None


def describe(stage) -> dict:
    """The fields that identify a stage (these override the stage-app selectors of the config)."""
    return {"experiment": stage.cfg.experiment, "kind": stage.kind, "signal": stage.signal,
            "signal_task": stage.signal_task, "seed": stage.seed, "level": stage.level,
            "remaining": remaining(stage), "evaluation": stage.evaluation,
            "scheme": getattr(stage, "scheme", None),
            "probe_dataset": stage.data.name if stage.kind in ("probe", "svm", "finetune") else None,
            "stage_dir": stage_path(stage), "store": str(stage.store)}


# Not the experiment's settings: where and how jobs are submitted, W&B's own settings, and the
# stage apps' selectors (a stage run's config says its own signal, seed, level... via describe).
NOT_SETTINGS = ("launcher", "wandb", "seed", "signal", "level", "scheme", "probe_dataset")


def experiment_settings(cfg: Config) -> dict:
    """What a W&B run's config holds of the experiment: every resolved setting but NOT_SETTINGS."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_SETTINGS}


def run_name(stage) -> str:
    if getattr(stage, "shared", False):  # one run for every signal (the report shows each signal's row)
        return f"retrain {'dense' if stage.dense else 'random mask'} s{stage.seed} L{stage.level}"
    what = {"retrain": f"retrain {stage.signal} {getattr(stage, 'scheme', '')}",
            "probe": f"{stage.evaluation} {stage.signal}"}.get(stage.kind, f"{stage.kind} {stage.signal}")
    return f"{what} s{stage.seed} L{stage.level}"


# ---------------------------------------------------------------- runs


def last_step(where: Path, rid: str, current: Path) -> int:
    """The last history step in earlier offline attempts of run `rid` under `where` (-1 if none)."""
    import json
    import subprocess

    last = -1
    for d in sorted(where.glob(f"wandb/offline-run-*-{rid}")):
        if d == current or d in current.parents:
            continue
        cli = Path(sys.executable).with_name("wandb")
        try:
            out = subprocess.run([str(cli) if cli.exists() else "wandb", "leet", "inspect", "--summary", "--json",
                                  str(d)], capture_output=True, text=True, timeout=60, cwd=d).stdout
            step = json.loads(out).get("step")
        except (OSError, ValueError, subprocess.SubprocessError):
            continue
        if isinstance(step, int):
            last = max(last, step)
    return last


def stagger_delay(w: WandbConfig, env=os.environ) -> float:
    """Seconds SLURM array task i waits before going online: (i * stagger) % stagger_max."""
    try:
        task = int(env.get("SLURM_ARRAY_TASK_ID", "")) - int(env.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
    except ValueError:
        return 0.0
    if w.stagger <= 0 or w.stagger_max <= 0 or task <= 0:
        return 0.0
    return (task * w.stagger) % w.stagger_max


def _stagger(w: WandbConfig) -> None:
    """Spread the online start-up of a SLURM array over time (first W&B run of a process only)."""
    if not _process["staggered"]:
        _process["staggered"] = True
        time.sleep(stagger_delay(w))


def open_run(cfg: Config, mode: str, *, run_id: str, dir: Path, name: str, job_type: str, config: dict):
    """wandb.init with our settings; online failures fall back (wandb.fallback) for the whole process."""
    import wandb

    w = cfg.wandb
    dir.mkdir(parents=True, exist_ok=True)

    def init(m: str):
        settings = wandb.Settings(init_timeout=w.init_timeout, x_service_wait=w.service_wait, console="off",
                                  silent=True, disable_git=True, save_code=False,
                                  x_disable_stats=not w.system_metrics,
                                  x_transaction_log_flush_interval=w.flush_seconds)
        return wandb.init(project=w.project, entity=w.entity, group=w.group or cfg.experiment, job_type=job_type,
                          name=name, id=run_id, resume="allow", config=config, tags=list(w.tags) or None,
                          dir=str(dir), mode=m, settings=settings, reinit="create_new")

    if mode != "online":
        return init(mode)
    _stagger(w)
    try:
        return init("online")
    except Exception as e:
        fallback = w.fallback
        fall_back(fallback)
        try:
            wandb.teardown()  # the failed run keeps its id registered in the service otherwise
        except Exception:
            pass
        say(f"W&B online start-up failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
             f"going on with wandb.mode={fallback} for the rest of this process"
             + (" (upload later with sslprune-sync)" if fallback == "offline" else ""))
        if fallback == "offline":
            return init("offline")
        return None


class StageRun:
    """Observer mirroring one stage to one W&B run (opened lazily at the first logged metrics)."""

    def __init__(self, stage, mode: str):
        self.stage, self.mode = stage, mode
        self.run = None
        self.broken = False
        self.total = 0
        self.floor = 0  # the first step this attempt may log (see _open)

    def _guard(self, what: str, fn) -> None:
        if self.broken:
            return
        try:
            fn()
        except Exception as e:
            self.broken = True
            say(f"W&B {what} failed for {self.stage.label} ({type(e).__name__}: {e}); "
                 "training goes on without W&B for this stage (the store has everything)")
            try:
                if self.run is not None:
                    self.run.finish(exit_code=1)
            except Exception:
                pass

    def _open(self) -> None:
        if self.run is not None:
            return
        stage = self.stage
        config = experiment_settings(stage.cfg)
        config.update(describe(stage))
        self.run = open_run(stage.cfg, self.mode, run_id=run_id(stage.store, stage_path(stage), stage.kind), dir=Path(stage.dir),
                            name=run_name(stage), job_type=stage.kind, config=config)
        if self.run is None:
            self.broken = True
            return
        r = self.run
        # Resumed: log only after what the run already holds (online the server says; offline, earlier attempts).
        self.floor = max(int(getattr(r, "step", 0) or 0), last_step(Path(stage.dir), r.id, Path(r.dir)) + 1)
        r.define_metric("trainer/step")
        r.define_metric("train/*", step_metric="trainer/step")
        r.define_metric("train/acc", step_metric="trainer/step", summary="max,last")
        r.define_metric("train/loss", step_metric="trainer/step", summary="min,last")
        # Final metrics against sparsity: one point per stage run, so runs of a chain (or a group of
        # seeds) draw accuracy-vs-remaining curves with x = `remaining`.
        r.define_metric("remaining")
        r.define_metric("eval/*", step_metric="remaining")

    def log(self, step: int, total: int, metrics: dict) -> None:
        self.total = total

        def go():
            self._open()
            if self.run is None or step < self.floor:
                return
            m = metrics
            row = {"trainer/step": step, "train/epoch": m.get("epoch"), "train/loss": m.get("loss"),
                   "train/acc": m.get("acc"), "train/lr": m.get("lr"), "train/throughput": m.get("ips"),
                   "train/progress": step / total if total else None}
            self.run.log({k: v for k, v in row.items() if v is not None}, step=step)
            self.floor = step + 1
        self._guard("logging", go)

    def finish(self, result: dict) -> None:
        def go():
            self._open()
            if self.run is None:
                return
            r = self.run
            rem = result.get("remaining")
            row = {"remaining": rem, "eval/accuracy": result.get("accuracy"), "eval/loss": result.get("loss"),
                   "eval/level": result.get("level")}
            r.log({k: v for k, v in row.items() if v is not None},
                  step=max(int(result.get("steps") or self.total or 0), self.floor))
            keep = ("accuracy", "loss", "count", "remaining", "evaluation", "level", "seed", "kind", "steps",
                    "start_step", "seconds")
            r.summary.update({k: result[k] for k in keep if k in result})
            # What the network costs is known only now: it joins the run's config (W&B filters and
            # groups runs by config) and its summary.
            from .report import COST

            cost = {k: result[k] for k in (*COST, "input_size") if k in result}
            if cost:
                r.config.update(cost, allow_val_change=True)
                r.summary.update(cost)
            r.summary["status"] = "done"
            r.finish(exit_code=0)
            self.run = None
        self._guard("finish", go)

    def fail(self, error: BaseException) -> None:
        from ..core.errors import Interrupted

        def go():
            self._open()
            if self.run is None:
                return
            r = self.run
            if isinstance(error, Interrupted):
                r.summary["status"] = f"interrupted at step {error.step} (resumes from its checkpoint)"
                r.mark_preempting()
            else:
                r.summary["status"] = "failed"
                r.summary["error"] = f"{type(error).__name__}: {error}"[:1000]
            r.finish(exit_code=1)
            self.run = None
        self._guard("failure report", go)


def observer(stage) -> Optional[StageRun]:
    """The W&B observer of a stage, or None when W&B is disabled (nothing imported, nothing written)."""
    try:
        mode = resolve(stage.cfg.wandb)
    except Exception as e:  # never fail training
        say(f"W&B disabled: could not resolve wandb.mode ({e})")
        return None
    return None if mode == "disabled" else StageRun(stage, mode)

