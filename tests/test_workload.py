"""A local run starts the chains with the most work left first (sslprune.control.workload)."""
from __future__ import annotations

import dataclasses

from sslprune import api
from sslprune.control import experiment, workload
from sslprune.control.local import run_local
from sslprune.core.schema import RetrainConfig, TaskConfig

from conftest import tiny_config, tiny_optim
from sslprune.api import compute as real_compute, uses_cuda


def test_the_figure6_twin_starts_its_exemplar_chains_first_seed_after_seed(tmp_path):
    cfg = api.config("fig6_cifar10_vgg19_small", store=tmp_path)
    chains = experiment.chains(cfg)
    order = workload.longest_first(chains, range(len(chains)))
    seeds = list(cfg.seeds)
    assert [(chains[i][0].signal, chains[i][0].seed) for i in order] == \
        [(s, seed) for s in ("exemplar", "rotnet", "labels") for seed in seeds]
    # The measure, exactly: every IMP level's epochs x passes per image (Exemplar: 90 x 2 views,
    # RotNet: 30 x 4 turns, labels: 30 x 1) plus 30 per re-training, level 0's shared dense
    # re-training counted once although three schemes list it.
    imp = cfg.prune.levels + 1
    retrains = 1 + 1 + 3 * (len(cfg.retrain.levels) - 1)  # level 0: ticket, dense; then 3 per pruned level
    retrains += len(cfg.retrain.levels) - 1  # the shared random mask of each pruned level
    left = {chains[i][0].signal: workload.work(chains[i]) for i in order[::len(seeds)]}
    assert left == {"exemplar": imp * 180 + retrains * 30, "rotnet": imp * 120 + retrains * 30,
                    "labels": imp * 30 + retrains * 30}


def test_what_is_done_no_longer_counts(tmp_path):
    cfg = api.config("fig6_cifar10_vgg19_small", store=tmp_path)
    chains = experiment.chains(cfg)
    first = next(i for i, c in enumerate(chains) if c[0].signal == "exemplar" and c[0].seed == 0)
    # Exemplar seed 0 pruned to its last level (a resumed run): only its re-trainings are left, less
    # than any labels chain holds, so it goes last.
    done = frozenset(s.key() for s in chains[first] if s.kind == "imp")
    order = workload.longest_first(chains, range(len(chains)), done)
    assert order[-1] == first
    assert [chains[i][0].signal for i in order[:3]] == ["exemplar"] * 3


def test_a_local_run_computes_the_longer_chain_first(tmp_path):
    # labels before rotnet in the experiment's order; rotnet's four turns make its chain the longer.
    cfg = tiny_config(tmp_path, prune=dataclasses.replace(tiny_config(tmp_path).prune, levels=1),
                      retrain=RetrainConfig(optim=tiny_optim(epochs=1), levels=[1], schemes=["winning_ticket"]))
    cfg.probe = dataclasses.replace(cfg.probe, signals=[])
    assert [c[0].signal for c in experiment.chains(cfg)] == ["labels", "rotnet"]
    assert cfg.signals["rotnet"].task == TaskConfig("rotnet")
    computed = []

    def compute(stage, *args, **kw):
        computed.append(stage.label)
        return real_compute(stage, *args, **kw)

    assert run_local(cfg, compute, uses_cuda) == 6
    assert computed == ["imp rotnet seed=0 level=0", "imp rotnet seed=0 level=1", "retrain rotnet winning_ticket seed=0 level=1",
                        "imp labels seed=0 level=0", "imp labels seed=0 level=1", "retrain labels winning_ticket seed=0 level=1"]
