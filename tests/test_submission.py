"""Planning and validation of SLURM submission, without a cluster (the real thing is in test_slurm.py)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from sslprune.core.errors import ConfigError
from sslprune.core.schema import LauncherConfig, SingleConfig
from sslprune.core.validation import validate, validate_launcher
from sslprune.control import slurm, submission
from sslprune.control.experiment import stages

from conftest import tiny_config


def test_dependency_uses_aftercorr_only_task_for_task():
    """(the array's dependency, each task's own): a task never waits for another task's parent."""
    dep = submission._dependency
    assert dep([[], []]) == (None, None)
    assert dep([["7_0"], ["7_1"]]) == ("aftercorr:7", None)  # also the first tasks of a larger array
    assert dep([["9"]]) == ("afterok:9", None)
    assert dep([["7_0", "9"], ["7_0", "9"]]) == ("afterok:7_0:9", None)  # the same parents for every task
    # Not task for task (another order, a gap, a done parent, several arrays): each task its own parent.
    # Before, the array waited for all of them (`afterok:7_1:7_2`, `afterok:7`), and SLURM cancelled every
    # task when one parent failed.
    assert dep([["7_1"], ["7_2"]]) == (None, ["afterok:7_1", "afterok:7_2"])
    assert dep([["7_2"], ["7_1"], ["7_0"]]) == (None, ["afterok:7_2", "afterok:7_1", "afterok:7_0"])
    assert dep([[], ["7_0"]]) == (None, [None, "afterok:7_0"])
    assert dep([["7_0"], [], ["8"]]) == (None, ["afterok:7_0", None, "afterok:8"])


def test_plan_is_one_array_per_level_and_kind_over_signals_and_seeds(tmp_path):
    cfg = tiny_config(tmp_path, seeds=[0, 1])
    arrays = [[task[0] for task in a] for a in submission.plan(cfg, stages(cfg))]  # unpacked: a task is a stage
    seen = set()
    order = submission.signal_order(cfg, stages(cfg))
    assert list(order) == ["rotnet", "labels"]  # RotNet is also probed: its tasks come first everywhere
    for a in arrays:
        assert len({(s.kind, s.level, submission._variant(s)) for s in a}) == 1
        pairs = [(s.signal, s.seed) for s in a]
        assert pairs == sorted(pairs, key=lambda p: (order[p[0]], p[1]))  # the order of every array
        for s in a:
            assert all(p.key() in seen for p in s.parents())
        seen |= {s.key() for s in a}
    assert len(seen) == len(stages(cfg))
    # 3 levels x (IMP + 3 re-training starts + the RotNet probe) for 2 signals x 2 seeds, but level 0's
    # random and random re-init are one dense training per seed: 14 arrays; + the RotNet probes of the
    # initial weights (their own array: they wait for nothing).
    assert len(arrays) == 3 * 5 - 1 + 1
    refs = [a for a in arrays if getattr(a[0], "at_init", False)]
    assert len(refs) == 1 and all(s.at_init for s in refs[0]) and submission.task_parents([refs[0][0]]) == []
    imp0 = next(a for a in arrays if a[0].kind == "imp" and a[0].level == 0)
    probe0 = next(a for a in arrays if a[0].kind == "probe" and a[0].level == 0)
    assert [(s.signal, s.seed) for s in probe0] == [(s.signal, s.seed) for s in imp0][:len(probe0)]


def test_packed_plan_is_one_task_per_chain_and_level_with_its_evaluations(tmp_path):
    cfg = tiny_config(tmp_path, seeds=[0, 1])
    cfg.launcher = replace(cfg.launcher, pack=True)
    arrays = submission.plan(cfg, stages(cfg))
    # Per level: the IMP array and one array of packs; the dense re-trainings; the shared random
    # re-trainings of levels 1 and 2 (one array each: like the dense stage, they wait for nothing).
    assert len(arrays) == 3 * 2 + 1 + 2
    for a in arrays:
        if a[0][0].kind == "imp" or getattr(a[0][0], "shared", False):
            assert all(len(task) == 1 for task in a)
            continue
        level = a[0][0].level
        assert [(t[0].signal, t[0].seed) for t in a] == [("rotnet", 0), ("rotnet", 1), ("labels", 0), ("labels", 1)]
        for task in a:
            labels = [s.label for s in task]
            assert len({(s.signal, s.seed, s.level) for s in task}) == 1 and task[0].level == level
            # Three re-training starts, and RotNet's probe; at level 0 the two random starts are the dense
            # stage, at a pruned level the random start is the shared one, and RotNet's pack also holds the
            # probe of its initial weights.
            want = (4 if task[0].signal == "rotnet" else 3) - (2 if level == 0 else 1) \
                + (1 if level == 0 and task[0].signal == "rotnet" else 0)
            assert len(task) == want, labels


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
    ("single", SingleConfig(gpus_per_node=-1), "launcher.single.gpus_per_node"),
    ("single", SingleConfig(cpus_per_task=0), "launcher.single.cpus_per_task"),
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


