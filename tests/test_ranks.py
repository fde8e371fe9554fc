"""The rank count does not change what a stage computes: for every task and every model family, a
few steps on 2 gloo ranks give the weights and metrics of 1 rank.

What used to differ: Exemplar mined hardest negatives inside each rank's slice, S4L (and VOC's
multi-label loss) divided by the local labelled count, evaluation views came from manual_seed(0) on
every rank and gathered test rows came rank after rank, NPID's negatives came from each rank's
global RNG, and the CPU global batch norm left BatchNorm1d (AlexNet's fc6/fc7) with per-rank
statistics.

Tolerance. The arithmetic is checked in float64 (the whole pipeline follows torch's default
dtype), where 2 ranks sum gradients and batch statistics in another order than 1 rank and agree to
rounding: after 2 SGD steps every weight tensor within REL of its largest magnitude and every test
metric exactly. In float32 the same runs agree to about 1e-7 at first, then drift apart like any two
SGD runs from slightly different numbers; narrow deep networks at initialisation (ResNet-50 at
width 8 on 8 px digits) amplify float32 rounding to O(1) differences within two steps, which is why
the float32 check uses the CIFAR ResNet (FLOAT32_REL after 4 steps)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sslprune.compute import checkpoint
from sslprune.compute.runtime import Runtime
from sslprune.control.config import DataConfig, ModelConfig, RunConfig, SignalConfig, TaskConfig
from sslprune.control.stage import ImpLevel

from conftest import tiny_config, tiny_optim

REL = 1e-5  # float64, 2 steps (measured: at most 4e-6, Exemplar's hardest negatives on ResNet-50)
FLOAT32_REL = 1e-5  # float32, CIFAR ResNet, 4 steps (measured: at most 1.7e-6, a batch-norm bias)
TASKS = {
    "labels": TaskConfig("labels"),
    "rotnet": TaskConfig("rotnet"),
    "exemplar": TaskConfig("exemplar", embedding=8),
    "npid": TaskConfig("npid", embedding=8, negatives=64),
    "s4l": TaskConfig("s4l", label_fraction=0.3),  # the labelled images fall unevenly on the ranks
}
MODELS = {"resnet_small": 4, "resnet50": 8, "alexnet": 8, "vgg19": 8}  # every family; alexnet has BatchNorm1d
CASES = [(t, m, "float64") for t in TASKS for m in MODELS] + [(t, "resnet_small", "float32") for t in TASKS]


def _cfg(root: Path, task: str, model: str, dtype: str):
    cfg = tiny_config(root / f"{task}-{model}-{dtype}", run=RunConfig(quiet=True, threads=1, workers=1))
    steps = 2 if dtype == "float64" else 4
    cfg.data = DataConfig("digits", train_limit=32 * steps, test_limit=96)
    cfg.model = ModelConfig(model, MODELS[model])
    cfg.signals = {task: SignalConfig(TASKS[task], tiny_optim(epochs=1, batch_size=32, lr=0.01))}
    cfg.prune = replace(cfg.prune, levels=0, rewind="1it")
    return cfg


def _run(root: Path, rt: Runtime) -> None:
    for task, model, dtype in CASES:
        torch.set_default_dtype(getattr(torch, dtype))
        try:
            ImpLevel(_cfg(root, task, model, dtype), task, 0, 0).run(rt)
        finally:
            torch.set_default_dtype(torch.float32)


def _ranks(rank: int, world: int, root: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world)
    torch.set_num_threads(1)
    group = torch.distributed.new_group(backend="gloo")
    _run(Path(root) / "two", Runtime(torch.device("cpu"), rank, world, group, group))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(root / "one", Runtime(torch.device("cpu")))
    finally:
        torch.set_num_threads(before)
    torch.multiprocessing.start_processes(_ranks, args=(2, str(root)), nprocs=2, start_method="spawn")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("task,model,dtype", CASES)
def test_two_ranks_train_as_one(runs, task, model, dtype):
    one, two = (ImpLevel(_cfg(runs / w, task, model, dtype), task, 0, 0) for w in ("one", "two"))
    a, b = checkpoint.load(one.dir / "model.pt"), checkpoint.load(two.dir / "model.pt")
    assert a.keys() == b.keys()
    assert all(v.dtype == getattr(torch, dtype) for v in a.values() if v.is_floating_point())
    tolerance = REL if dtype == "float64" else FLOAT32_REL
    for k in a:
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k  # num_batches_tracked: the same number of global steps
            continue
        scale = float(a[k].abs().max()) or 1.0
        worst = float((a[k] - b[k]).abs().max()) / scale
        assert worst <= tolerance, f"{task}/{model}/{dtype}: {k} differs by {worst:.3g} of its largest value"
    ra, rb = one.result(), two.result()
    assert (ra["world"], rb["world"]) == (1, 2)
    assert ra["steps"] == rb["steps"] and ra["count"] == rb["count"] == (4 * 96 if task == "rotnet" else 96)
    if dtype == "float64":
        assert ra["accuracy"] == rb["accuracy"]
    else:
        assert abs(ra["accuracy"] - rb["accuracy"]) <= 1 / ra["count"]  # one test image at most
