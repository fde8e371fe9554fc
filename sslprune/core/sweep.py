"""Sweeps and per-signal views: prune.scopes / prune.rewinds expanded into signals, and the pruning
settings and data set each signal's chains use."""
from __future__ import annotations

import dataclasses
from typing import List

from .schema import Config, DataConfig, PruneConfig


def expand(cfg: Config) -> Config:
    """Turn prune.scopes / prune.rewinds into one signal per (signal, scope, rewind).

    `rotnet` with scopes [stage1, all] becomes `rotnet@stage1` and `rotnet@all`; with rewinds
    [0it, 1ep] as well, `rotnet@stage1@0it`, ... Lists of signal names elsewhere (retrain, probe,
    svm, finetune, init_from) are expanded the same way. Idempotent: the result has no sweeps left."""
    p = cfg.prune
    if not p.scopes and not p.rewinds:
        return cfg
    variants = [(sc, rw) for sc in (p.scopes or [None]) for rw in (p.rewinds or [None])]

    def names(base: str) -> list[str]:
        return [base + (f"@{sc}" if sc is not None else "") + (f"@{rw}" if rw is not None else "")
                for sc, rw in variants]

    signals = {}
    for name, s in cfg.signals.items():
        for new, (sc, rw) in zip(names(name), variants):
            init = None
            if s.init_from is not None:
                init = s.init_from + new[len(name):]
            signals[new] = dataclasses.replace(s, scope=sc if sc is not None else s.scope,
                                               rewind=rw if rw is not None else s.rewind, init_from=init)

    def many(lst: List[str]) -> List[str]:
        return [n for base in lst for n in (names(base) if base in cfg.signals else [base])]

    return dataclasses.replace(
        cfg, signals=signals, prune=dataclasses.replace(p, scopes=[], rewinds=[]),
        retrain=dataclasses.replace(cfg.retrain, signals=many(cfg.retrain.signals)),
        probe=dataclasses.replace(cfg.probe, signals=many(cfg.probe.signals)),
        svm=dataclasses.replace(cfg.svm, signals=many(cfg.svm.signals)),
        finetune=dataclasses.replace(cfg.finetune, signals=many(cfg.finetune.signals)))


def signal_prune(cfg: Config, signal: str) -> PruneConfig:
    """The pruning settings of one signal's chains (its scope and rewind overrides applied)."""
    s = cfg.signals[signal]
    return dataclasses.replace(cfg.prune, scope=s.scope if s.scope is not None else cfg.prune.scope,
                               rewind=s.rewind if s.rewind is not None else cfg.prune.rewind)


def signal_data(cfg: Config, signal: str) -> DataConfig:
    """The data set one signal trains and prunes on."""
    s = cfg.signals[signal]
    return s.data if s.data is not None else cfg.data

