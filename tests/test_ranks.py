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

import contextlib
import datetime
import itertools
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from sslprune.core import store as files
from sslprune.core.schema import DataConfig, ModelConfig, RunConfig, SignalConfig, TaskConfig
from sslprune.core.stage import ImpLevel
from sslprune.control.job import StageJob

from conftest import tiny_config, tiny_optim
from sslprune.api import compute

REL = 1e-5  # float64, 2 steps (measured: at most 4e-6, Exemplar's hardest negatives on ResNet-50)
FLOAT32_REL = 1e-5  # float32, CIFAR ResNet, 4 steps (measured: at most 1.7e-6, a batch-norm bias; BYOL 7.2e-6, MoCo v2 at its temperature 0.2 2.6e-6, at 0.07 2.7e-5)
TASKS = {
    "labels": TaskConfig("labels"),
    "rotnet": TaskConfig("rotnet"),
    "exemplar": TaskConfig("exemplar", embedding=8),
    "npid": TaskConfig("npid", embedding=8, negatives=64),
    "s4l": TaskConfig("s4l", label_fraction=0.3),  # the labelled images fall unevenly on the ranks
    # issue 24: negatives from the global batch, a queue of gathered keys, a target and a predictor
    # with global batch norm, task-owned modules whose gradients are averaged over ranks
    "simclr": TaskConfig("simclr", hidden=16, embedding=8, temperature=0.1),  # SimCLR's
    "mocov2": TaskConfig("mocov2", hidden=16, embedding=8, queue=48, temperature=0.2),  # MoCo v2's
    "byol": TaskConfig("byol", hidden=16, embedding=8),
}
MODELS = {"resnet_small": 4, "resnet50": 8, "alexnet": 8, "vgg19": 8}  # every family; alexnet has BatchNorm1d
CASES = [(t, m, "float64") for t in TASKS for m in MODELS] + [(t, "resnet_small", "float32") for t in TASKS]
# One case per task family in the default tier (its module fixture trains these 5 only); the rest
# of the matrix (every model family, float32) is slow.
FAMILY = [(t, "resnet_small", "float64") for t in TASKS]
MATRIX = [c for c in CASES if c not in FAMILY]


def _cfg(root: Path, task: str, model: str, dtype: str):
    cfg = tiny_config(root / f"{task}-{model}-{dtype}", run=RunConfig(quiet=True, threads=1, workers=1))
    steps = 2 if dtype == "float64" else 4
    cfg.data = DataConfig("digits", train_limit=32 * steps, test_limit=96)
    cfg.model = ModelConfig(model, MODELS[model])
    cfg.signals = {task: SignalConfig(TASKS[task], tiny_optim(epochs=1, batch_size=32, lr=0.01))}
    cfg.prune = replace(cfg.prune, levels=0, rewind="1it")
    return cfg


def _run(root: Path, rt: Runtime, cases: list) -> None:
    from sslprune.compute import runner

    import torch

    for task, model, dtype in cases:
        torch.set_default_dtype(getattr(torch, dtype))
        try:
            runner.run(ImpLevel(_cfg(root, task, model, dtype), task, 0, 0), rt)
        finally:
            torch.set_default_dtype(torch.float32)


def _ranks(rank: int, world: int, root: str, cases: list) -> None:
    import torch
    from sslprune.compute.runtime import Runtime

    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world)
    torch.set_num_threads(1)
    _run(Path(root) / "two", Runtime(torch.device("cpu"), rank, world), cases)  # one group for all, as from_environment
    torch.distributed.destroy_process_group()


def _runs(root: Path, cases: list) -> Path:
    import torch
    from sslprune.compute.runtime import Runtime

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(root / "one", Runtime(torch.device("cpu")), cases)
    finally:
        torch.set_num_threads(before)
    torch.multiprocessing.start_processes(_ranks, args=(2, str(root), cases), nprocs=2, start_method="spawn")
    return root


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    return _runs(tmp_path_factory.mktemp("ranks"), FAMILY)


@pytest.fixture(scope="module")
def matrix_runs(tmp_path_factory):
    return _runs(tmp_path_factory.mktemp("ranks"), MATRIX)


# The family cases share one module fixture, requested inside the test (so conftest's SHARED_FIXTURES,
# which reads the fixture names, cannot see it), and so do the matrix's (every case trained at once):
# each set in one xdist_group, on one worker, or each worker would train all of its cases.
@pytest.mark.parametrize("task,model,dtype", [pytest.param(*c, marks=pytest.mark.xdist_group("ranks_family"))
                                              if c in FAMILY else pytest.param(
    *c, marks=[pytest.mark.slow, pytest.mark.xdist_group("ranks_matrix")]) for c in CASES])
def test_two_ranks_train_as_one(request, task, model, dtype):
    import torch
    from sslprune.compute import checkpoint

    runs = request.getfixturevalue("family_runs" if (task, model, dtype) in FAMILY else "matrix_runs")
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


