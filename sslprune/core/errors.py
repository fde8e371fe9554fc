"""Every exception class sslprune raises, in one place: both planes and the apps raise and catch
them (the apps turn the bad-input ones into one line and exit 2, sslprune.launch.compose)."""
from __future__ import annotations

import errno
import pickle
import signal


# ---------------------------------------------------------------- bad input


class ConfigError(ValueError):
    """Bad user input, raised before any work starts."""


class DataMissing(FileNotFoundError):
    """A data root that does not hold the expected files; says where and how to get them."""


class DataCorrupt(ValueError):
    """A data file that is there but not whole (truncated, wrong counts, not the format)."""


class NoDevice(ConfigError):
    """run.device=cuda on a machine without a visible GPU (bad input: refused before any work)."""


class SubsetMismatch(ValueError):
    """A saved label subset that does not match the config (or the data) of the run reading it."""


# ---------------------------------------------------------------- the store


class StoreError(OSError):
    """The store cannot be written (full disk, read-only, not a folder): one line naming it."""


class Corrupt(ValueError):
    """A stage output does not match what its result.json recorded."""


class Unsafe(pickle.UnpicklingError):
    """A store file holding objects other than plain data (a crafted pickle): refused, nothing of
    it runs (sslprune.compute.checkpoint reads every torch file with weights_only=True)."""


class Damaged(ValueError):
    """A store file that cannot be read as a torch file (truncated, random bytes)."""


class NotRegular(OSError):
    """A store file that is a symbolic link, a FIFO, a device or a folder where a regular file belongs."""


class Busy(Exception):
    """Another process holds the stage's lock."""


class Mismatch(StoreError):
    """A snapshot whose content is not what its name says (planted or edited code)."""

    def __init__(self, message: str):
        super().__init__(errno.EINVAL, message)


# ---------------------------------------------------------------- stages


class MissingInput(FileNotFoundError):
    """A stage's parent is not done."""


class Interrupted(Exception):
    """Training stopped on request (preemption, time limit, Ctrl-C) right after checkpointing at `step`."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}, checkpoint saved")
        self.step = step


class NonFiniteLoss(RuntimeError):
    pass


class Stopped(Exception):
    """sslprune-run was interrupted (Ctrl-C or SIGTERM); `code` is the exit status to use."""

    def __init__(self, signum: int, kept: list[str]):
        self.signum, self.kept = signum, kept
        self.code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


# ---------------------------------------------------------------- SLURM and W&B


class Unavailable(ConfigError):
    """launcher=slurm where SLURM cannot take jobs: no sbatch on PATH, or no controller answering."""


class Refused(ConfigError):
    """SLURM refused a submission, a change to a submitted job (sbatch, a dependency, a release) or a
    command that must succeed (squeue and scancel of --cancel): one line naming it."""


class SyncError(RuntimeError):
    """Some runs could not be uploaded; what was uploaded stays recorded, the rest can be retried."""
