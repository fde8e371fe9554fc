"""The local way to run an experiment: every missing stage in this process or in worker processes.

Chains are independent, so locally they run in parallel worker processes when there are spare
cores (a small CPU model gains more from two single-threaded processes than from two threads in
one). Workers hand their stages to the compute plane (Stage.run); this module plans and waits.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

from .config import Config
from .experiment import chains, check_inputs, depth
from .index import write_chains
from .progress import clock


def _run_chain(cfg: Config, chain_index: int, threads: int) -> list[str]:
    cfg = replace(cfg, run=replace(cfg.run, threads=threads or cfg.run.threads))
    done = []
    for stage in chains(cfg)[chain_index]:
        if not stage.done():
            stage.run()
            done.append(stage.label)
    return done


def run_local(cfg: Config) -> int:
    """Run every missing stage of the experiment here; returns how many stages ran."""
    check_inputs(cfg)
    write_chains(cfg)
    all_chains = chains(cfg)
    todo = [i for i, c in enumerate(all_chains) if not all(s.done() for s in c)]
    total = sum(len(c) for c in all_chains)
    missing = sum(1 for i in todo for s in all_chains[i] if not s.done())
    print(f"[sslprune] experiment {cfg.experiment}: {total} stages, {total - missing} already done, "
          f"{missing} to run, store {cfg.store}", flush=True)
    if not todo:
        return 0
    cores = os.cpu_count() or 1
    t0 = time.monotonic()
    ran = 0
    # Chains that start from another chain's network (pruning during transfer) wait for a later wave.
    waves = sorted({depth(cfg, all_chains[i][0].signal) for i in todo})
    for wave in waves:
        batch = [i for i in todo if depth(cfg, all_chains[i][0].signal) == wave]
        workers = cfg.run.workers or (1 if _uses_cuda(cfg) else min(cores, len(batch)))
        if workers <= 1:
            for i in batch:
                ran += len(_run_chain(cfg, i, 0))
            continue
        threads = max(1, cores // workers)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(_run_chain, cfg, i, threads) for i in batch]
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
    import torch  # a local run computes here: torch is needed anyway

    return cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())
