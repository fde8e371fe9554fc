"""The edge between Hydra/OmegaConf and the library: register the schema, convert, validate."""
from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sslprune.core.errors import (ConfigError, DataCorrupt, DataMissing, MissingInput, NonFiniteLoss,  # torch-free
                                  StoreError, Unsafe)
from sslprune.core.schema import Config, from_dict
from sslprune.core.validation import check_keys, ready
from sslprune.api import register_schema

# The configs ship inside the package (pyproject.toml maps the repository's conf/ to sslprune.conf),
# so an installed wheel finds them wherever it runs from.
CONFIG_PATH = "pkg://sslprune.conf"
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # the same folder on disk (tests, compose API)

register_schema()


def typed(cfg: DictConfig, writes: bool = False, announce: bool = True) -> Config:
    """A validated, plain-dataclass Config with an absolute store path.

    The store must be a folder, or not exist yet; with `writes` (an app that writes without running
    experiment.check_inputs, e.g. sslprune-report) it must also be writable.

    `announce`: the app is about to work, so decide W&B's mode for the whole command now, in this
    (main) process: its one state line comes before any work, and worker processes inherit the
    decision instead of each printing it again (wandb_mode.announce). Apps that never log to
    W&B (status, sync) pass False."""
    check_keys(OmegaConf.to_container(cfg, resolve=False))  # before from_dict drops unknown keys
    obj = ready(from_dict(OmegaConf.to_container(cfg, resolve=True)), writes)
    if announce:
        from sslprune.control import wandb_mode

        wandb_mode.announce(obj.wandb)
    return obj


def app_help(name: str) -> None:
    """Make `--help` show conf/hydra/help/<name>.yaml: every app composes the same root config,
    whose default help is sslprune-run's, so the other apps choose theirs with an override."""
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        sys.argv.append(f"hydra/help={name}")


def user_errors(fn):
    """Report bad input as one clear line on stderr and exit 2, instead of a traceback.

    The library (and torch) is imported only once the config is known to be valid, so a typo
    on the command line is answered in a fraction of a second."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            _fail(f"sslprune: error: {e}", 2)
        except Exception as e:
            if isinstance(e, (DataMissing, DataCorrupt, MissingInput, Unsafe)):
                _fail(f"sslprune: error: {e}", 2)
            if isinstance(e, StoreError):  # OSError's str() would prefix "[Errno n]"
                # A store refused up front is bad input (2); a disk that fills up during the work is not
                # (1): nothing is corrupt and the re-run resumes.
                _fail(f"sslprune: error: {e.strerror or e}", 1 if e.errno == errno.ENOSPC else 2)
            if isinstance(e, NonFiniteLoss):
                _fail(f"sslprune: training diverged: {e}", 1)
            raise
    return wrapper


def _fail(message: str, code: int) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)
