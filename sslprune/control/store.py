"""The run store's files, torch-free: atomic writes, JSON records, output manifests, stage locks.

* Atomic writes: a file is either its old content or its complete new content (temporary file,
  fsync, rename, fsync of the folder). A kill -9 in the middle of a write leaves only a stray
  `.<name>.*.tmp` file, which `clean` removes on the next start.
* Manifests: a finished stage's `result.json` lists the size and sha256 of every file it wrote
  (`outputs`). `verify` checks sizes only (a stat per file: cheap enough for status of 10,000
  stages); `verify_file` checks a file's bytes against its sha256 when a later stage reads it.
* Locks: one process at a time computes a stage: `lock(dir)` holds an flock on `<dir>/.lock`,
  released by the operating system when the holder dies, so a killed run never leaves a stale lock.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

DONE = "result.json"
LOCK = ".lock"
TMP_AGE_S = 60.0  # a temporary file older than this belongs to a dead writer (writes take milliseconds)


class StoreError(OSError):
    """The store cannot be written (full disk, read-only, not a folder): one line naming it."""


class Corrupt(ValueError):
    """A stage output does not match what its result.json recorded."""


class Unsafe(pickle.UnpicklingError):
    """A store file holding objects other than plain data (a crafted pickle): refused, nothing of
    it runs (sslprune.compute.checkpoint reads every torch file with weights_only=True)."""


class Damaged(ValueError):
    """A store file that cannot be read as a torch file (truncated, random bytes)."""


def _disk_full(path: Path, error: OSError) -> StoreError:
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else path.anchor).free
        space = f"{free / 2**20:.1f} MiB free"
    except OSError:
        space = "free space unknown"
    return StoreError(errno.ENOSPC, f"no space left writing {path} ({space}); nothing was corrupted: "
                                    "free some space and re-run the same command to resume")


def replace(path: Path, write: Callable, durable: bool = True) -> None:
    """Write `path` atomically with `write(binary file)`. `durable`: also fsync the file and its
    folder, so the new content survives a power loss (a crash of the process never tears it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise _disk_full(path, e) from None
        if isinstance(e, RuntimeError) and ("file write failed" in str(e) or "No space left" in str(e)):
            raise _disk_full(path, OSError(errno.ENOSPC, str(e))) from None  # torch's inline_container.cc
        raise
    if durable:
        sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make renames inside `folder` durable."""
    dirfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def write_json(obj: Any, path: Path, durable: bool = True) -> None:
    replace(Path(path), lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()), durable)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(folder: Path, names) -> dict:
    """{name: {"bytes": size, "sha256": digest}} of the named files of a stage folder that exist."""
    out = {}
    for name in names:
        p = Path(folder) / name
        if p.is_file():
            out[name] = {"bytes": p.stat().st_size, "sha256": sha256(p)}
    return out


def read_result(folder) -> Optional[dict]:
    """A stage's result.json, None when absent; raises Corrupt when it cannot be parsed."""
    p = os.path.join(folder, DONE)  # strings, not Paths: status reads ten thousand of these
    try:
        with open(p) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        result = json.loads(text)
    except ValueError:
        raise Corrupt(f"{p} is not valid JSON ({len(text)} bytes)") from None
    if not isinstance(result, dict):
        raise Corrupt(f"{p} holds {type(result).__name__}, not a result record")
    return result


def verify(folder, result: dict) -> None:
    """Raise Corrupt when an output recorded in `result` is missing or has another size."""
    for name, rec in (result.get("outputs") or {}).items():
        p = os.path.join(folder, name)
        try:
            size = os.stat(p).st_size
        except FileNotFoundError:
            raise Corrupt(f"{p} is missing (recorded in {os.path.join(folder, DONE)})") from None
        if size != rec.get("bytes"):
            raise Corrupt(f"{p} has {size} bytes, {rec.get('bytes')} were written")


def verify_file(path: Path) -> None:
    """Check a stage output's bytes against the sha256 its stage recorded (no record: nothing to check)."""
    path = Path(path)
    try:
        result = read_result(path.parent)
    except Corrupt:
        return  # the folder's own state check reports it; the reader's load fails or succeeds on its own
    rec = ((result or {}).get("outputs") or {}).get(path.name)
    if rec is None:
        return
    verify(path.parent, {"outputs": {path.name: rec}})
    if sha256(path) != rec.get("sha256"):
        raise Corrupt(f"{path} does not match the sha256 recorded in {path.parent / DONE}")


def set_aside(folder: Path, reason: str, outputs=()) -> Optional[Path]:
    """A finished stage whose files do not match its result.json: move result.json aside (kept as
    result.json.corrupt-<time>, with the reason beside it) and remove `outputs`, so the stage counts
    as not done and is computed again from scratch (a kept damaged mask.pt would be reused)."""
    folder = Path(folder)
    p = folder / DONE
    dest = None
    if p.exists():
        dest = p.with_name(f"{DONE}.corrupt-{int(time.time())}")
        os.replace(p, dest)
        try:
            dest.with_name(dest.name + ".why").write_text(reason + "\n")
        except OSError:
            pass
    for name in outputs:
        (folder / name).unlink(missing_ok=True)
    return dest


def clean(folder: Path, older_than: float = TMP_AGE_S) -> list[Path]:
    """Remove temporary files of killed writers (`.<name>.*.tmp`) in `folder`."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for e in entries:
        if e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file(follow_symlinks=False):
            try:
                if now - e.stat().st_mtime > older_than:
                    os.unlink(e.path)
                    removed.append(Path(e.path))
            except FileNotFoundError:
                pass
    return removed


def writable(store: Path) -> None:
    """Raise StoreError unless `store` is (or can become) a writable folder."""
    store = Path(store)
    at = store
    while not at.exists():
        if at.parent == at:
            break
        at = at.parent
    if at.exists() and not at.is_dir():
        raise StoreError(errno.ENOTDIR, f"store={store}: {at} is a file, not a folder")
    if not os.access(at, os.W_OK | os.X_OK):
        raise StoreError(errno.EACCES, f"store={store}: {at} is not writable")
    try:
        store.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=store, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _disk_full(store / ".write-test", e) from None
        raise StoreError(e.errno or errno.EIO, f"store={store} cannot be written: {e.strerror or e}") from None


class Busy(Exception):
    """Another process holds the stage's lock."""


@contextmanager
def lock(folder: Path, wait: bool = True, note: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Hold the stage's lock: `wait` blocks until it is free, else raise Busy at once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise Busy(str(folder)) from None
            if note:
                f.seek(0)
                holder = f.read().strip() or "another process"
                note(f"waiting: {holder} is computing this stage")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        yield
    finally:
        try:
            fcntl.flock(f, fcntl.LOCK_UN)
        finally:
            f.close()
