"""A stage's numbers depend only on its config and its thread count, and the GPU path keeps the
promises the CPU tests cannot see: checkpoints load to the CPU (RNG states stay CPU ByteTensors),
the model always gets the memory format the runtime asked for, task losses are fp32 outside
autocast, and run.device=cuda without a GPU is refused before any work."""
from __future__ import annotations

import os
import random
import shutil
from dataclasses import replace

import numpy as np
import pytest

from sslprune.core.progress import Progress
from sslprune.core.schema import ModelConfig, RunConfig, SignalConfig, TaskConfig
from sslprune.core.stage import ImpLevel
from sslprune.control.local import run_local

from conftest import cli, tiny_config, tiny_optim
from sslprune.api import compute
from sslprune.api import uses_cuda


def _fit(cfg, signal, ckpt, net=None, loader=None, **kw):
    from sslprune.compute import runner

    import torch
    from sslprune.compute import loader as loaders, runner
    from sslprune.compute import trainer
    from sslprune.compute.runtime import Runtime
    CPU = torch.device("cpu")

    s = runner.prepare(ImpLevel(cfg, signal, 0, 0), Runtime(CPU))
    ld = loader or loaders.make(s.data, 128, 0, CPU, index_targets=s.task.index_targets)
    s.task.bind(ld)
    return trainer.Fit(model=net or s.net, task=s.task, loader=ld, optim=s.optim, mask=s.mask, checkpoint=ckpt, **kw)


# ---------------------------------------------------------------- the GPU path, on the CPU


def test_resume_hands_cpu_rng_states_to_the_setters_whatever_the_device(tmp_path, monkeypatch):
    """A checkpoint written on one device and resumed on a network on another (`meta` here, the only
    other device a CPU machine has): map_location=device used to move the RNG ByteTensor there and
    torch.set_rng_state raised `RNG state must be a torch.ByteTensor` on every GPU resume. `meta`
    stands in for the device of the weights only: CUDA's own RNG is the next test's (and the GPU
    check's, benchmarks/gpu_check.py, which resumes with fewer visible GPUs for real)."""
    import torch
    from sslprune.compute import checkpoint, dataset, loader as loaders, model as models
    from sslprune.compute import trainer

    cfg = tiny_config(tmp_path / "s")
    job = _fit(cfg, "labels", tmp_path / "ckpt.pt", interrupt=lambda: True)
    with pytest.raises(trainer.Interrupted):
        trainer.fit(job, RunConfig(quiet=True), Progress("t", quiet=True))
    state = checkpoint.load(tmp_path / "ckpt.pt")
    assert all(t.device.type == "cpu" for t in state["model"].values())
    handed = []
    real = torch.set_rng_state
    monkeypatch.setattr(torch, "set_rng_state", lambda s: (handed.append(s), real(s))[1])
    meta_net = models.build(cfg.model, 1, 10, 0).to("meta")
    data = dataset.load(cfg.data)
    meta_loader = loaders.make(data, 128, 0, torch.device("meta"))
    resumed = _fit(cfg, "labels", tmp_path / "ckpt.pt", net=meta_net, loader=meta_loader, interrupt=lambda: True)
    # A meta tensor has no values: the restore succeeds, then the first check of the loss cannot read it.
    with pytest.raises(RuntimeError, match=r"^Tensor\.item\(\) cannot be called on meta tensors$"):
        trainer.fit(resumed, RunConfig(quiet=True), Progress("t", quiet=True))
    assert any(torch.equal(h, state["rng"]["torch"]) for h in handed)  # the checkpoint's state was restored
    assert all(h.device.type == "cpu" and h.dtype == torch.uint8 for h in handed)


