"""The run store's files, torch-free: atomic writes, JSON records, output manifests, stage locks.

* Atomic writes: a file is either its old content or its complete new content (temporary file,
  fsync, rename, fsync of the folder). A kill -9 in the middle of a write leaves only a stray
  `.<name>.*.tmp` file, which `clean` removes on the next start.
* Manifests: a finished stage's `result.json` lists the size and sha256 of every file it wrote
  (`outputs`). `verify` checks sizes only (a stat per file: cheap enough for status of 10,000
  stages); `verify_file` checks a file's bytes against its sha256 when a later stage reads it.
* Locks: one process at a time computes a stage: `lock(dir)` holds an flock on `<dir>/.lock`,
  released by the operating system when the holder dies, so a killed run never leaves a stale lock.
* Hostile files: the store never follows a symbolic link below its root (`confine`), never writes
  through one, and never opens a file that is not a regular file (`open_regular`: a FIFO would
  block the reader forever). A `result.json` that parses but is not a result is `Corrupt`.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .errors import Busy, Corrupt, NotRegular, StoreError

DONE = "result.json"
LOCK = ".lock"
TMP_AGE_S = 60.0  # a temporary file older than this belongs to a dead writer (writes take milliseconds)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path, mode: str = "rb"):
    """Open a store file for reading, refusing (NotRegular) a symbolic link at its name and anything
    but a regular file: O_NONBLOCK so that opening a FIFO returns at once instead of waiting for a
    writer that never comes (sslprune-status hung on one)."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegular(errno.ELOOP, f"{path} is a symbolic link (to {os.readlink(path)}); "
                                          "the store never follows one") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular(errno.EINVAL, f"{path} is {_kind(st.st_mode)}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode)


def confine(root, path, seen: Optional[set] = None) -> None:
    """Raise StoreError when a part of `path` below the store folder `root` is a symbolic link or
    not a folder: a planted link would make a run read, write, overwrite and delete files outside
    the store. `root` itself may be a link (a store on another disk); parts not yet made are fine.
    `seen`: folders already found plain, skipped (status of 10,000 stages shares their parents);
    a check before writing passes none."""
    root, path = os.path.normpath(root), os.path.normpath(path)
    if seen is not None and path in seen:
        return
    rel = os.path.relpath(path, root)
    if rel == os.curdir:
        return
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise StoreError(errno.EXDEV, f"{path} is not inside the store {root}")
    at = root
    for part in rel.split(os.sep):
        at = os.path.join(at, part)
        if seen is not None and at in seen:
            continue
        try:
            mode = os.lstat(at).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):
            raise StoreError(errno.ELOOP, f"{at} is a symbolic link (to {os.readlink(at)}) inside the store "
                                          f"{root}; the store never follows one: remove it and re-run")
        if not stat.S_ISDIR(mode):
            raise StoreError(errno.ENOTDIR, f"{at} is {_kind(mode)} inside the store {root} where a folder "
                                            "belongs: remove it and re-run")
        if seen is not None:
            seen.add(at)


def disk_full(path: Path, error: OSError) -> StoreError:
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
            raise disk_full(path, e) from None
        if isinstance(e, RuntimeError) and ("file write failed" in str(e) or "No space left" in str(e)):
            raise disk_full(path, OSError(errno.ENOSPC, str(e))) from None  # torch's inline_container.cc
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


def write_text(path: Path, text: str) -> None:
    """A report file (table, markdown): replaced, never written through a link planted at its name
    (open(path, "w") overwrote a linked results.csv's target outside the store)."""
    replace(Path(path), lambda f: f.write(text.encode()), durable=False)


def write_csv(path: Path, columns: list, rows) -> None:
    """A CSV report file with a header row, written like write_text."""
    import csv
    import io

    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, columns)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def copy(source: Path, dest: Path) -> None:
    """A copy of `source` at `dest`, replacing (never writing through) a link at `dest`."""
    with open_regular(source) as src:
        replace(Path(dest), lambda f: shutil.copyfileobj(src, f), durable=False)


def read_json(path: Path) -> Any:
    with open_regular(path) as f:
        return json.loads(f.read().decode())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
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


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN


SHA256 = re.compile(r"[0-9a-f]{64}")


