"""Tensors in the store, written atomically and read without running any code.

* Writes go through sslprune.core.store (temporary file, fsync, rename): a kill -9 in the
  middle of a write leaves only a stray temporary file, never a torn file.
* Reads use `torch.load(weights_only=True)`, always to the CPU: a store on a shared file system is
  only data (tensors, numbers, strings, lists, dicts), and a file holding anything else (a crafted
  pickle that would call os.system) is refused with `Unsafe`, naming the file. Whatever the run's
  device, what is read lives on the CPU; the caller moves what belongs on the device (model and
  optimizer state via load_state_dict), and RNG states stay CPU ByteTensors, as their setters need.
* Training checkpoints keep one generation back (`checkpoint.prev.pt`): a damaged latest file
  (truncated, random bytes) falls back to the previous one, or to a fresh start, with one warning
  naming the file. A damaged checkpoint never blocks its stage.
"""
from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..core import store as files
from ..core.errors import Damaged, Unsafe

LATEST = "checkpoint.pt"
FROM = "loaded_from"  # resume_state's note of the file a state was read from (not saved in checkpoints)


def save(obj: Any, path: Path) -> None:
    files.replace(Path(path), lambda f: torch.save(obj, f))


def load(path: Path, verify: bool = True) -> Any:
    """A torch file of the store, on the CPU, as plain data only.

    `verify`: check the file against the sha256 its stage recorded in result.json first (a file a
    finished stage wrote and another stage now reads), raising sslprune.core.errors.Corrupt."""
    path = Path(path)
    if verify:
        files.verify_file(path)
    try:
        with files.open_regular(path) as f:  # not through a link, never blocking on a FIFO
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"(?:GLOBAL|[Uu]nsupported global:?)\s+([\w.]+)", text)
        if found:  # the file names a Python callable to run: crafted, not damaged
            what = f"a call to {found.group(1)}"
            raise Unsafe(f"refusing to load {path}: it holds {what}, not just tensors and numbers "
                         "(sslprune never writes such files); nothing in it was run. Delete it to recompute "
                         "the stage.") from None
        raise Damaged(f"{path} cannot be read (not a whole torch file: truncated or overwritten)") from None
    # Damaged bytes fail anywhere in the unpickler: a memo lookup of an index never stored is a
    # KeyError, a wrong operand a TypeError or struct.error (random bytes over a checkpoint crashed
    # the stage with a KeyError instead of falling back to the previous checkpoint).
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError, OverflowError, struct.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise Damaged(f"{path} cannot be read ({type(e).__name__}: {first})") from None


def previous(path: Path) -> Path:
    """checkpoint.pt -> checkpoint.prev.pt: the generation before the latest."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_training(state: dict, path: Path) -> None:
    """The latest training checkpoint; the one it replaces becomes the previous generation."""
    path = Path(path)
    if path.exists():
        os.replace(path, previous(path))  # atomic: a kill leaves the latest or the previous, never neither
    save(state, path)


def resume_state(path: Path, note: Callable[[str], None]) -> Optional[dict]:
    """The newest readable training checkpoint (`path`, else its previous generation), None for a
    fresh start. A damaged file is reported in one line and skipped; a crafted file (`Unsafe`) is
    never skipped silently: it raises."""
    path = Path(path)
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            state = load(candidate, verify=False)
        except Damaged as e:
            fallback = "the previous checkpoint" if candidate == path and previous(path).exists() \
                else "the start of the stage"
            note(f"warning: {e}; resuming from {fallback} instead")
            continue
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            note(f"warning: {candidate} is not a training checkpoint; ignoring it")
            continue
        state[FROM] = candidate
        return state
    return None


def discard_training(folder: Path) -> None:
    for path in (Path(folder) / LATEST, previous(Path(folder) / LATEST)):
        path.unlink(missing_ok=True)