def test_a_checkpoint_of_an_8_gpu_job_resumes_where_one_gpu_is_visible(tmp_path, monkeypatch):
    """Checkpoints held torch.cuda.get_rng_state_all(): one state per GPU the rank saw (every rank
    sees all of its node's GPUs), and set_rng_state_all raised IndexError when the stage resumed
    where fewer are visible (an 8-GPU job's stage re-run by sslprune-imp on one GPU). No draw uses
    the CUDA generator: none is saved, and a "cuda" entry of an old checkpoint is ignored.

    This machine has no GPU: torch.cuda here pretends one is visible, and set_rng_state_all fails
    as torch's does with one GPU (its default_generators has one entry). The GPU check
    (benchmarks/gpu_check.py) resumes such a checkpoint under CUDA_VISIBLE_DEVICES for real."""
    from sslprune.compute import runner

    import torch
    from sslprune.compute import checkpoint
    from sslprune.compute import trainer
    from sslprune.compute.runtime import Runtime
    CPU = torch.device("cpu")

    def one_gpu(states):
        if len(states) > 1:
            raise IndexError("tuple index out of range")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(16, dtype=torch.uint8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", one_gpu)
    cfg = tiny_config(tmp_path / "s", run=RunConfig(quiet=True, threads=1, checkpoint_steps=1, device="cpu"))
    stage = ImpLevel(cfg, "labels", 0, 0)
    polls = iter(range(1000))
    with pytest.raises(trainer.Interrupted):
        runner.run(stage, Runtime(CPU), interrupt=lambda: next(polls) == 5)
    ckpt = stage.dir / "checkpoint.pt"
    state = checkpoint.load(ckpt, verify=False)
    assert set(state["rng"]) == {"torch"}  # nothing of CUDA's, though a GPU was visible
    state["rng"]["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]  # what an 8-GPU job wrote
    checkpoint.save_training(state, ckpt)
    resumed = runner.run(stage, Runtime(CPU))
    reference = ImpLevel(tiny_config(tmp_path / "r", run=cfg.run), "labels", 0, 0)
    expected = runner.run(reference, Runtime(CPU))
    assert resumed["accuracy"] == expected["accuracy"]
    a, b = checkpoint.load(stage.dir / "model.pt"), checkpoint.load(reference.dir / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _colour(n: int = 128, size: int = 8):
    """Random 3-channel images: a 1-channel batch (digits) is contiguous in both memory formats."""
    import torch
    from sslprune.compute import dataset

    g = torch.Generator().manual_seed(0)
    train = dataset.Split(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                          torch.randint(0, 10, (n,), generator=g))
    return dataset.MemoryData("colour", train, dataset.Split(train.images[:32], train.labels[:32]), 10, (0.5,) * 3,
                              (0.25,) * 3, pad=1, flip=True)


@pytest.mark.parametrize("name", ["rotnet", "s4l", "labels", "exemplar"])
def test_the_model_gets_the_memory_format_the_runtime_asked_for(tmp_path, name):
    """RotNet's rot90 + cat returned NCHW from a channels_last batch: every convolution of the 4x
    pretext batch paid a layout conversion. The loop hands the model channels_last batches."""
    import torch
    from sslprune.compute import loader as loaders, model as models
    from sslprune.compute import task as tasks, trainer
    CPU = torch.device("cpu")

    data = _colour()
    task = tasks.make(TaskConfig(name, embedding=8), data)
    ld = loaders.make(data, 32, 0, CPU, channels_last=True)
    task.bind(ld)
    net = models.build(ModelConfig("resnet_small", 4), 3, task.num_outputs, 0).to(memory_format=torch.channels_last)
    formats = []
    net.register_forward_pre_hook(lambda m, a: formats.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    job = trainer.Fit(model=net, task=task, loader=ld, optim=tiny_optim(epochs=1, batch_size=32), mask={},
                      checkpoint=tmp_path / "c.pt")
    trainer.fit(job, RunConfig(quiet=True), Progress("t", quiet=True))
    trainer.evaluate(net, task, ld, 256)
    assert len(formats) == 4 + 1 and all(formats), f"{formats.count(False)} of {len(formats)} forward passes got NCHW"


def test_masks_take_their_parameters_memory_format():
    """Masks kept NCHW strides while the weights were channels_last (on CUDA): torch._foreach_mul_
    then fell back from its fused kernel to one kernel per tensor. Each mask now has its weight's
    strides, and applying it zeroes exactly what it did."""
    import torch
    from sslprune.compute import mask as masks, model as models

    net = models.build(ModelConfig("resnet_small", 4), 3, 10, 0).to(memory_format=torch.channels_last)
    params = dict(net.named_parameters())
    mask = masks.magnitude(params, masks.ones(net), 0.5)
    expected = {n: (params[n] * mask[n]).detach().clone() for n in mask}
    applier = masks.Applier(net, mask)
    convs = [n for n in mask if params[n].dim() == 4]
    assert convs and all(params[n].is_contiguous(memory_format=torch.channels_last) for n in convs)
    assert [m.stride() for m in applier.masks] == [p.stride() for p in applier.params]
    applier()
    assert all(torch.equal(params[n], expected[n]) for n in mask)


@pytest.mark.parametrize("name", ["npid", "labels", "exemplar"])
def test_task_losses_are_fp32_outside_autocast(tmp_path, name):
    """NPID's loss (its bank matmul) ran inside bf16 autocast: losses are computed in fp32, autocast
    off, while the forward pass keeps autocast (bf16 on CPU here stands for bf16 on CUDA)."""
    import torch
    from sslprune.compute import trainer

    cfg = tiny_config(tmp_path / "s")
    cfg.signals = {name: SignalConfig(TaskConfig(name, embedding=16, negatives=200), tiny_optim(epochs=1))}
    job = _fit(cfg, name, tmp_path / "c.pt", autocast=torch.bfloat16)
    seen, inner = [], []
    loss = job.task.loss

    def recorded(outputs, target):
        out = loss(outputs, target)
        seen.append((torch.is_autocast_enabled("cpu"), outputs.dtype, out.dtype))
        return out

    job.task.loss = recorded
    job.model.register_forward_hook(lambda m, a, out: inner.append(torch.is_autocast_enabled("cpu")))
    trainer.fit(job, RunConfig(quiet=True, log_every=1000), Progress("t", quiet=True))
    assert inner and all(inner)  # the forward pass did run under autocast
    assert seen and all(not on and a == b == torch.float32 for on, a, b in seen), seen[:3]


def test_multilabel_score_returns_its_count_as_a_tensor():
    """`int(keep.sum())` was a host sync every step; the count stays on the device until a log line."""
    import torch
    from sslprune.compute import task as tasks

    task = tasks.MultiLabel(3)
    outputs = torch.tensor([[1.0, -1.0, 2.0], [-1.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    right, n = task.score(outputs, target)
    assert isinstance(n, torch.Tensor) and int(n) == 5 and int(right) == 5


def test_cuda_without_a_gpu_is_one_line_before_any_work(tmp_path):
    store = tmp_path / "s"
    for app in (["sslprune-run"], ["sslprune-imp", "signal=labels"]):
        p = cli(*app, f"store={store}", "run.device=cuda", "model.width=4", check=False)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "run.device=cuda" in lines[0] and "no CUDA device" in lines[0], p.stderr
        assert not list(store.rglob("*.pt")) and not list(store.rglob("result.json"))


# ---------------------------------------------------------------- numbers from the config alone


@pytest.mark.parametrize("name", ["exemplar", "npid", "labels"])
def test_a_stage_is_bit_identical_whatever_ran_before_in_the_process(tmp_path, name):
    """Exemplar's views and NPID's negatives drew from the process-global RNG: the same stage gave
    0.4373 alone and 0.4708 after an unrelated torch.rand(7). Every draw now has its own seed."""
    from sslprune.compute import runner

    import torch
    from sslprune.compute import checkpoint
    from sslprune.compute.runtime import Runtime
    CPU = torch.device("cpu")

    results = []
    for i, noise in enumerate((None, 7, 13)):
        cfg = tiny_config(tmp_path / f"s{i}")
        cfg.signals = {name: SignalConfig(TaskConfig(name, embedding=16, negatives=200), tiny_optim(epochs=2))}
        if noise:
            torch.rand(noise), random.random(), np.random.rand(noise)
            torch.manual_seed(noise)
        stage = ImpLevel(cfg, name, 0, 0)
        runner.run(stage, Runtime(CPU))
        results.append((checkpoint.load(stage.dir / "model.pt"), stage.result()["accuracy"]))
    (a, acc), *others = results
    for b, other in others:
        assert other == acc
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_recomputed_stage_is_bit_identical_whatever_else_is_left_to_run(tmp_path):
    """With one chain left, run_local fell back to torch's default thread count (2 here) instead of
    the 1 thread per worker the store was computed with: accuracy 0.8942 instead of 0.8969."""
    import torch
    from sslprune.compute import checkpoint

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores: the thread count only changes with several workers")
    cfg = tiny_config(tmp_path / "s", run=RunConfig(quiet=True))  # workers and threads from the machine
    cfg.retrain = replace(cfg.retrain, schemes=["winning_ticket"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(os.cpu_count())  # what a fresh process would have
        run_local(cfg, compute, uses_cuda)
        level = ImpLevel(cfg, "rotnet", 0, 2)
        original = checkpoint.load(level.dir / "model.pt")
        result = level.result()
        assert result["threads"] == max(1, os.cpu_count() // os.cpu_count())
        shutil.rmtree(level.dir)
        torch.set_num_threads(os.cpu_count())
        assert run_local(cfg, compute, uses_cuda) == 3  # that level, its re-training and its probe: one chain left
        again = checkpoint.load(level.dir / "model.pt")
        assert all(torch.equal(original[k], again[k]) for k in original)
        assert level.result()["accuracy"] == result["accuracy"]
    finally:
        torch.set_num_threads(before)


def test_resume_keeps_the_thread_count_the_stage_started_with(tmp_path):
    from sslprune.compute import runner

    import torch
    from sslprune.compute import checkpoint
    from sslprune.compute import trainer
    from sslprune.compute.runtime import Runtime
    CPU = torch.device("cpu")

    cfg = tiny_config(tmp_path / "s", run=RunConfig(quiet=True, threads=2, checkpoint_steps=1))
    stage = ImpLevel(cfg, "labels", 0, 0)
    polls = iter(range(1000))
    with pytest.raises(trainer.Interrupted):
        runner.run(stage, Runtime(CPU), interrupt=lambda: next(polls) == 5)
    assert checkpoint.load(stage.dir / "checkpoint.pt")["threads"] == 2
    other = replace(cfg, run=replace(cfg.run, threads=1))
    before = torch.get_num_threads()
    try:
        result = runner.run(ImpLevel(other, "labels", 0, 0), Runtime(CPU))
    finally:
        torch.set_num_threads(before)
    assert result["threads"] == 2
    reference = tiny_config(tmp_path / "r", run=RunConfig(quiet=True, threads=2))
    ref = ImpLevel(reference, "labels", 0, 0)
    runner.run(ref, Runtime(CPU))
    a, b = checkpoint.load(ref.dir / "model.pt"), checkpoint.load(stage.dir / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
