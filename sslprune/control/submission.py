"""Submit an experiment's missing stages to SLURM as job arrays with dependencies, idempotently.

Plan: one array per (stage kind and variant, signal, level) over the seeds whose stage is
missing, e.g. "IMP level 3 of rotnet, seeds 0-4", "retrain winning_ticket of level 3 of rotnet,
seeds 0-4". An array's task i depends on the job of its parent stage (IMP level L-1 for IMP
level L; IMP level L for its re-training and probes): `aftercorr:<array>` when the tasks
correspond one to one with the parent array's tasks (the usual case), else `afterok:<job>` per
parent job. So re-training and probing of level L start as soon as that seed's level L is done.
`--kill-on-invalid-dep=yes`: when a parent fails, its dependants are cancelled and reported as
blocked by it (`sslprune-status`), and the next `sslprune-run` submits them again.

Idempotence: every submitted stage records its job in `<stage dir>/job.json`. A stage is
submitted only when it is not done and its recorded job is not pending, running or requeued
(asked to squeue/sacct); so re-running `sslprune-run` never duplicates a job and, after a
failure, submits only the failed stages and what depends on them. Submissions of one store are
serialised by a lock; each is appended to `<store>/jobs/<experiment>.jsonl`.
"""
from __future__ import annotations

import fcntl
import json
import shlex
import sys
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import slurm, snapshot

from . import store as files
from .config import Config, LauncherConfig
from .monitor import PROGRESS
from .experiment import chains, depth, stages
from .index import write_chains
from .stage import Finetune, ImpLevel, Probe, Retrain, Stage, Svm

JOB = "job.json"
# Shell lines every job runs before Python starts, then launcher.setup, then $SSLPRUNE_JOB_ENV if set.
JOB_ENV = (
    # One math-library thread per CPU SLURM gave this task, never more (oversubscription is slow).
    'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
    'export MKL_NUM_THREADS="$OMP_NUM_THREADS"',
    "export PYTHONUNBUFFERED=1",
    # Fail fast instead of hanging when a rank of a multi-task job dies.
    "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
    # submitit's preemption signal (SLURM sends it --signal=USR2@<launcher.signal_delay_s> before the limit).
    'export SUBMITIT_PREEMPT_SIGNAL="${SUBMITIT_PREEMPT_SIGNAL:-USR2}"',
)
SITE_ENV = 'if [ -n "${SSLPRUNE_JOB_ENV:-}" ] && [ -f "$SSLPRUNE_JOB_ENV" ]; then source "$SSLPRUNE_JOB_ENV"; fi'
KINDS = ("imp", "retrain", "probe", "svm", "finetune")
STATES = ("done", "running", "pending", "preempted", "failed", "blocked", "corrupt", "missing")


def _say(text: str) -> None:
    print(f"[sslprune] {text}", flush=True)


# ------------------------------------------------------------------ stage state

@dataclass
class StageState:
    stage: Stage
    state: str  # one of STATES
    job_id: Optional[str] = None
    slurm: Optional[slurm.JobState] = None
    blocked_by: Optional[str] = None  # label of the failed ancestor
    record: Optional[dict] = None

    @property
    def active(self) -> bool:
        return self.state in ("running", "pending", "preempted")


def read_record(stage: Stage) -> Optional[dict]:
    p = stage.dir / JOB
    try:
        return files.read_json(p) if p.exists() else None
    except (OSError, ValueError):
        return None