def check_result(result, where: str, kind: Optional[str] = None) -> dict:
    """Raise Corrupt unless `result` holds what every stage's result.json holds (what the report and
    the stages that read it use): a numeric accuracy and remaining fraction, the stage's kind, and
    the manifest of its outputs (plain file names with a size and a sha256). `{}` or
    `"accuracy": "oops"` parsed fine and counted as done forever."""
    if not isinstance(result, dict):
        raise Corrupt(f"{where} holds {type(result).__name__}, not a result record")
    problems = [f"{k} is {result.get(k)!r}, not a number" for k in ("accuracy", "remaining")
                if not _number(result.get(k))]
    if _number(result.get("remaining")) and not 0 <= result["remaining"] <= 1:
        problems.append(f"remaining is {result['remaining']!r}, not a fraction")
    if not isinstance(result.get("metric", ""), str):
        problems.append(f"metric is {result['metric']!r}, not a name")
    if not isinstance(result.get("kind"), str) or (kind is not None and result["kind"] != kind):
        problems.append(f"kind is {result.get('kind')!r}, not {kind or 'a stage kind'!r}")
    if kind == "imp" and not (isinstance(result.get("steps"), int) and not isinstance(result["steps"], bool)):
        problems.append(f"steps is {result.get('steps')!r}, not a count")  # the rewind table reads it
    outputs = result.get("outputs")
    if not isinstance(outputs, dict):
        problems.append(f"outputs is {outputs!r}, not a manifest")
    else:
        for name, rec in outputs.items():
            # A name is a file of the stage's own folder: "../../x" would make verify and set_aside
            # look (or delete) outside it.
            if not name or "/" in name or name in (".", "..", DONE) or not isinstance(rec, dict) \
                    or not isinstance(rec.get("bytes"), int) or isinstance(rec.get("bytes"), bool) \
                    or not isinstance(rec.get("sha256"), str) or not SHA256.fullmatch(rec["sha256"]):
                problems.append(f"outputs entry {name!r}: {rec!r} is not a file name with bytes and sha256")
                break
    if problems:
        raise Corrupt(f"{where} is not a result: " + "; ".join(problems))
    return result


def read_result(folder, kind: Optional[str] = None) -> Optional[dict]:
    """A stage's result.json, None when absent; raises Corrupt when it cannot be parsed, is not a
    regular file, or does not hold a result (check_result; `kind`: the stage's kind)."""
    p = os.path.join(folder, DONE)  # strings, not Paths: status reads ten thousand of these
    try:
        with open_regular(p) as f:
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    except NotRegular as e:
        raise Corrupt(e.strerror) from None
    try:
        result = json.loads(text)
    except ValueError:
        raise Corrupt(f"{p} is not valid JSON ({len(text)} bytes)") from None
    return check_result(result, p, kind)


def verify(folder, result: dict) -> None:
    """Raise Corrupt when an output recorded in `result` is missing, has another size, or is not a
    regular file (lstat: a link to a file of the same size elsewhere is not the output)."""
    for name, rec in (result.get("outputs") or {}).items():
        p = os.path.join(folder, name)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            raise Corrupt(f"{p} is missing (recorded in {os.path.join(folder, DONE)})") from None
        if not stat.S_ISREG(st.st_mode):
            raise Corrupt(f"{p} is {_kind(st.st_mode)}, not the file recorded in {os.path.join(folder, DONE)}")
        size = st.st_size
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
            raise disk_full(store / ".write-test", e) from None
        raise StoreError(e.errno or errno.EIO, f"store={store} cannot be written: {e.strerror or e}") from None


@contextmanager
def lock(folder: Path, wait: bool = True, note: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Hold the stage's lock: `wait` blocks until it is free, else raise Busy at once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    # O_NOFOLLOW and a regular-file check: the holder's line is written into this file (truncating
    # it), and a planted `.lock -> ~/.bashrc` truncated its target.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(errno.ELOOP, f"{path} is a symbolic link (to {os.readlink(path)}); the store never "
                                          "writes through one: remove it and re-run") from None
        if e.errno == errno.EISDIR:
            raise StoreError(errno.EISDIR, f"{path} is a folder, not a lock file: remove it and re-run") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise StoreError(errno.EINVAL, f"{path} is {_kind(mode)}, not a lock file: remove it and re-run")
    os.set_blocking(fd, True)
    f = os.fdopen(fd, "r+")
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


def folder_or_absent(path: Path) -> None:
    """A store that is a file, or lies below one, is refused by every app, reading ones included."""
    at = path
    while not at.exists() and at.parent != at:
        at = at.parent
    if not at.is_dir():
        raise StoreError(errno.ENOTDIR, f"store={path}: {at} is a file, not a folder")
