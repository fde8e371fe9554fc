"""Upload an experiment's offline W&B runs (sslprune-sync), safely re-runnable.

Offline runs live under the store: `<stage dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb`, one
folder per attempt of the stage (a resumed stage writes a new folder with the same run id), and
`<store>/reports/<experiment>/wandb/...` for the summary run. Each is uploaded with `wandb sync`
(one subprocess per W&B run, its attempts in order, several runs in parallel).

Bookkeeping: after a successful upload, `run-<id>.wandb.sslprune-sync.json` next to the file
records its size and modification time. A file whose marker still matches is skipped; a file
that grew since (a run still in progress, or resumed) is uploaded again. Nothing is marked
before `wandb sync` exits 0 and wandb has written its own `.wandb.synced` marker, so a failed
or interrupted sync loses nothing and is simply retried by the next sslprune-sync.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import wandb_mode, wandb_report

from ..core import store as files
from ..core.errors import SyncError
from ..core.schema import Config

MARKER = ".sslprune-sync.json"


@dataclass
class OfflineRun:
    run_id: str
    label: str
    files: list  # .wandb files of every attempt, oldest first
    done: bool  # the stage (or report) finished: its files will not grow any more

    def pending(self) -> list:
        return [f for f in self.files if not synced(f)]


def _stat(f: Path) -> dict:
    st = f.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def marker(f: Path) -> Path:
    return f.with_name(f.name + MARKER)


def synced(f: Path) -> bool:
    """Uploaded, and unchanged since."""
    try:
        m = files.read_json(marker(f))
        return m["size"] == f.stat().st_size and m["mtime_ns"] == f.stat().st_mtime_ns
    except (OSError, KeyError, ValueError, TypeError):
        return False


def find(cfg: Config) -> list[OfflineRun]:
    """Every offline W&B run of the experiment's stages and of its summary run."""
    from .experiment import stages

    places = [(s.dir, s.label, s.done()) for s in stages(cfg)]
    places.append((wandb_report.report_dir(cfg), f"report {cfg.experiment}", True))
    runs: dict[str, OfflineRun] = {}
    for d, label, done in places:
        for f in sorted(Path(d).glob("wandb/offline-run-*/run-*.wandb")):  # folder names start with the time
            rid = f.stem[len("run-"):]
            run = runs.setdefault(rid, OfflineRun(rid, label, [], done))
            run.files.append(f)
    return list(runs.values())


def _server_answers(url: str, timeout: float) -> str | None:
    """None if the W&B server answers at all (any HTTP status), else why not."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", e))
    return None


def _base_url() -> str:
    from . import wandb_login

    try:
        return wandb_login.server()
    except ValueError:  # wandb refuses the configured URL: name it as given; the reachability check says why
        return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def _wandb_cli() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    return [str(exe)] if exe.exists() else [shutil.which("wandb") or "wandb"]


def _sync_one(run: OfflineRun, timeout: float) -> tuple[bool, str]:
    files = run.pending()
    started = time.time()
    # --include-synced: we decide what needs uploading (a grown in-progress file has wandb's marker already).
    cmd = _wandb_cli() + ["sync", "--include-synced", *map(str, files)]
    # cwd: `wandb sync` keeps its own logs in ./wandb, i.e. next to the run (<stage dir>/wandb/logs).
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                         cwd=files[0].parent.parent.parent)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(p)
        return False, f"`wandb sync` did not finish within wandb.sync_timeout={timeout:g} s"
    lines = [ln.strip() for ln in (out or "").splitlines() if ln.strip()]
    if p.returncode != 0:
        return False, f"`wandb sync` exited {p.returncode}: " + (lines[-1] if lines else "no output")
    missing = [f for f in files if not _wandb_marked(f, started)]
    if missing:
        why = next((ln for ln in reversed(lines) if "error" in ln.lower() or "fail" in ln.lower()),
                   lines[-1] if lines else "no output")
        return False, f"`wandb sync` did not confirm {len(missing)} file(s): {why}"
    for f in files:
        files.write_json(_stat(f), marker(f))
    return True, f"{len(files)} file(s)"


def _wandb_marked(f: Path, since: float) -> bool:
    m = f.with_suffix(".wandb.synced")
    try:
        return m.stat().st_mtime >= since - 1
    except OSError:
        return False


def _stop(p: subprocess.Popen) -> None:
    """Stop `wandb sync` and the wandb-core service it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def sync(cfg: Config, out=sys.stdout) -> dict:
    """Upload what is not uploaded yet; raises SyncError naming what could not be uploaded."""
    def say(text: str) -> None:
        print(f"[sslprune-sync] {text}", file=out, flush=True)

    runs = find(cfg)
    todo = [r for r in runs if r.pending()]
    say(f"experiment {cfg.experiment}: {len(runs)} offline W&B run(s) under {cfg.store}, "
        f"{len(runs) - len(todo)} already synced, {len(todo)} to sync "
        f"({sum(1 for r in todo if not r.done)} still in progress or interrupted)")
    if not todo:
        return {"runs": len(runs), "synced": 0, "failed": 0}

    def names(rs) -> str:
        shown = ", ".join(f"{r.label} ({r.run_id})" for r in rs[:10])
        return shown + (f" and {len(rs) - 10} more" if len(rs) > 10 else "")

    if not wandb_mode.has_credentials():
        raise SyncError(f"no W&B credentials on this machine (WANDB_API_KEY, ~/.netrc or `wandb login`): "
                        f"nothing was uploaded; {len(todo)} run(s) wait: {names(todo)}. "
                        "Log in and run sslprune-sync again.")
    url = _base_url()
    why = _server_answers(url, cfg.wandb.check_timeout)
    if why is not None:
        raise SyncError(f"the W&B server {url} cannot be reached ({why}): nothing was uploaded; "
                        f"{len(todo)} run(s) wait: {names(todo)}. Nothing is lost: the offline runs stay in the "
                        "store; run sslprune-sync again from a machine that reaches the server.")
    failed = []
    with ThreadPoolExecutor(max(1, min(cfg.wandb.sync_workers, len(todo)))) as pool:
        for run, (ok, detail) in zip(todo, pool.map(lambda r: _sync_one(r, cfg.wandb.sync_timeout), todo)):
            if ok:
                say(f"synced {run.label} ({run.run_id}): {detail}")
            else:
                failed.append(run)
                say(f"NOT synced {run.label} ({run.run_id}): {detail}")
    if failed:
        raise SyncError(f"{len(failed)} of {len(todo)} run(s) could not be uploaded: {names(failed)}. "
                        "Nothing is lost; run sslprune-sync again to retry them.")
    return {"runs": len(runs), "synced": len(todo), "failed": 0}
