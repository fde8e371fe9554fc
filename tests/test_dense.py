"""At level 0 the random and random re-init starts (and the adjusted random one) are the same
training for every signal of a seed: fresh weights from the seed, a mask of ones, the same batches.
It is computed once and reported under every (signal, start) name. At a pruned level the random
start is one stage per (seed, level) as well (issue 22): IMP's count of weights drawn at random,
the same draw for every signal pruned with the same rate, ignore and scope."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sslprune.core import store as files
from sslprune.core.stage import ImpLevel, Retrain
from sslprune.control import findings
from sslprune.control import report
from sslprune.control.experiment import measurements, stages
from sslprune.api import compute, uses_cuda
from sslprune.control.local import run_local

from conftest import tiny_config


def test_level_0_random_starts_are_one_stage_per_seed(tmp_path):
    cfg = tiny_config(tmp_path / "s", seeds=[0, 1])
    cfg.retrain.schemes = ["winning_ticket", "random_reinit", "random", "random_adjusted"]
    shared = [s for s in stages(cfg) if isinstance(s, Retrain) and s.dense]
    assert [s.seed for s in shared] == [0, 1] and all(s.parents() == [] for s in shared)
    names = [(s.signal, s.scheme) for s in measurements(cfg) if isinstance(s, Retrain) and s.level == 0 and s.seed == 0]
    assert len(names) == 2 * 4  # every name is still reported
    aliases = {s.key() for s in measurements(cfg) if isinstance(s, Retrain) and s.dense and s.seed == 0}
    assert aliases == {shared[0].key()}  # 2 signals x 3 starts, one directory
    assert "/dense/" in shared[0].key() and "/imp/" not in shared[0].key()
    # A pruned level's random re-init and adjusted random starts differ by the mask (the signal's own,
    # the count of the signal's own avoiding its dense network's zeros); its random start does not.
    level1 = {s.key() for s in measurements(cfg) if isinstance(s, Retrain) and s.level == 1 and s.seed == 0
              and s.scheme != "winning_ticket"}
    assert len(level1) == 2 * 2 + 1
    # 2 seeds x (2 signals x (3 levels x (IMP + winning ticket) + 2 levels x 2 own random starts)
    # + 1 dense + 2 levels x 1 shared random) + the RotNet probes (3 levels x 2 seeds) and their
    # random-features reference (1 per seed): 54, where one random stage per signal made 58.
    assert len(stages(cfg)) == 2 * (2 * (3 * 2 + 2 * 2) + 1 + 2) + 6 + 2 == 54


def _randoms(cfg) -> list:
    return [s for s in stages(cfg) if isinstance(s, Retrain) and s.scheme == "random" and s.level > 0]


def test_a_pruned_levels_random_start_is_one_stage_per_seed_and_level_for_every_signal(tmp_path):
    cfg = tiny_config(tmp_path / "s", seeds=[0, 1, 2])
    cfg.signals["exemplar"] = replace(cfg.signals["rotnet"], task=replace(cfg.signals["rotnet"].task, name="exemplar"))
    cfg.prune = replace(cfg.prune, levels=4)
    shared = _randoms(cfg)
    # 3 seeds x 4 pruned levels, not x 3 signals: 12 random stages where there were 36.
    assert [(s.seed, s.level) for s in shared] == [(seed, lv) for seed in (0, 1, 2) for lv in (1, 2, 3, 4)]
    assert all(s.parents() == [] and "/random/" in s.key() and "/imp/" not in s.key() for s in shared)
    named = [s for s in measurements(cfg) if isinstance(s, Retrain) and s.scheme == "random" and s.level > 0]
    assert len(named) == 3 * 4 * 3 and {s.key() for s in named} == {s.key() for s in shared}
    assert {s.label for s in shared if s.seed == 0 and s.level == 2} == {"retrain random mask seed=0 level=2"}
    # Its name depends on the seed, the level and what the count depends on, never on a chain's task,
    # optimiser or rewind point; the stages of other kinds keep theirs.
    s = Retrain(cfg, "labels", 1, 3, "random")
    assert s.key() == f"{tmp_path / 's'}/random/{s.key().split('/random/')[1].split('/')[0]}/seed_1/level_3/" \
                      f"{Path(s.key()).name}"
    other = tiny_config(tmp_path / "s", seeds=[0, 1, 2])
    other.signals["labels"].optim = replace(other.signals["labels"].optim, lr=0.5)
    other.prune = replace(other.prune, rewind="7it")
    assert Retrain(other, "labels", 1, 3, "random").key() == s.key()
    assert Retrain(other, "labels", 1, 3, "random_reinit").key() != Retrain(cfg, "labels", 1, 3, "random_reinit").key()
    for changed in (replace(cfg.prune, rate=0.3), replace(cfg.prune, ignore=["backbone.stem"]),
                    replace(cfg.prune, scope="stage1")):
        assert Retrain(tiny_config(tmp_path / "s", prune=changed), "labels", 1, 3, "random").key() != s.key()


def test_each_scope_of_a_layerwise_sweep_has_its_own_random_stage(tmp_path):
    cfg = tiny_config(tmp_path / "s")
    cfg.prune = replace(cfg.prune, scopes=["stage1", "all"])
    from sslprune.core.sweep import expand

    cfg = expand(cfg)
    shared = _randoms(cfg)
    assert sorted(s.label for s in shared) == [
        "retrain random mask seed=0 level=1", "retrain random mask seed=0 level=2",
        "retrain random mask up to stage1 seed=0 level=1", "retrain random mask up to stage1 seed=0 level=2"]
    # labels@stage1 and rotnet@stage1 share one; labels@all and rotnet@all the other.
    by = {n: Retrain(cfg, n, 0, 2, "random").key() for n in cfg.signals}
    assert by["labels@stage1"] == by["rotnet@stage1"] != by["labels@all"] == by["rotnet@all"]


def _fake(stage, accuracy: float, remaining: float) -> None:
    """A finished stage's result.json (no outputs): what the report and the findings read."""
    Path(stage.key()).mkdir(parents=True, exist_ok=True)
    files.write_json({"accuracy": accuracy, "remaining": remaining, "kind": stage.kind, "outputs": {}},
                     Path(stage.key()) / files.DONE)


