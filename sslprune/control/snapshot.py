"""The code a submitted job runs: a content-addressed copy taken at submission, so editing the
checkout (or upgrading the installed package) while jobs wait in the queue does not change them.

`<store>/code/<content hash>/sslprune/` is the `sslprune` package exactly as an installed wheel
lays it out (launch/ and conf/ inside it), taken from a source checkout (tracked and untracked,
non-ignored files of sslprune/, launch/ and conf/) or from the installed package itself. Jobs run
with that folder first on PYTHONPATH. Identical code is copied once.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

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


def take(store: Path) -> Path:
    """Copy the code to <store>/code/<content hash> (reused if identical); returns that folder."""
    items = files()
    h = hashlib.sha256()
    for src, rel in items:
        h.update(rel.encode() + b"\0" + src.read_bytes() + b"\0")
    dest = Path(store) / "code" / h.hexdigest()[:12]
    if not (dest / ".complete").exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        for src, rel in items:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        (tmp / ".complete").write_text(json.dumps({"from": str(checkout() or PACKAGE), "files": len(items),
                                                   "time": time.time()}))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    return dest
