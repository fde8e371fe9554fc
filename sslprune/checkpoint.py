"""Atomic file writes: a file is either its old content or its complete new content.

A kill -9 in the middle of a write leaves only a stray temporary file, never a torn checkpoint.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)  # make the rename itself durable
    finally:
        os.close(dirfd)


def save(obj: Any, path: Path) -> None:
    _replace(Path(path), lambda f: torch.save(obj, f))


def load(path: Path, device: str | torch.device = "cpu") -> Any:
    return torch.load(Path(path), map_location=device, weights_only=False)


def write_json(obj: Any, path: Path) -> None:
    _replace(Path(path), lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
