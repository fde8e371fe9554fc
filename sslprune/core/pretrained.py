"""A chain started from a pretrained checkpoint (`model.weights=<file>`), as far as the control plane
sees it: the file is checked to be there and readable, and its sha256 joins the chain's identity.

Torch-free: the file is only hashed here (hashlib). Reading its tensors and matching their names to
the network is the compute plane's (sslprune.compute.pretrained), when the chain's level 0 starts.
The sha256, not the path, is what names the chain: a file copied elsewhere keeps its results, a file
overwritten with other weights gets a new directory. The hash is computed once per config object
(sslprune.core.identity.memo), so planning thousands of stages reads a 100 MB ResNet-50 once.
"""
from __future__ import annotations

import hashlib
import os
import stat
from typing import Optional

from .errors import ConfigError

def resolve(path: Optional[str]) -> Optional[str]:
    """The absolute path a job reads (`~` expanded); None stays None."""
    if path is None:
        return None
    return os.path.abspath(os.path.expanduser(str(path)))


def check(key: str, path) -> None:
    """Refuse a file that is not there, not a regular file or not readable: one line naming the key
    and the path, before any work."""
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{key}={path!r} must be the path of a checkpoint file")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{key}={path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{key}={path}: not a regular file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot be read ({e.strerror})") from None


def sha256(path: str) -> str:
    """The file's sha256 (hex); sslprune.core.identity computes it once per config object."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identity(model) -> Optional[dict]:
    """What a pretrained start adds to a chain's identity (None without one): the file's sha256 and,
    when given, the entry read from it (`model.weights_key`, e.g. DINO's student)."""
    if model.weights is None:
        return None
    out = {"sha256": sha256(model.weights)}
    if model.weights_key is not None:
        out["key"] = model.weights_key
    return out
