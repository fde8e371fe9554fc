"""Tensors in the store: atomic torch files (sslprune.control.store writes them: temporary file,
fsync, rename), so a kill -9 in the middle of a write leaves only a stray temporary file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..control import store as files


def save(obj: Any, path: Path) -> None:
    files.replace(Path(path), lambda f: torch.save(obj, f))


def load(path: Path, device: str | torch.device = "cpu") -> Any:
    return torch.load(Path(path), map_location=device, weights_only=False)
