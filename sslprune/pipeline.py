"""An experiment as a list of stages, and the local way to run them.

Stages of one chain (signal, seed) run in order: IMP level L, then the re-training and probes of
level L, then level L+1. Chains are independent, so locally they run in parallel worker
processes when there are spare cores (a small CPU model gains more from two single-threaded
processes than from two threads in one).
"""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

from . import dataset
from .config import Config, ConfigError, rewind_steps, signal_data, signal_prune, validate
from .progress import clock
from .runtime import local
from .stage import ImpLevel, Probe, Retrain, Stage


def chains(cfg: Config) -> list[list[Stage]]:
    """Every stage of the experiment, grouped by (seed, signal), each group in dependency order."""
    out = []
    r, p = cfg.retrain, cfg.probe
    for seed in cfg.seeds:
        for signal in cfg.signals:
            chain: list[Stage] = []
            for level in range(cfg.prune.levels + 1):
                chain.append(ImpLevel(cfg, signal, seed, level))
                if (not r.signals or signal in r.signals) and (r.levels is None or level in r.levels):
                    chain += [Retrain(cfg, signal, seed, level, s) for s in r.schemes]
                if signal in p.signals and (p.levels is None or level in p.levels):
                    chain += [Probe(cfg, signal, seed, level, d) for d in p.datasets]
            out.append(chain)
    return out


def stages(cfg: Config) -> list[Stage]:
    return [s for chain in chains(cfg) for s in chain]


def check_inputs(cfg: Config) -> None:
    """Everything that can fail before training: config values, data roots, sizes that need the data."""
    validate(cfg)
    # dataset.load checks each root first (DataMissing naming the path), then sizes are checked.
    uses = [(f"signals.{n}.data" if s.data is not None else "data", signal_data(cfg, n), f"signals.{n}.optim",
             s.optim, n) for n, s in cfg.signals.items()]
    if any(not r.signals or n in r.signals for r in [cfg.retrain] for n in cfg.signals) and cfg.retrain.schemes:
        uses.append(("retrain.data", cfg.retrain.data, "retrain.optim", cfg.retrain.optim, None))
    uses += [(f"probe.datasets[{i}]", d, "probe.optim", cfg.probe.optim, None) for i, d in enumerate(cfg.probe.datasets)]
    uses += [(f"finetune.datasets[{i}]", d, "finetune.optim", cfg.finetune.optim, None)
             for i, d in enumerate(cfg.finetune.datasets)]
    for i, d in enumerate(cfg.svm.datasets):
        dataset.load(d)
    for data_key, data_cfg, optim_key, optim, signal in uses:
        data = dataset.load(data_cfg)
        if not isinstance(data, dataset.MemoryData):
            continue  # ImageFolder trees are counted when their loader is built
        n = len(data.train.labels)
        if n < optim.batch_size:
            raise ConfigError(f"{optim_key}.batch_size={optim.batch_size} is more than the {n} training images "
                              f"of {data_key} ({data_cfg.name})")
        if signal is not None:
            spe = n // optim.batch_size
            rewind = signal_prune(cfg, signal).rewind
            rewind_steps(rewind, spe, optim.batch_size, optim.epochs * spe)  # raises if beyond training


def _run_chain(cfg: Config, chain_index: int, threads: int) -> list[str]:
    cfg = replace(cfg, run=replace(cfg.run, threads=threads or cfg.run.threads))
    rt = local(cfg.run)
    done = []
    for stage in chains(cfg)[chain_index]:
        if not stage.done():
            stage.run(rt)
            done.append(stage.label)
    return done


def run_local(cfg: Config) -> int:
    """Run every missing stage of the experiment here; returns how many stages ran."""
    check_inputs(cfg)
    all_chains = chains(cfg)
    todo = [i for i, c in enumerate(all_chains) if not all(s.done() for s in c)]
    total = sum(len(c) for c in all_chains)
    missing = sum(1 for i in todo for s in all_chains[i] if not s.done())
    print(f"[sslprune] experiment {cfg.experiment}: {total} stages, {total - missing} already done, "
          f"{missing} to run, store {cfg.store}", flush=True)
    if not todo:
        return 0
    cores = os.cpu_count() or 1
    workers = cfg.run.workers or (1 if _uses_cuda(cfg) else min(cores, len(todo)))
    t0 = time.monotonic()
    ran = 0
    if workers <= 1:
        for i in todo:
            ran += len(_run_chain(cfg, i, 0))
    else:
        threads = max(1, cores // workers)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(_run_chain, cfg, i, threads) for i in todo]
            for f in as_completed(futures):
                ran += len(f.result())
                finished = sum(1 for c in all_chains for s in c if s.done())
                elapsed = time.monotonic() - t0
                rate = (finished - (total - missing)) / max(elapsed, 1e-9)
                eta = (total - finished) / rate if rate > 0 else 0.0
                print(f"[sslprune] {finished}/{total} stages done, elapsed {clock(elapsed)}, "
                      f"remaining about {clock(eta)}", flush=True)
    print(f"[sslprune] ran {ran} stages in {clock(time.monotonic() - t0)}", flush=True)
    return ran


def _uses_cuda(cfg: Config) -> bool:
    import torch

    return cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())
