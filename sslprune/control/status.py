"""sslprune-status: where an experiment stands, from the store, the job records and SLURM.

Per stage kind: counts of done / running / pending / preempted (waiting to resume from its
checkpoint) / failed / blocked (an ancestor failed) / missing (never submitted), and a progress
bar (done stages plus the fraction of training done by started ones). Per running stage: its
step, latest and best logged metrics (from its progress.json). Per failed stage: the job, its
SLURM state and its log. No W&B needed.
"""
from __future__ import annotations

import json
import time
from typing import Optional

from ..core import store as files
from ..core.progress import PROGRESS
from ..core.schema import Config
from .ledger import KINDS, STATES, StageState, stage_states


def _progress(st: StageState) -> Optional[dict]:
    p = st.stage.dir / PROGRESS
    try:
        return files.read_json(p) if p.exists() else None
    except (OSError, ValueError):
        return None


def collect(cfg: Config) -> dict:
    now = time.time()
    states = stage_states(cfg, now)
    progress = {st.stage.key(): _progress(st) for st in states if st.state in ("running", "preempted")}
    kinds = {}
    for kind in KINDS:
        mine = [st for st in states if st.stage.kind == kind]
        if not mine:
            continue
        counts = {k: sum(1 for st in mine if st.state == k) for k in STATES}
        partial = 0.0
        for st in mine:
            if st.state in ("running", "preempted"):
                pr = progress[st.stage.key()]
                if pr and pr.get("total"):
                    partial += min(1.0, pr["step"] / pr["total"])
        kinds[kind] = {"total": len(mine), **counts,
                       "progress": round((counts["done"] + partial) / len(mine), 4)}
    running = []
    for st in states:
        if st.state not in ("running", "preempted"):
            continue
        pr = progress[st.stage.key()] or {}
        running.append({"stage": st.stage.label, "kind": st.stage.kind, "state": st.state, "job_id": st.job_id,
                        "dir": str(st.stage.dir), "step": pr.get("step"), "total": pr.get("total"),
                        "latest": pr.get("latest", {}), "best": pr.get("best", {}),
                        "updated_s_ago": round(now - pr["time"], 1) if pr.get("time") else None})
    problems = []
    for st in states:
        if st.state in ("failed", "blocked", "corrupt"):
            problems.append({"stage": st.stage.label, "kind": st.stage.kind, "state": st.state, "job_id": st.job_id,
                             "slurm_state": st.slurm.state if st.slurm else None,
                             "exit_code": st.slurm.exit_code if st.slurm else None,
                             "blocked_by": st.blocked_by, "dir": str(st.stage.dir),
                             "log": (st.record or {}).get("log")})
    return {"experiment": cfg.experiment, "store": cfg.store, "time": now, "stages": len(states),
            "complete": all(st.state == "done" for st in states), "kinds": kinds, "running": running,
            "problems": problems}


def bar(fraction: float, width: int = 24) -> str:
    n = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * n + "-" * (width - n) + "]"


def _metrics(d: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in d.items())


def text(status: dict) -> str:
    lines = [f"experiment {status['experiment']}: {status['stages']} stages, store {status['store']}"]
    header = f"{'kind':8} {'progress':32} " + " ".join(f"{k:>9}" for k in STATES)
    lines.append(header)
    for kind, c in status["kinds"].items():
        lines.append(f"{kind:8} {bar(c['progress'])} {100 * c['progress']:5.1f}% " +
                     " ".join(f"{c[k]:>9}" for k in STATES))
    if status["running"]:
        lines.append("running:")
        for r in status["running"]:
            where = f"{r['step']}/{r['total']}" if r["total"] else "starting"
            frac = r["step"] / r["total"] if r["total"] else 0.0
            lines.append(f"  {r['stage']:44} job {r['job_id'] or '-':10} {r['state']:9} {bar(frac, 16)} {where}"
                         f"  latest: {_metrics(r['latest']) or '-'}  best: {_metrics(r['best']) or '-'}")
    if status["problems"]:
        lines.append("failed, blocked or corrupt:")
        for p in status["problems"]:
            if p["state"] == "blocked":
                lines.append(f"  {p['stage']:44} blocked by {p['blocked_by']}")
            elif p["state"] == "corrupt":
                lines.append(f"  {p['stage']:44} corrupt: its files do not match its result.json "
                             f"({p['dir']}); sslprune-run recomputes it")
            else:
                lines.append(f"  {p['stage']:44} job {p['job_id'] or '-'} {p['slurm_state'] or 'unknown'} "
                             f"exit {p['exit_code'] or '-'}  log {p['log'] or '-'}")
    if status["complete"]:
        lines.append("all stages done: sslprune-report writes the tables and the plot")
    return "\n".join(lines)


def dumps(status: dict) -> str:
    return json.dumps(status, indent=2, sort_keys=True)
