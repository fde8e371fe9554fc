"""Where each stage of an experiment stands: the ledger of submitted jobs (`<store>/jobs/ledger.jsonl`,
one line per submission, a stage's latest record is its job), SLURM's answer for those jobs and the
store's files, read together into one state per stage (sslprune-status, and what sslprune-run
submits again)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import slurm
from ..core.progress import PROGRESS
from ..core.schema import Config
from ..core.stage import Stage
from .experiment import stages

LEDGER = "ledger.jsonl"
KINDS = ("imp", "retrain", "probe", "svm", "finetune")
STATES = ("done", "running", "pending", "preempted", "failed", "blocked", "corrupt", "missing")


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


def ledger_path(store: Path) -> Path:
    return Path(store) / "jobs" / LEDGER


def records(store: Path) -> dict[str, dict]:
    """The latest job record of every stage directory ever submitted from this store (all
    experiments: a stage shared by two experiments is submitted once), from the ledger.

    A record: job_id, array_job_id, array_size, index, submitted, name, dependency, log,
    snapshot, history (the stage's earlier job ids, oldest first)."""
    out: dict[str, dict] = {}
    try:
        text = ledger_path(store).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the torn last line of a submission killed while writing it
        for a in entry.get("arrays", []):
            jobs, labels = a.get("jobs", []), a.get("stages", [])
            size = len({jid for jid, _ in jobs})
            for i, (jid, d) in enumerate(jobs):
                old = out.get(d)
                index = int(jid.split("_")[1]) if "_" in jid else 0
                out[d] = {"job_id": jid, "array_job_id": a["array"], "array_size": size, "index": index,
                          "stage": labels[i] if i < len(labels) else None,
                          "submitted": entry["time"], "name": a.get("name"),
                          "dependency": (a["dependencies"][index] if a.get("dependencies") else a.get("dependency")),
                          "log": _log(Path(entry.get("folder", Path(store) / "slurm")), jid),
                          "snapshot": entry.get("snapshot"), "experiment": entry.get("experiment"),
                          "history": (old["history"] + [old["job_id"]]) if old else []}
    return out


def stage_states(cfg: Config, now: Optional[float] = None) -> list[StageState]:
    """Every stage of the experiment with its state, from the store, job records and SLURM."""
    now = time.time() if now is None else now
    all_stages = stages(cfg)
    disks = {s.key(): s.state() for s in all_stages}
    ledger = records(Path(cfg.store))
    # A finished stage needs no job record: only the others' are asked to SLURM.
    recs = {s.key(): ledger.get(s.key()) if disks[s.key()] != "done" else None for s in all_stages}
    ids = [r["job_id"] for r in recs.values() if r]
    since = min((r.get("submitted", now) for r in recs.values() if r), default=None)
    states = slurm.query(ids, since) if ids and slurm.available() else {}
    out: dict[str, StageState] = {}
    for s in all_stages:  # chains are in dependency order: parents first
        rec = recs[s.key()]
        st = StageState(s, "missing", record=rec)
        disk = disks[s.key()]
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


def _log(folder: Path, job_id: str) -> str:
    """The log of a job's first task, as submitit names it (`<folder>/<array>/<id>_0_log.out`)."""
    return str(folder / job_id.split("_")[0] / f"{job_id}_0_log.out")
