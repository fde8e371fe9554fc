"""Planning and validation of SLURM submission, without a cluster (the real thing is in test_slurm.py)."""
from __future__ import annotations

import pytest

from sslprune.control import slurm, submission
from sslprune.control.config import ConfigError, LauncherConfig, validate, validate_launcher
from sslprune.control.experiment import stages

from conftest import tiny_config


def test_dependency_uses_aftercorr_only_for_one_to_one_arrays():
    dep = submission._dependency
    assert dep([None, None], {}) == [(None, [0, 1])]
    assert dep(["7_0", "7_1"], {"7": 2}) == [("aftercorr:7", [0, 1])]
    # Same array but not task-for-task (a subset, or another order): one afterok per parent job.
    assert dep(["7_1", "7_2"], {"7": 3}) == [("afterok:7_1", [0]), ("afterok:7_2", [1])]
    assert dep(["7_0", "7_1"], {"7": 3}) == [("afterok:7_0", [0]), ("afterok:7_1", [1])]
    assert dep(["7_0", None, "8"], {"7": 1}) == [("afterok:7_0", [0]), (None, [1]), ("afterok:8", [2])]
    assert dep(["9"], {}) == [("afterok:9", [0])]


def test_plan_groups_by_kind_signal_level_and_orders_parents_first(tmp_path):
    cfg = tiny_config(tmp_path, seeds=[0, 1])
    arrays = submission.plan(cfg, stages(cfg))
    seen = set()
    for a in arrays:
        assert len({(s.kind, s.signal, s.level, submission._variant(s)) for s in a}) == 1
        assert [s.seed for s in a] == [0, 1]  # tasks in seed order, as in their parent's array
        for s in a:
            assert all(p.key() in seen for p in s.parents())
        seen |= {s.key() for s in a}
    assert len(seen) == len(stages(cfg))


def test_array_ids_expand():
    assert slurm._expand("12_[3-5,7%2]") == ["12_3", "12_4", "12_5", "12_7"]
    assert slurm._expand("12_3") == ["12_3"] and slurm._expand("12") == ["12"]


@pytest.mark.parametrize("key,value,match", [
    ("name", "pbs", "launcher.name"),
    ("time_min", 0, "launcher.time_min"),
    ("cpus_per_task", -1, "launcher.cpus_per_task"),
    ("max_retries", -1, "launcher.max_retries"),
    ("mem_gb", 0, "launcher.mem_gb"),
    ("signal_delay_s", 600, "launcher.signal_delay_s"),
    ("partition", "", "launcher.partition"),
    ("additional_parameters", {"dependency": "afterok:1"}, "launcher.additional_parameters.dependency"),
])
def test_launcher_validation_names_the_key(tmp_path, key, value, match):
    L = LauncherConfig(name="slurm", time_min=5)
    setattr(L, key, value)
    with pytest.raises(ConfigError, match=match):
        validate_launcher("launcher", L)
    cfg = tiny_config(tmp_path)
    cfg.launcher = L
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_launcher_is_not_identity(tmp_path):
    a, b = tiny_config(tmp_path), tiny_config(tmp_path)
    b.launcher = LauncherConfig(name="slurm", partition="learnfair", gpus_per_node=8, tasks_per_node=8)
    assert [s.dir for s in stages(a)] == [s.dir for s in stages(b)]
