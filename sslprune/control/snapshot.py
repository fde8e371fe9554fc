"""The code a submitted job runs: a content-addressed copy taken at submission, so editing the
checkout (or upgrading the installed package) while jobs wait in the queue does not change them.

`<store>/code/<content hash>/sslprune/` is the `sslprune` package exactly as an installed wheel
lays it out (launch/ and conf/ inside it), taken from a source checkout (tracked and untracked,
non-ignored files of sslprune/, launch/ and conf/) or from the installed package itself. Jobs run
with that folder first on PYTHONPATH. Identical code is copied once.

A snapshot's name is the hash of its content, and it is checked (`verify`) before a submission
reuses it and, in each job, before Python imports it (`job_setup`): code planted in the store is
refused with one line naming the folder, never run. `__pycache__` folders are removed before
that check: Python would run a planted .pyc in place of the verified source.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ..core.errors import Mismatch
from ..core.store import confine

PACKAGE = Path(__file__).resolve().parent.parent  # the sslprune package this process runs
# Repository folder -> where it sits inside the package (pyproject.toml's package-dir).
LAYOUT = {"sslprune": "sslprune", "launch": "sslprune/launch", "conf": "sslprune/conf"}


def checkout() -> Path | None:
    """The source checkout this package runs from (editable install), or None (installed wheel)."""
    root = PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "launch").is_dir() and (root / "conf").is_dir():
        return root
    return None


def _listed(root: Path) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", *LAYOUT], cwd=root,
                             capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        out = [str(p.relative_to(root)) for d in LAYOUT if (root / d).exists() for p in (root / d).rglob("*")]
    return sorted(f for f in out if (root / f).is_file() and "__pycache__" not in f.split("/"))


def files() -> list[tuple[Path, str]]:
    """(source file, path inside the snapshot) of every file of the code."""
    root = checkout()
    if root is not None:
        out = []
        for f in _listed(root):
            top, _, rest = f.partition("/")
            out.append((root / f, f"{LAYOUT[top]}/{rest}"))
        return out
    return [(p, "sslprune/" + str(p.relative_to(PACKAGE))) for p in sorted(PACKAGE.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


COMPLETE = ".complete"


# The content hash is written once, below, as plain functions over the standard library and the
# constants LAYOUT and COMPLETE: `digest` and `verify` call them here, and `job_setup` hands their
# very source (inspect.getsource) to `python -I -c`, so the check each job runs is this code, yet
# imports nothing of sslprune. Importing it from the checkout (as it once did) made every queued
# job depend on the checkout snapshots exist to remove (a switched commit, a half-finished edit, a
# deleted checkout killed them all); a verifier file in the store could itself be planted.

def _digest(items) -> str:
    """The hash of (file path, path inside the snapshot) pairs, in their order."""
    h = hashlib.sha256()
    for path, rel in items:
        with open(path, "rb") as f:
            h.update(rel.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()[:12]


def _source(rel):
    """Where a file of the snapshot sits in a checkout (LAYOUT reversed): `take` hashed a checkout's
    files in that order."""
    for top, inside in sorted(LAYOUT.items(), key=lambda kv: -len(kv[1])):
        if rel.startswith(inside + "/"):
            return top + rel[len(inside):]
    return rel


def _hash(folder):
    """(the content hash of a snapshot folder as `take` names it, None), or (None, why it cannot be
    hashed: a link or anything but a file or folder). Every file counts (an added module changes
    it) but .complete."""
    rels = []
    for at, dirs, names in os.walk(folder):
        for name in dirs + names:
            p = os.path.join(at, name)
            if os.path.islink(p) or not (os.path.isdir(p) or os.path.isfile(p)):
                return None, f"code snapshot {folder} holds {p}, which is not a plain file or folder"
        rels += [os.path.relpath(os.path.join(at, n), folder) for n in names]
    rels = [r for r in rels if r != COMPLETE]

    def items(order):
        return [(os.path.join(folder, r), r) for r in sorted(rels, key=order)]

    checkout_order = _digest(items(_source))  # taken from a source checkout (git's order)
    if checkout_order == os.path.basename(folder):
        return checkout_order, None
    return _digest(items(lambda r: r.split("/"))), None  # taken from an installed package


def _problem(folder):
    """Why the snapshot must not run (one line naming the folder), or None when its content hashes
    to its name. `__pycache__` folders go first: Python would run a planted .pyc in place of the
    verified source."""
    if os.path.islink(folder) or not os.path.isdir(folder):
        return f"code snapshot {folder} is not a folder"
    for at, dirs, _ in os.walk(folder):
        if "__pycache__" in dirs:
            dirs.remove("__pycache__")
            cache = os.path.join(at, "__pycache__")
            os.unlink(cache) if os.path.islink(cache) else shutil.rmtree(cache)
    found, why = _hash(folder)
    if why is None and found != os.path.basename(folder):
        why = (f"code snapshot {folder} does not match its name (its content hashes to {found}): "
               "code was added or changed in the store; refusing to run it. Remove that folder "
               "to take a fresh snapshot")
    return why


def digest(folder: Path) -> str:
    """The content hash of a snapshot folder as `take` names it; Mismatch if it holds a link or
    anything but files and folders."""
    found, why = _hash(str(folder))
    if why is not None:
        raise Mismatch(why)
    return found


def verify(folder: Path) -> None:
    """Raise Mismatch (one line naming the folder) unless the snapshot's content hashes to its name."""
    why = _problem(str(folder))
    if why is not None:
        raise Mismatch(why)


def verifier() -> str:
    """A stdlib-only Python program, `_problem` and what it calls, that checks the snapshot named by
    its first argument: prints `sslprune: error: ...` and exits 1 unless it is intact."""
    parts = ["import hashlib, os, shutil, sys",
             f"LAYOUT = {LAYOUT!r}", f"COMPLETE = {COMPLETE!r}",
             *(inspect.getsource(f) for f in (_digest, _source, _hash, _problem)),
             "try:\n    why = _problem(sys.argv[1])\n"
             "except OSError as e:\n    why = f'{e.strerror or e}: {e.filename}'",
             "if why is not None:\n    print('sslprune: error: ' + why, file=sys.stderr, flush=True)\n    sys.exit(1)"]
    return "\n".join(parts) + "\n"


def job_setup(folder: Path) -> str:
    """The shell line a job runs before Python imports the snapshot; the job stops on a mismatch.
    Isolated mode (-I): neither PYTHONPATH nor the working folder (the snapshot) is on its path.
    The program is inline: sbatch keeps the job script from submission on, so nothing in the store
    or the checkout can change the check afterwards."""
    return (f"{shlex.quote(sys.executable)} -I -c {shlex.quote(verifier())} {shlex.quote(str(folder))} "
            "|| exit 1")


def take(store: Path) -> Path:
    """Copy the code to <store>/code/<content hash> (reused if identical, once verified); returns that folder."""
    items = files()
    name = _digest(items)
    dest = Path(store) / "code" / name
    confine(store, dest)  # a linked code/ would take (and remove) files elsewhere
    if os.path.lexists(dest / COMPLETE):
        verify(dest)
    else:
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        for src, rel in items:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        (tmp / COMPLETE).write_text(json.dumps({"from": str(checkout() or PACKAGE), "files": len(items),
                                                   "time": time.time()}))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    return dest