# ---------------------------------------------------------------- every branch taken by all ranks or none


def _small(store: Path, **run):
    """Labels on 128 digits, 2 ranks of 16 images: 4 steps, a finiteness check every 2."""
    cfg = tiny_config(store, run=RunConfig(quiet=True, threads=1, workers=1, log_every=2, **run))
    cfg.data = DataConfig("digits", train_limit=128, test_limit=64)
    cfg.signals = {s: SignalConfig(TaskConfig(s), tiny_optim(epochs=1, batch_size=32)) for s in ("labels", "rotnet")}
    cfg.prune = replace(cfg.prune, levels=0, rewind="1it")
    return cfg


def _join(rank: int, root: str, timeout_s: float = 60) -> None:
    # A short timeout: a rank left alone in a collective fails the test in a minute, not in 30.
    import torch

    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=timeout_s))
    torch.set_num_threads(1)


def _outcome(root: str, rank: int, name: str, work) -> None:
    t0 = time.monotonic()
    try:
        out = work()
    except Exception as e:  # what each rank ended with, for the test to compare
        out = f"{type(e).__name__}: {e}"
    (Path(root) / f"{name}-{rank}.json").write_text(json.dumps([out, time.monotonic() - t0]))


def _outcomes(root: Path, name: str) -> list:
    return [json.loads((root / f"{name}-{rank}.json").read_text()) for rank in (0, 1)]