def stage_states(cfg: Config, now: Optional[float] = None) -> list[StageState]:
    """Every stage of the experiment with its state, from the store, job records and SLURM."""
    now = time.time() if now is None else now
    all_stages = stages(cfg)
    records = {s.key(): read_record(s) for s in all_stages}
    ids = [r["job_id"] for r in records.values() if r]
    since = min((r.get("submitted", now) for r in records.values() if r), default=None)
    states = slurm.query(ids, since) if ids and slurm.available() else {}
    out: dict[str, StageState] = {}
    for s in all_stages:  # chains are in dependency order: parents first
        rec = records[s.key()]
        st = StageState(s, "missing", record=rec)
        disk = s.state()
        live = rec is not None and states.get(rec["job_id"]) is not None and states[rec["job_id"]].live
        if disk == "done":
            st.state = "done"
        elif disk == "corrupt" and not live:
            st.state = "corrupt"  # a result.json its files do not match: submitted again
        elif rec:
            st.job_id = rec["job_id"]
            js = st.slurm = states.get(rec["job_id"])
            started = (s.dir / "checkpoint.pt").exists() or (s.dir / PROGRESS).exists()
            if js is None:
                st.state = "pending" if now - rec.get("submitted", 0) < slurm.GRACE_S else "failed"
            elif js.state in slurm.RUNNING:
                st.state = "running"
            elif js.state in slurm.WAITING and js.live:
                if js.reason.startswith(slurm.DEPENDENCY_FAILED):
                    st.state = "blocked"
                elif js.state in ("REQUEUED", "PREEMPTED", "REQUEUE_HOLD") or started:
                    st.state = "preempted"  # waiting to resume from its checkpoint
                else:
                    st.state = "pending"
            elif js.state in slurm.WAITING:  # sacct only: it may be a second behind squeue
                st.state = "pending" if now - rec.get("submitted", 0) < slurm.GRACE_S else "failed"
            else:  # COMPLETED without result.json, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ...
                st.state = "failed"
        elif _fresh_progress(s, now):
            st.state = "running"  # a local run (no job record) that logged recently
        for p in s.parents():
            ps = out.get(p.key())
            if ps is not None and ps.state in ("failed", "blocked") and st.state in ("failed", "blocked", "pending"):
                st.state, st.blocked_by = "blocked", ps.blocked_by or ps.stage.label
        out[s.key()] = st
    return list(out.values())


def _fresh_progress(stage: Stage, now: float, window: float = 300) -> bool:
    p = stage.dir / PROGRESS
    try:
        return now - p.stat().st_mtime < window
    except OSError:
        return False


# ------------------------------------------------------------------ planning

def _variant(s: Stage) -> str:
    """What an array holds besides (signal, level): the kind and its variant (scheme, evaluated data)."""
    if isinstance(s, Retrain):
        return f"retrain-{s.scheme}"
    if isinstance(s, (Probe, Svm, Finetune)):
        return f"{s.kind}-{s.data.name}"
    return "imp"


def plan(cfg: Config, todo: list[Stage]) -> list[list[Stage]]:
    """Missing stages grouped into arrays, parents' arrays before their children's."""
    groups: "OrderedDict[tuple, list[Stage]]" = OrderedDict()
    for s in sorted(todo, key=lambda s: (s.level, s.kind != "imp")):
        groups.setdefault((s.level, s.kind != "imp", _variant(s), s.dir.name, s.signal), []).append(s)
    return list(groups.values())


def _dependency(parents: list[Optional[str]], arrays: dict[str, int]) -> list[tuple[Optional[str], list[int]]]:
    """Split an array's tasks by how they can wait: [(dependency string or None, task indices)]."""
    if all(p is None for p in parents):
        return [(None, list(range(len(parents))))]
    bases = {p.split("_")[0] for p in parents if p}
    if len(parents) > 1 and all(p is not None for p in parents) and len(bases) == 1:
        base = bases.pop()
        if parents == [f"{base}_{i}" for i in range(len(parents))] and arrays.get(base) == len(parents):
            return [(f"aftercorr:{base}", list(range(len(parents))))]
    split: "OrderedDict[Optional[str], list[int]]" = OrderedDict()
    for i, p in enumerate(parents):
        split.setdefault(None if p is None else f"afterok:{p}", []).append(i)
    return list(split.items())


# ------------------------------------------------------------------ submission

