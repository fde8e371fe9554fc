"""At level 0 the random and random re-init starts (and the adjusted random one) are the same
training for every signal of a seed: fresh weights from the seed, a mask of ones, the same batches.
It is computed once and reported under every (signal, start) name."""
from __future__ import annotations

import pytest

from sslprune.core.stage import Retrain
from sslprune.control import report
from sslprune.control.experiment import measurements, stages
from sslprune.api import compute, uses_cuda
from sslprune.control.local import run_local

from conftest import tiny_config


def test_level_0_random_starts_are_one_stage_per_seed(tmp_path):
    cfg = tiny_config(tmp_path / "s", seeds=[0, 1])
    cfg.retrain.schemes = ["winning_ticket", "random_reinit", "random", "random_adjusted"]
    shared = [s for s in stages(cfg) if isinstance(s, Retrain) and s.shared]
    assert [s.seed for s in shared] == [0, 1] and all(s.parents() == [] for s in shared)
    names = [(s.signal, s.scheme) for s in measurements(cfg) if isinstance(s, Retrain) and s.level == 0 and s.seed == 0]
    assert len(names) == 2 * 4  # every name is still reported
    aliases = {s.key() for s in measurements(cfg) if isinstance(s, Retrain) and s.shared and s.seed == 0}
    assert aliases == {shared[0].key()}  # 2 signals x 3 starts, one directory
    assert "/dense/" in shared[0].key() and "/imp/" not in shared[0].key()
    # Only level 0: a pruned level's random starts differ by the mask.
    level1 = {s.key() for s in measurements(cfg) if isinstance(s, Retrain) and s.level == 1 and s.seed == 0
              and s.scheme != "winning_ticket"}
    assert len(level1) == 2 * 3
    # 2 seeds x (2 signals x (3 levels x (IMP + winning ticket) + 2 levels x 3 random starts) + 1 dense)
    # + the RotNet probes (3 levels x 2 seeds) and their random-features reference (1 per seed)
    assert len(stages(cfg)) == 2 * (2 * (3 * 2 + 2 * 3) + 1) + 6 + 2


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