def _nan_on_rank_1(rank: int, root: str) -> None:
    from sslprune.compute import runner

    import torch
    from sslprune.compute import task as tasks
    from sslprune.compute.runtime import Runtime

    _join(rank, root)
    if rank == 1:  # the loss of this rank's second step is NaN; rank 0's losses stay finite
        calls, loss = itertools.count(), tasks.Labels.loss
        tasks.Labels.loss = lambda self, x, t: loss(self, x, t) * (float("nan") if next(calls) == 1 else 1.0)
    stage = ImpLevel(_small(Path(root) / "store"), "labels", 0, 0)
    _outcome(root, rank, "nan", lambda: runner.run(stage, Runtime(torch.device("cpu"), rank, 2))["accuracy"])


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_once(tmp_path):
    """check_finite read each rank's own first non-finite step: rank 1 raised NonFiniteLoss while
    rank 0 went on into the next step's collectives and failed there (`Connection reset by peer`,
    or after the 30-minute timeout on a cluster). The ranks now agree on it in one all-reduce."""
    import torch

    torch.multiprocessing.start_processes(_nan_on_rank_1, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    (zero, t0), (one, t1) = _outcomes(tmp_path, "nan")
    assert zero == one, (zero, one)
    assert zero.startswith("NonFiniteLoss: non-finite loss at step 1 (epoch 0) while training towards step 4; "
                           "stopped at step 2"), zero
    assert max(t0, t1) < 50, (t0, t1)  # well inside the 60 s a rank left alone would wait


def _clocks(rank: int, root: str) -> None:
    from sslprune.compute import runner

    import torch
    from sslprune.compute import checkpoint, trainer
    from sslprune.compute.runtime import Runtime

    _join(rank, root)
    saved, save = [], checkpoint.save_training
    checkpoint.save_training = lambda state, path: (saved.append(state["step"]), save(state, path))[1]
    for ahead in (0, 1):  # whose clock says a checkpoint is due at every step
        saved.clear()
        ticks = itertools.count()  # each reading an hour later than the one before
        fast = SimpleNamespace(time=time.time, monotonic=lambda: time.monotonic() + 3600 * next(ticks))
        trainer.time = fast if rank == ahead else time
        stage = ImpLevel(_small(Path(root) / f"ahead{ahead}", checkpoint_minutes=1, interrupt_every=1), "labels", 0, 0)
        _outcome(root, rank, f"ahead{ahead}",
                 lambda: [runner.run(stage, Runtime(torch.device("cpu"), rank, 2))["accuracy"], list(saved)])


@pytest.mark.slow
def test_rank_0s_clock_decides_when_a_checkpoint_is_due(tmp_path):
    """The time trigger read each rank's own clock; with the finiteness check now a collective, a
    rank whose clock ran ahead would enter it alone. Rank 0's clock decides for all (it rides on
    the stop agreement): its fast clock checkpoints after every step, rank 1's changes nothing,
    and neither changes a number."""
    import torch
    from sslprune.compute import checkpoint

    torch.multiprocessing.start_processes(_clocks, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    (a0, _), (a1, _) = _outcomes(tmp_path, "ahead0")
    (b0, _), (b1, _) = _outcomes(tmp_path, "ahead1")
    assert isinstance(a0, list) and isinstance(b0, list), (a0, b0)
    assert a0 == [a1[0], [1, 2, 3, 4]] and a1[1] == []  # rank 0 writes: 3 due by time, then the final one
    assert b0 == [b1[0], [4]] and b1[1] == [] and b0[0] == a0[0]
    one, two = (ImpLevel(_small(tmp_path / f"ahead{i}"), "labels", 0, 0) for i in (0, 1))
    a, b = checkpoint.load(one.dir / "model.pt"), checkpoint.load(two.dir / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _done_race(rank: int, root: str) -> None:
    from sslprune.compute import runner
    import torch
    from sslprune.compute.runtime import Runtime

    _join(rank, root)
    root = Path(root)
    if rank == 0:  # say when this rank has read the stage as not done and waits for its lock
        real = files.lock

        @contextlib.contextmanager
        def lock(folder, **kw):
            (root / "rank0-waits").touch()
            with real(folder, **kw):
                yield
        files.lock = lock
    else:  # this rank reads the store after another writer finished the stage
        while not (root / "finished").exists():
            time.sleep(0.05)
    stage = ImpLevel(_small(root / "raced"), "labels", 0, 0)
    _outcome(str(root), rank, "race", lambda: runner.run(stage, Runtime(torch.device("cpu"), rank, 2))["accuracy"])


@pytest.mark.slow
def test_a_stage_finished_by_another_writer_between_two_ranks_reads_is_done_on_both(tmp_path):
    """Each rank read `done` on its own before the ranks' agreement: rank 0 found the stage not done
    and waited for its lock while another writer finished it; rank 1 then found it done and left,
    and rank 0, finding it done under the lock, waited alone in the agreement. Rank 0 now reads
    and broadcasts; both return the other writer's result."""
    from sslprune.compute import runner
    import torch
    from sslprune.compute.runtime import Runtime

    other = ImpLevel(_small(tmp_path / "other"), "labels", 0, 0)
    before = torch.get_num_threads()
    try:
        expected = runner.run(other, Runtime(torch.device("cpu")))["accuracy"]
    finally:
        torch.set_num_threads(before)
    raced = ImpLevel(_small(tmp_path / "raced"), "labels", 0, 0)
    ranks = torch.multiprocessing.start_processes(_done_race, args=(str(tmp_path),), nprocs=2, start_method="spawn",
                                                  join=False)
    with files.lock(raced.dir):  # the other writer
        deadline = time.monotonic() + 300
        while not (tmp_path / "rank0-waits").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for f in other.dir.iterdir():
            if f.is_file() and f.name != files.LOCK:
                shutil.copy2(f, raced.dir / f.name)
        assert raced.done()
        (tmp_path / "finished").touch()
    while not ranks.join():
        pass
    assert [o for o, _ in _outcomes(tmp_path, "race")] == [expected, expected]


WAIT_S = 20  # how long a rank left alone in the broadcast of rank 0's decision waits here (30 min in a job)


def _level(store: Path, level: int) -> ImpLevel:
    cfg = _small(store)
    cfg.prune = replace(cfg.prune, levels=1)
    return ImpLevel(cfg, "labels", 0, level)


def _decisions(rank: int, root: str) -> None:
    from sslprune.compute import runner
    import torch
    from sslprune.compute.runtime import Runtime

    _join(rank, root, WAIT_S)
    root = Path(root)
    # First (the group is still sound): a done stage whose parent was set aside since
    stage = _level(root / "store", 1)
    _outcome(str(root), rank, "done", lambda: runner.run(stage, Runtime(torch.device("cpu"), rank, 2))["accuracy"])
    # Then rank 0 fails before deciding: the stage's `.lock` is a folder
    stage = _level(root / "store", 0)
    _outcome(str(root), rank, "failed", lambda: runner.run(stage, Runtime(torch.device("cpu"), rank, 2))["accuracy"])
    deadline = time.monotonic() + 2 * WAIT_S  # rank 0 leaving first would end a waiting rank 1 sooner
    while rank == 0 and not (root / "failed-1.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def decisions(tmp_path_factory):
    from sslprune.compute import runner

    import torch

    root = tmp_path_factory.mktemp("decisions")
    before = torch.get_num_threads()
    try:
        done = [runner.run(_level(root / "store", level))["accuracy"] for level in (0, 1)]
    finally:
        torch.set_num_threads(before)
    zero = _level(root / "store", 0)
    files.set_aside(zero.dir, "a test", ())  # level 1 stays done: it needs level 0 only to start
    assert not zero.done()
    (zero.dir / files.LOCK).unlink(missing_ok=True)
    (zero.dir / files.LOCK).mkdir()
    torch.multiprocessing.start_processes(_decisions, args=(str(root),), nprocs=2, start_method="spawn")
    return root, done[1]


@pytest.mark.slow
@pytest.mark.xdist_group("ranks_decisions")  # on one worker, which computes `decisions` once
def test_a_failure_of_rank_0_before_it_decides_ends_every_rank_at_once(decisions):
    """Only a missing parent was broadcast: any other error of rank 0 before its decision (a link
    in the store, a `.lock` that is a folder or a FIFO, Ctrl-C while it waits for the lock) left the
    other ranks in the broadcast until the process group's timeout, 30 minutes in a job (WAIT_S
    here). Rank 0 now broadcasts FAILED and the other ranks stop with one line."""
    root, _ = decisions
    (zero, t0), (one, t1) = _outcomes(root, "failed")
    lock = _level(root / "store", 0).dir / files.LOCK
    assert zero == f"StoreError: [Errno 21] {lock} is a folder, not a lock file: remove it and re-run", zero
    assert one == "RuntimeError: imp labels seed=0 level=0: rank 0 failed before the stage started (its log says " \
                  "why)", one
    assert max(t0, t1) < WAIT_S / 2, (t0, t1)


@pytest.mark.slow
@pytest.mark.xdist_group("ranks_decisions")  # on one worker, which computes `decisions` once
def test_a_done_stage_whose_parent_was_set_aside_is_done_on_every_rank(decisions):
    """Rank 0 required the parents before it read `done`: a finished stage whose parent was set
    aside since returned its result in one process but raised MissingInput on every rank of a
    DDP job. Rank 0 now decides as one process does."""
    root, expected = decisions
    assert [o for o, _ in _outcomes(root, "done")] == [expected, expected]


def _pack_stages(store: Path) -> list:
    cfg = _small(store)
    return [ImpLevel(cfg, "labels", 0, 0), ImpLevel(cfg, "rotnet", 0, 0)]


@pytest.mark.slow
def test_a_pack_on_two_ranks_gives_what_its_stages_give_apart(tmp_path):
    """A packed job under DDP called init_process_group again for its second stage on the same
    MASTER_PORT: rank 1, done first, joined the first stage's rendezvous and failed with
    `Connection reset by peer` while rank 0 hung. The ranks now rendezvous once per process."""
    import torch
    from sslprune.compute import checkpoint

    import submitit

    ex = submitit.LocalExecutor(folder=str(tmp_path / "jobs" / "%j"))
    ex.update_parameters(tasks_per_node=2, timeout_min=10)
    packed = ex.submit(StageJob(_pack_stages(tmp_path / "packed"), compute))
    apart = [ex.submit(StageJob(s, compute)) for s in _pack_stages(tmp_path / "apart")]
    outs = packed.results()
    assert outs[0] == outs[1] and [o["accuracy"] for o in outs[0]] == [j.results()[0]["accuracy"] for j in apart]
    for p, a in zip(_pack_stages(tmp_path / "packed"), _pack_stages(tmp_path / "apart")):
        assert p.result()["world"] == a.result()["world"] == 2
        wp, wa = checkpoint.load(p.dir / "model.pt"), checkpoint.load(a.dir / "model.pt")
        assert wp.keys() == wa.keys() and all(torch.equal(wp[k], wa[k]) for k in wp), p.label


# Each stage of a pack on 2 ranks: set up the ranks as the first stage does, leave another thread
# count behind (as a stage resumed from a checkpoint that recorded it does), ask again as the next
# stage does, with run.threads set and with run.threads=0 (torch's count when the job started).
_NEXT_STAGES = """
import json, os, torch
os.environ.pop("SLURM_CPUS_PER_TASK", None)  # run.threads=0 is then torch's count at the start
from sslprune.compute.runtime import from_environment
from sslprune.core.schema import RunConfig
start = torch.get_num_threads()
first = from_environment(RunConfig(threads=1))
seen = [torch.get_num_threads()]
for threads in (2, 0):
    torch.set_num_threads(start + 3)
    assert from_environment(RunConfig(threads=threads)) is first
    seen.append(torch.get_num_threads())
print(json.dumps([first.rank, start, seen]))
"""


@pytest.mark.slow
def test_each_stage_of_a_pack_on_two_ranks_computes_with_its_own_thread_count(tmp_path):
    """The next stage of a pack got the ranks set up by the first one, and with them the thread
    count the previous stage left behind (a resumed checkpoint's recorded count), not its own
    run.threads: a stage's CPU numbers depended on what ran before it in the job."""
    import submitit
    import sys

    ex = submitit.LocalExecutor(folder=str(tmp_path / "jobs" / "%j"))
    ex.update_parameters(tasks_per_node=2, timeout_min=5)
    job = ex.submit(submitit.helpers.CommandFunction([sys.executable, "-c", _NEXT_STAGES]))
    outs = sorted(json.loads(out.strip().splitlines()[-1]) for out in job.results())
    assert [rank for rank, _, _ in outs] == [0, 1]
    for _, start, seen in outs:
        assert seen == [1, 2, start], seen