@contextmanager
def _lock(store: Path):
    d = store / "jobs"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _executor(cfg: Config, folder: Path, code: Optional[Path], name: str, dependency: Optional[str]):
    import submitit

    L: LauncherConfig = cfg.launcher
    ex = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=L.max_num_timeout)
    setup = list(JOB_ENV)
    extra = {"kill-on-invalid-dep": "yes", "requeue": True}
    if code is not None:
        setup.append(f"export PYTHONPATH={shlex.quote(str(code))}${{PYTHONPATH:+:$PYTHONPATH}}")
        extra["chdir"] = str(code)  # python -m puts the working directory first on sys.path
    extra.update(L.additional_parameters)
    params = dict(job_name=name, time=L.time_min, nodes=L.nodes, ntasks_per_node=L.tasks_per_node,
                  cpus_per_task=L.cpus_per_task, array_parallelism=L.array_parallelism,
                  signal_delay_s=L.signal_delay_s, setup=setup + list(L.setup) + [SITE_ENV],
                  additional_parameters=extra,
                  stderr_to_stdout=True)
    if L.gpus_per_node:
        params["gpus_per_node"] = L.gpus_per_node
    if L.mem_gb:
        params["mem"] = f"{int(L.mem_gb * 1024)}M"
    for k in ("partition", "account", "qos", "constraint", "exclude", "comment"):
        if getattr(L, k):
            params[k] = getattr(L, k)
    if dependency:
        params["dependency"] = dependency
    ex.update_parameters(**params)
    return ex


def _override(key: str, value: str) -> str:
    """`key=value` as one shell word Hydra parses back to `value`: a printed command is pasted into a shell,
    where an unquoted store path with spaces or `$(...)` would split or run."""
    if shlex.quote(value) == value:
        return f"{key}={value}"
    # Inside Hydra's quoted string only quotes need escaping (launcher=slurm refuses backslashes in the store).
    return shlex.quote(f"{key}='" + value.replace("'", "\\'") + "'")