def test_cuda_with_gpu_less_single_task_jobs_is_refused(tmp_path):
    """run.device=cuda and the default launcher.single.gpus_per_node=0: every SVM and standardised-probe
    job failed with NoDevice on the cluster. Refused up front; the combinations that work pass."""
    cfg = tiny_config(tmp_path, seeds=[0])
    cfg.launcher = replace(cfg.launcher, name="slurm", gpus_per_node=1)
    cfg.run = replace(cfg.run, device="cuda")
    validate(cfg)  # no one-task stage: the probes are on augmented features (DDP jobs with the GPUs)
    for single in ({"svm": replace(cfg.svm, signals=["rotnet"], datasets=[cfg.data])},
                   {"probe": replace(cfg.probe, features="standardised")}):
        bad = replace(cfg, **single)
        with pytest.raises(ConfigError) as e:
            validate(bad)
        assert str(e.value) == (
            "run.device=cuda with launcher.single.gpus_per_node=0: the SVM and standardised-probe jobs (one task, "
            "launcher.single) would have no GPU; set launcher.single.gpus_per_node=1 or run.device=auto")
        validate(replace(bad, launcher=replace(bad.launcher, single=SingleConfig(gpus_per_node=1))))
        validate(replace(bad, run=replace(bad.run, device="auto")))
        validate(replace(bad, launcher=replace(bad.launcher, name="local")))


def test_launcher_is_not_identity(tmp_path):
    a, b = tiny_config(tmp_path), tiny_config(tmp_path)
    b.launcher = LauncherConfig(name="slurm", partition="learnfair", gpus_per_node=8, tasks_per_node=8)
    assert [s.dir for s in stages(a)] == [s.dir for s in stages(b)]


# slurm: submitit.SlurmExecutor, which this builds, refuses to exist without `srun` on PATH; in the
# default tier it failed the README's test command on a machine with no SLURM installed.
@pytest.mark.slurm
def test_runs_once_stages_get_one_task_and_the_single_preset_and_are_never_packed(tmp_path):
    """SVMs and standardised-feature probes: one task on one node with launcher.single's GPUs, even in
    a sweep of 8 GPUs and 8 tasks per node on 2 nodes; with launcher.pack they keep their own arrays."""
    from sslprune.core.stage import Probe, Svm

    cfg = tiny_config(tmp_path, seeds=[0])
    cfg.launcher = replace(cfg.launcher, name="slurm", nodes=2, tasks_per_node=8, gpus_per_node=8, cpus_per_task=10)
    ex = submission._executor(cfg, tmp_path, None, "x", None, single=True)
    assert (ex.parameters["nodes"], ex.parameters["ntasks_per_node"], ex.parameters["cpus_per_task"]) == (1, 1, 10)
    assert "gpus_per_node" not in ex.parameters
    cfg.launcher = replace(cfg.launcher, single=SingleConfig(gpus_per_node=1, cpus_per_task=4))
    ex = submission._executor(cfg, tmp_path, None, "x", None, single=True)
    assert (ex.parameters["ntasks_per_node"], ex.parameters["gpus_per_node"], ex.parameters["cpus_per_task"]) == (1, 1, 4)
    ex = submission._executor(cfg, tmp_path, None, "x", None)
    assert (ex.parameters["nodes"], ex.parameters["ntasks_per_node"], ex.parameters["gpus_per_node"]) == (2, 8, 8)
    assert "hold" not in ex.parameters.get("additional_parameters", {})

    cfg.svm = replace(cfg.svm, signals=["rotnet"], datasets=[cfg.data])
    cfg.probe = replace(cfg.probe, features="standardised")
    cfg.launcher = replace(cfg.launcher, pack=True)
    all_stages = stages(cfg)
    once = [s for s in all_stages if submission.runs_once(s)]
    assert {type(s) for s in once} == {Svm, Probe}
    assert not any(submission.runs_once(s) for s in all_stages if not isinstance(s, (Svm, Probe)))
    for array in submission.plan(cfg, all_stages):
        tasks = [s for task in array for s in task]
        if any(submission.runs_once(s) for s in tasks):
            assert all(submission.runs_once(s) for s in tasks) and all(len(task) == 1 for task in array)
    cfg.probe = replace(cfg.probe, features="augmented")
    assert not any(isinstance(s, Probe) and submission.runs_once(s) for s in stages(cfg))