def test_every_signals_random_row_is_the_shared_stage_and_findings_pair_it_by_seed(tmp_path):
    cfg = tiny_config(tmp_path / "s", seeds=[0, 1, 2])
    cfg.signals["exemplar"] = replace(cfg.signals["rotnet"], task=replace(cfg.signals["rotnet"].task, name="exemplar"))
    cfg.prune = replace(cfg.prune, levels=10)
    cfg.probe = replace(cfg.probe, signals=[])
    # Accuracies as exact binary fractions, so every sum below is exact.
    ticket = {"labels": 0.75, "rotnet": 0.5, "exemplar": 0.625}
    for s in stages(cfg):
        left = 0.8 ** s.level
        if isinstance(s, Retrain) and s.scheme == "random" and s.level > 0:
            _fake(s, 0.125 * (s.seed + 1) / 4, left)  # the shared random network: one value per seed
        elif isinstance(s, Retrain):
            _fake(s, ticket[s.signal] + (0 if s.scheme == "winning_ticket" else -0.25) + s.seed / 64, left)
        else:
            _fake(s, 0.5, left)
    rows = report.rows(cfg)
    random_rows = {(r["signal"], r["seed"], r["level"]): r["accuracy"] for r in rows
                   if r["evaluation"] == "random" and r["level"] > 0}
    assert len(random_rows) == 3 * 3 * 10  # each signal's random row, at every level and seed
    assert all(acc == 0.125 * (seed + 1) / 4 for (_, seed, _), acc in random_rows.items())
    summary = [r for r in report.summarize(rows) if r["evaluation"] == "random" and r["level"] == 10]
    assert [(r["signal"], r["count"]) for r in summary] == [("exemplar", 3), ("labels", 3), ("rotnet", 3)]
    assert len({(r["mean"], r["stderr"]) for r in summary}) == 1
    found, _ = findings.compute(cfg, rows)
    above = {f["subject"]: f for f in found if f["claim"] == "ssl_ticket_above_random"}
    assert sorted(above) == ["exemplar", "rotnet"]
    for name, f in above.items():  # ticket minus the same random network, seed by seed
        level = f["levels"][-1]
        assert level["seeds"] == [0, 1, 2]
        assert level["diffs"] == [ticket[name] + seed / 64 - 0.125 * (seed + 1) / 4 for seed in (0, 1, 2)]
    reinit = {f["subject"]: f["levels"][0]["diffs"] for f in found if f["claim"] == "reinit_above_random"}
    assert reinit["labels"] == [0.5 + seed / 64 - 0.125 * (seed + 1) / 4 for seed in (0, 1, 2)]