def submit(cfg: Config) -> dict:
    """Submit every stage of the experiment that is neither done nor queued; returns what was submitted."""
    from .job import StageJob

    if not slurm.available():
        raise RuntimeError("launcher=slurm but sbatch/squeue are not on PATH (start a cluster, e.g. "
                           "`bash slurm/local-cluster.sh start`, or use launcher=local)")
    write_chains(cfg)
    store = Path(cfg.store)
    with _lock(store):
        states = stage_states(cfg)
        by_key = {st.stage.key(): st for st in states}
        todo = [st for st in states if st.state in ("missing", "failed", "blocked", "corrupt")]
        counts = {k: sum(1 for st in states if st.state == k) for k in STATES}
        _say(f"experiment {cfg.experiment}: {len(states)} stages: " +
             ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f"; store {cfg.store}")
        summary = {"experiment": cfg.experiment, "store": cfg.store, "submitted": 0, "arrays": []}
        if not todo:
            _say("nothing to submit")
            return summary
        # Jobs of stages being re-submitted that SLURM still holds (e.g. pending on a failed parent).
        stale = [st.job_id for st in todo if st.slurm is not None and st.slurm.live]
        slurm.cancel(stale)
        code = snapshot.take(store) if cfg.launcher.snapshot else None
        folder = Path(cfg.launcher.folder or store / "slurm")
        if code:
            _say(f"code snapshot {code}")
        new_jobs: dict[str, str] = {}  # stage key -> job id submitted now
        array_sizes: dict[str, int] = {}  # array (base) id -> number of tasks
        for st in states:
            r = st.record
            if st.active and r and r.get("array_size") and "_" in r["job_id"]:
                array_sizes[r["job_id"].split("_")[0]] = r["array_size"]
        ledger = []
        for group in plan(cfg, [st.stage for st in todo]):
            parents = []
            for s in group:
                pid = None
                for p in s.parents():
                    if p.key() in new_jobs:
                        pid = new_jobs[p.key()]
                    elif by_key[p.key()].active:
                        pid = by_key[p.key()].job_id
                parents.append(pid)
            first = group[0]
            name = f"sslprune-{cfg.experiment}-{_variant(first)}-{first.signal}-L{first.level}"
            for dependency, idx in _dependency(parents, array_sizes):
                members = [group[i] for i in idx]
                ex = _executor(cfg, folder, code, name, dependency)
                with ex.batch():
                    jobs = [ex.submit(StageJob(s)) for s in members]
                ids = [j.job_id for j in jobs]
                base = ids[0].split("_")[0]
                if len(ids) > 1:
                    array_sizes[base] = len(ids)
                now = time.time()
                for i, (s, jid) in enumerate(zip(members, ids)):
                    old = by_key[s.key()].record or {}
                    history = list(old.get("history", [])) + ([old["job_id"]] if old.get("job_id") else [])
                    files.write_json({"job_id": jid, "array_job_id": base, "array_size": len(ids), "index": i,
                                           "submitted": now, "name": name, "dependency": dependency,
                                           "stage": s.label, "experiment": cfg.experiment,
                                           "log": str(folder / jid), "snapshot": str(code) if code else None,
                                           "history": history}, s.dir / JOB)
                    new_jobs[s.key()] = jid
                _say(f"submitted {name}: {len(ids)} task(s) job {base if len(ids) > 1 else ids[0]}"
                     + (f" after {dependency}" if dependency else ""))
                summary["arrays"].append({"name": name, "job_id": base, "tasks": len(ids), "dependency": dependency,
                                          "stages": [s.label for s in members]})
                ledger.append({"array": base, "name": name, "dependency": dependency,
                               "jobs": {jid: str(s.dir) for s, jid in zip(members, ids)}})
        summary["submitted"] = len(new_jobs)
        with open(store / "jobs" / f"{cfg.experiment}.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), "snapshot": str(code) if code else None,
                                "argv": sys.argv, "arrays": ledger}) + "\n")
        _say(f"submitted {len(new_jobs)} stage(s) in {len(summary['arrays'])} array(s); store {cfg.store}; "
             f"logs {folder}; watch with: sslprune-status experiment={cfg.experiment} {_override('store', cfg.store)}")
        return summary


def run_submitit_local(cfg: Config) -> int:
    """Each chain with missing stages runs as one local submitit job; waits for all of them."""
    import submitit

    from .job import ChainJob

    store = Path(cfg.store)
    todo = [c for c in chains(cfg) if not all(s.done() for s in c)]
    _say(f"experiment {cfg.experiment}: {len(todo)} chain(s) to run as local submitit jobs; store {cfg.store}")
    if not todo:
        return 0
    folder = Path(cfg.launcher.folder or store / "submitit_local")
    ex = submitit.LocalExecutor(folder=str(folder / "%j"), max_num_timeout=cfg.launcher.max_num_timeout)
    ex.update_parameters(timeout_min=cfg.launcher.time_min, signal_delay_s=cfg.launcher.signal_delay_s)
    failed = []
    # Transfer chains (init_from) start from another chain's level 0: submit them in a later wave.
    for wave in sorted({depth(cfg, c[0].signal) for c in todo}):
        batch = [c for c in todo if depth(cfg, c[0].signal) == wave]
        jobs = [ex.submit(ChainJob([s for s in c if not s.done()])) for c in batch]
        _say("jobs " + " ".join(j.job_id for j in jobs))
        for c, j in zip(batch, jobs):
            try:
                j.result()
            except Exception as e:  # report every failure truthfully, then fail
                failed.append(f"{c[0].signal} seed={c[0].seed}: job {j.job_id} failed: {str(e).strip()[-2000:]}")
        if failed:
            raise RuntimeError("; ".join(failed))
    return sum(len(c) for c in todo)
