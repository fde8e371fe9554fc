"""What SLURM says about recorded jobs: live state from squeue, finished state from sacct.

squeue answers at once and lists finished jobs for `MinJobAge`; sacct (accounting) knows older
jobs but lags a second or so behind, so a job seen by neither within GRACE_S of its submission
counts as pending.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from ..core.errors import Refused, Unavailable

GRACE_S = 60

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "PREEMPTED"}
LIVE = RUNNING | WAITING
DEPENDENCY_FAILED = "DependencyNeverSatisfied"


@dataclass
class JobState:
    state: str  # SLURM state, e.g. PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT
    reason: str = ""
    exit_code: str = ""
    source: str = ""  # squeue | sacct

    @property
    def live(self) -> bool:
        return self.source == "squeue" and self.state in LIVE


def available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("squeue") is not None


def require() -> None:
    """Raise Unavailable (one line) unless jobs can be submitted now. Called before anything is
    written: an unreachable controller used to fail inside submitit's sbatch call, 59 lines of
    traceback after the store had gained code/, jobs/configs/ and job pickles."""
    missing = [c for c in ("sbatch", "squeue") if shutil.which(c) is None]
    if missing:
        raise Unavailable(f"launcher=slurm but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                          "on PATH (start a cluster, e.g. `bash slurm/local-cluster.sh start`, or use launcher=local)")
    said = silent()
    if said is not None:
        raise Unavailable(f"launcher=slurm but the SLURM controller does not answer (scontrol ping: {said}); "
                          "nothing was submitted or written: start it, check SLURM_CONF, or use launcher=local")


def silent() -> Optional[str]:
    """None when the controller answers (or there is no scontrol to ask), else what `scontrol ping` said."""
    if shutil.which("scontrol") is None:
        return None
    try:  # `scontrol ping` answers in milliseconds, up or down; squeue retries for seconds
        p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
        said, ok = (p.stdout.strip().splitlines() or [p.stderr.strip()])[0], p.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        said, ok = str(e), False
    return None if ok else said


def _run(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout if p.returncode == 0 else ""


def _expand(job_id: str) -> list[str]:
    """'12_[3-5,7%2]' -> ['12_3', '12_4', '12_5', '12_7']; '12_3' and '12' as they are."""
    m = re.match(r"^(\d+)_\[([^\]]+)\]$", job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += [f"{base}_{i}" for i in range(int(a), int(b) + 1)]
        elif part:
            out.append(f"{base}_{part}")
    return out


def _tasks(states: dict[str, JobState], wanted: set) -> dict[str, JobState]:
    """The states of the wanted ids. A pending array cancelled before its tasks were split is one
    record under the array's own id ("7295 CANCELLED"): its tasks have that state."""
    for j in wanted:
        base = j.split("_")[0]
        if j not in states and "_" in j and base in states:
            states[j] = states[base]
    return {j: s for j, s in states.items() if j in wanted}


def accounting(job_ids: Iterable[str], since: Optional[float] = None) -> dict[str, JobState]:
    """What sacct says of each job id ('123' or '123_4'): finished jobs long after squeue forgot them."""
    wanted = {j for j in job_ids if j}
    if not wanted:
        return {}
    bases = sorted({j.split("_")[0] for j in wanted}, key=int)
    states: dict[str, JobState] = {}
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode,Reason", "-j", ",".join(bases)]
    if since is not None:
        cmd += ["-S", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 3600))]
    for line in _run(cmd).splitlines():
        parts = line.split("|")
        if len(parts) < 4:
            continue
        jid, state, code, reason = parts[:4]
        for j in _expand(jid):
            states[j] = JobState(state.split()[0], reason, code, "sacct")  # "CANCELLED by 0" -> CANCELLED
    return _tasks(states, wanted)


def query(job_ids: Iterable[str], since: Optional[float] = None) -> dict[str, JobState]:
    """State of each job id ('123' or '123_4'): squeue's live view over sacct's; unknown ids are absent."""
    wanted = {j for j in job_ids if j}
    if not wanted:
        return {}
    bases = sorted({j.split("_")[0] for j in wanted}, key=int)
    states = accounting(wanted, since)
    out = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(bases), "-o", "%i|%T|%r"])
    if not out:  # one unknown id makes squeue -j fail: ask for all of this user's jobs instead
        out = _run(["squeue", "-h", "-r", "-t", "all", "--me", "-o", "%i|%T|%r"])
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        jid, state, reason = parts[:3]
        for j in _expand(jid):
            if j.split("_")[0] in bases:
                old = states.get(j)
                states[j] = JobState(state, reason, old.exit_code if old and old.state == state else "", "squeue")
    return _tasks(states, wanted)


def state(job_id: str) -> str:
    """squeue's state of one job or array task ('123', '123_4'), e.g. RUNNING; '' when squeue does not answer."""
    out = _run(["squeue", "-h", "-j", job_id, "-o", "%T"]).split()
    return out[0] if out else ""


def _said(p: subprocess.CompletedProcess) -> str:
    return "; ".join(line.strip() for line in (p.stderr or p.stdout).splitlines() if line.strip())


def depend(dependencies: dict[str, str]) -> None:
    """Give tasks of a held array their own dependency ({"12_3": "afterok:11_5"}): one
    `scontrol update` per distinct dependency (updating a task splits it from its array's record)."""
    by: dict[str, list[str]] = {}
    for job, dep in dependencies.items():
        by.setdefault(dep, []).append(job)
    for dep, jobs in by.items():
        p = subprocess.run(["scontrol", "update", f"JobId={','.join(jobs)}", f"Dependency={dep}"],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise Refused(f"scontrol update JobId={','.join(jobs)} Dependency={dep} failed: {_said(p)}")


def release(job_id: str) -> None:
    p = subprocess.run(["scontrol", "release", job_id], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise Refused(f"scontrol release {job_id} failed: {_said(p)}")


def live_jobs(check: bool = False) -> list[tuple[str, str]]:
    """(array or job id, name) of each of this user's jobs SLURM still holds (pending, running, ...).
    `check`: raise Refused when squeue fails, instead of answering "none"."""
    cmd = ["squeue", "-h", "--me", "-t", "all", "-o", "%F|%T|%j"]
    out = _run(cmd)
    if check and not out:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)  # empty queue, or a failure?
        if p.returncode != 0:
            said = ((p.stderr or p.stdout).strip().splitlines() or [""])[-1]
            raise Refused(f"squeue failed (exit {p.returncode}): {said}")
        out = p.stdout
    rows = [line.split("|", 2) for line in out.splitlines() if line.count("|") >= 2]
    return list(dict.fromkeys((job, name) for job, state, name in rows if state in LIVE))


def cancel(job_ids: Iterable[str], check: bool = False) -> None:
    """scancel the ids. `check`: raise Refused when scancel fails (sslprune-status --cancel printed
    "cancelled" for jobs a controller that went away never cancelled); a re-submission's clean-up
    of stale jobs does not check (a job may end between squeue and scancel)."""
    ids = [j for j in job_ids if j]
    if not ids:
        return
    try:
        p = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        if check:
            raise Refused(f"scancel {' '.join(ids)} failed: {e}") from None
        return
    if check and p.returncode != 0:
        said = ((p.stderr or p.stdout).strip().splitlines() or [""])[-1]
        raise Refused(f"scancel {' '.join(ids)} failed (exit {p.returncode}): {said}")
