"""An experiment as a graph of stages: chains of (signal, seed) in dependency order, and the
checks that can fail before any work (config values, data files, sizes that need the data).

Stages of one chain (signal, seed) run in order: IMP level L, then the re-training and probes of
level L, then level L+1. Torch-free: planning, submitting and reporting never import torch.
"""
from __future__ import annotations

from pathlib import Path

from ..core import catalog, store
from ..core.errors import ConfigError
from ..core.rewind import rewind_steps
from ..core.schema import Config
from ..core.stage import Finetune, ImpLevel, Probe, Retrain, Stage, Svm
from ..core.sweep import signal_data, signal_prune
from ..core.validation import validate


def chains(cfg: Config) -> list[list[Stage]]:
    """Every stage of the experiment, grouped by (seed, signal), each group in dependency order."""
    out = []
    r, p = cfg.retrain, cfg.probe
    for seed in cfg.seeds:
        for signal in sorted(cfg.signals, key=lambda n: depth(cfg, n)):  # transfer chains after their sources
            chain: list[Stage] = []
            for level in range(cfg.prune.levels + 1):
                chain.append(ImpLevel(cfg, signal, seed, level))
                if (not r.signals or signal in r.signals) and (r.levels is None or level in r.levels):
                    chain += [Retrain(cfg, signal, seed, level, s) for s in r.schemes]
                if signal in p.signals and (p.levels is None or level in p.levels):
                    chain += [Probe(cfg, signal, seed, level, d) for d in p.datasets]
                for ev, stage in ((cfg.svm, Svm), (cfg.finetune, Finetune)):
                    if signal in ev.signals and (ev.levels is None or level in ev.levels):
                        chain += [stage(cfg, signal, seed, level, d) for d in ev.datasets]
                if level == 0:
                    chain += references(cfg, signal, seed)
            out.append(chain)
    return out


def references(cfg: Config, signal: str, seed: int) -> list[Stage]:
    """The random-features reference of a chain's transfer report: each of its probes and SVMs run
    on the chain's initial weights (the paper's "random" line), once per data set."""
    return [kind(cfg, signal, seed, 0, d, at_init=True)
            for ev, kind in ((cfg.probe, Probe), (cfg.svm, Svm)) if signal in ev.signals for d in ev.datasets]


def depth(cfg: Config, signal: str) -> int:
    """How many init_from links lead from a signal back to one trained from scratch."""
    d = 0
    while cfg.signals[signal].init_from is not None:
        signal, d = cfg.signals[signal].init_from, d + 1
    return d


def measurements(cfg: Config) -> list[Stage]:
    """Every (signal, seed, level, evaluation) of the experiment, as the report lists them: a stage
    shared by several names (the dense re-training at level 0) appears once per name."""
    return [s for chain in chains(cfg) for s in chain]


def stages(cfg: Config) -> list[Stage]:
    """Every stage of the experiment once, parents before children: what runs, is submitted and counted."""
    seen: set = set()
    out = []
    for s in measurements(cfg):
        if s.key() not in seen:
            seen.add(s.key())
            out.append(s)
    return out


def check_inputs(cfg: Config) -> None:
    """Everything that can fail before training: config values, data roots, sizes that need the data,
    and last a store that can be written (the one check that creates something: the store folder)."""
    validate(cfg)
    loaded: dict = {}

    def load(d) -> catalog.Facts:  # each data set once: listing ImageNet's class folders is not free
        key = repr(d)
        if key not in loaded:
            loaded[key] = catalog.facts(d)
        return loaded[key]

    # Each root is checked first (DataMissing naming the path), in the order of `uses`; then sizes.
    uses = [(f"signals.{n}.data" if s.data is not None else "data", signal_data(cfg, n), f"signals.{n}.optim",
             s.optim, n) for n, s in cfg.signals.items()]
    if cfg.retrain.schemes:  # retrain.signals, when set, is validated to name signals: some re-train
        uses.append(("retrain.data", cfg.retrain.data, "retrain.optim", cfg.retrain.optim, None))
    uses += [(f"probe.datasets[{i}]", d, "probe.optim", cfg.probe.optim, None) for i, d in enumerate(cfg.probe.datasets)]
    uses += [(f"finetune.datasets[{i}]", d, "finetune.optim", cfg.finetune.optim, None)
             for i, d in enumerate(cfg.finetune.datasets)]
    for _, data_cfg, _, _, _ in uses:
        load(data_cfg)  # every root first: a missing one is named before any size is counted
    for d in cfg.svm.datasets:
        load(d)  # its root (sizes are not checked: the SVMs see the whole split)
    for data_key, data_cfg, optim_key, optim, signal in uses:
        data = load(data_cfg)
        # An ImageFolder tree is counted up to one batch (a smaller one failed once its stage had started).
        if data_cfg._target_ is not None:
            continue  # the user's data set: its size is known once a stage loads it
        n = data.train_count if data.in_memory else catalog.folder_images(data_cfg, optim.batch_size)
        if n is None:
            continue
        if n < optim.batch_size:
            raise ConfigError(f"{optim_key}.batch_size={optim.batch_size} is more than the {n} training images "
                              f"of {data_key} ({data_cfg.name})")
        if signal is not None and data.in_memory:
            spe = n // optim.batch_size
            rewind = signal_prune(cfg, signal).rewind
            rewind_steps(rewind, spe, optim.batch_size, optim.epochs * spe)  # raises if beyond training
    for key, ev in (("probe", cfg.probe), ("svm", cfg.svm), ("finetune", cfg.finetune)):
        for i, d in enumerate(ev.datasets):  # the evaluated network's first layer must take these images
            for name in ev.signals:
                mine, theirs = load(d), load(signal_data(cfg, name))
                if None not in (mine.channels, theirs.channels) and mine.channels != theirs.channels:
                    raise ConfigError(f"{key}.datasets[{i}] ({mine.name}, {mine.channels} channels) cannot evaluate "
                                      f"signal {name}, trained on {theirs.name} ({theirs.channels} channels)")
    for name, sig in cfg.signals.items():
        if sig.task.label_fraction < 1 and load(signal_data(cfg, name)).multilabel:
            raise ConfigError(f"signals.{name}.task.label_fraction={sig.task.label_fraction}: label subsets need "
                              f"single-label data, {signal_data(cfg, name).name} is multi-label")
        if sig.init_from is not None:  # the source network's first layer must take the target's images
            mine, theirs = load(signal_data(cfg, name)), load(signal_data(cfg, sig.init_from))
            if None not in (mine.channels, theirs.channels) and mine.channels != theirs.channels:
                raise ConfigError(f"signals.{name}.init_from={sig.init_from}: {sig.init_from} trains on "
                                  f"{theirs.name} ({theirs.channels} channels) but {name} on {mine.name} "
                                  f"({mine.channels} channels)")
    store.writable(Path(cfg.store))


