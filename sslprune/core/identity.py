"""Run identity: the part of a config that changes numbers, as plain data, and the short digests
that name store directories (a chain's, a stage's settings'). Memoised on the config object: a
sweep of thousands of stages shares a few chains."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from . import pretrained
from .schema import Config, SignalConfig
from .sweep import signal_data, signal_prune


def identity(obj: Any) -> Any:
    """The part of a config that changes numbers, as plain JSON data, defaults left out."""
    if dataclasses.is_dataclass(obj):
        out = {}
        default = type(obj)()
        for f in dataclasses.fields(obj):
            if not f.metadata.get("identity", True):
                continue
            value = identity(getattr(obj, f.name))
            left_out = f.metadata["legacy"] if "legacy" in f.metadata else getattr(default, f.name)
            if value == identity(left_out):
                continue
            out[f.name] = value
        return out
    if isinstance(obj, dict):
        return {str(k): identity(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [identity(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # 1.0 and 1 name the same run
    return obj


def digest(*parts: Any) -> str:
    text = json.dumps([identity(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def chain_identity(cfg: Config, signal: str) -> dict:
    s: SignalConfig = cfg.signals[signal]
    out = {"data": identity(signal_data(cfg, signal)), "model": identity(cfg.model), "task": identity(s.task),
           "optim": identity(s.optim), "prune": identity(signal_prune(cfg, signal))}
    known = memo(cfg)
    if "weights" not in known:  # hashing the file once per config, not once per stage
        known["weights"] = pretrained.identity(cfg.model)
    weights = known["weights"]
    if weights is not None:  # a pretrained start: the file's contents (left out otherwise: old names stay)
        out["weights"] = weights
    if s.init_from is not None:  # pruning during transfer: the pretrained source is part of what it is
        out["init_from"] = chain_identity(cfg, s.init_from)
    return out


def memo(cfg: Config) -> dict:
    """Digests of one config, computed once (a sweep of thousands of stages shares a few chains).

    Kept on the config object itself; configs are not changed once stages are made from them."""
    found = cfg.__dict__.get("_sslprune_digests")
    if found is None:
        found = cfg.__dict__["_sslprune_digests"] = {}
    return found


def chain_digest(cfg: Config, signal: str) -> str:
    known = memo(cfg)
    key = ("chain", signal)
    if key not in known:
        known[key] = digest(chain_identity(cfg, signal))
    return known[key]


def memo_digest(cfg: Config, key: tuple, *parts) -> str:
    """digest(*parts), computed once per config and `key`."""
    known = memo(cfg)
    if key not in known:
        known[key] = digest(*parts)
    return known[key]