@pytest.mark.slow
def test_the_shared_stage_is_trained_once_and_reported_under_every_name(tmp_path):
    cfg = tiny_config(tmp_path / "s")
    cfg.prune.levels = 0
    cfg.probe.signals = []
    cfg.run.workers = 2  # both chains reach the shared stage at once: one trains it, one waits
    ran = run_local(cfg, compute, uses_cuda)
    # IMP and winning ticket of each signal, one dense re-training. The count is the stages done
    # now and not before: counted per chain, the one that waited for the shared stage counted it
    # again (CI: "22 stages ... to run", then "ran 23 stages").
    assert ran == 2 + 2 + 1
    rows = [r for r in report.rows(cfg) if r["evaluation"] in ("random", "random_reinit")]
    assert {(r["signal"], r["evaluation"]) for r in rows} == {(s, e) for s in ("labels", "rotnet")
                                                               for e in ("random", "random_reinit")}
    assert len({r["accuracy"] for r in rows}) == 1 and all(r["remaining"] == 1.0 for r in rows)
    assert len(list((tmp_path / "s").rglob("result.json"))) == 5


@pytest.mark.slow
def test_the_shared_random_stage_keeps_imps_count_and_is_every_signals_random_row(tmp_path):
    import torch

    cfg = tiny_config(tmp_path / "s")
    cfg.prune = replace(cfg.prune, levels=1)
    cfg.probe = replace(cfg.probe, signals=[])
    cfg.retrain = replace(cfg.retrain, schemes=["random"], levels=[1])
    assert run_local(cfg, compute, uses_cuda) == 2 * 2 + 1  # IMP levels 0 and 1 of 2 signals, one random
    (shared,) = _randoms(cfg)
    mask = torch.load(Path(shared.key()) / "mask.pt", weights_only=True)
    for name in cfg.signals:
        imp = torch.load(ImpLevel(cfg, name, 0, 1).dir / "mask.pt", weights_only=True)
        assert list(mask) == list(imp) and sum(int(m.sum()) for m in mask.values()) == \
            sum(int(m.sum()) for m in imp.values())
    result = shared.result()
    rows = [r for r in report.rows(cfg) if r["evaluation"] == "random"]
    assert [(r["signal"], r["accuracy"], r["remaining"]) for r in rows] == [
        ("labels", result["accuracy"], result["remaining"]), ("rotnet", result["accuracy"], result["remaining"])]


def test_findings_say_the_random_baseline_is_shared_where_the_experiment_retrains_one(tmp_path):
    cfg = tiny_config(tmp_path / "s")
    note = "Random pruning (`random`) is one network per seed and level, shared by every signal"
    assert note in findings.markdown(cfg, [], [])
    cfg.retrain = replace(cfg.retrain, schemes=["winning_ticket", "random_reinit"])
    assert note not in findings.markdown(cfg, [], [])


def test_a_shared_stage_records_the_same_whichever_signals_chain_computes_it(tmp_path):
    """Its result.json said the task of the chain that reached it first (labels in the experiment's
    order, Exemplar once local runs started the longest chains first): the Figure-6 twin's dense
    stages differed in `signal_task` alone between two runs of the same code on the same machine."""
    from conftest import numbers

    results, files_ = [], []
    for signal in ("labels", "rotnet"):
        cfg = tiny_config(tmp_path / signal)
        stage = Retrain(cfg, signal, 0, 0, "random_reinit")
        assert stage.shared and stage.dense
        results.append(numbers(compute(stage)))
        files_.append((stage.dir / "model.pt").read_bytes())
    assert results[0]["signal_task"] is None
    assert results[0] == results[1] and files_[0] == files_[1]
