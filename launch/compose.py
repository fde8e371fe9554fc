"""The edge between Hydra/OmegaConf and the library: register the schema, convert, validate."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from sslprune.config import Config, ConfigError, validate
from sslprune.dataset import DataMissing
from sslprune.stage import MissingInput
from sslprune.trainer import NonFiniteLoss

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

ConfigStore.instance().store(name="sslprune_schema", node=Config)


def typed(cfg: DictConfig) -> Config:
    """A validated, plain-dataclass Config with an absolute store path."""
    obj: Config = OmegaConf.to_object(cfg)
    obj.store = os.path.abspath(os.path.expanduser(obj.store))
    validate(obj)
    return obj


def user_errors(fn):
    """Report bad input as one clear line on stderr and exit 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataMissing, MissingInput) as e:
            print(f"sslprune: error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        except NonFiniteLoss as e:
            print(f"sslprune: training diverged: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
    return wrapper
