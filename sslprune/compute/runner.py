"""Running a stage: its start record turned into a network, a mask, a task and data, then the one loop.

`run` is the one place a process starts computing a stage (sslprune-run's workers, submitit jobs,
the stage apps and the Python API all reach it; the control plane never imports it: the app layer
hands it over, sslprune.api.compute). The stage record (sslprune.core.stage) says where a stage
lives and what it needs; the stage's start record (sslprune.core.start, plain data) says what it
starts from. `build` is the one place that turns a start record into objects (`Setup`); `_train`
trains them with sslprune.compute.trainer and writes the outputs, `run_svm` fits SVMs on the
frozen features. `result.json` is written last, with the size and sha256 of every output.
"""
from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
import torch

from ..core import machine, start as starts, store as files
from ..core.errors import ConfigError, Corrupt, MissingInput
from ..core.progress import Progress, clock, open_for
from ..core.rewind import rewind_steps
from ..core.schema import OptimConfig
from ..core.stage import DONE, OUTPUTS, Stage
from ..core.sweep import signal_data, signal_prune
from ..core.start import Start
from . import checkpoint, dataset, loader as loaders, mask as masks, model as models, seed as seeds, task as tasks
from . import cost as costs, factory, pretrained, sparsity, subset as subsets
from .runtime import Runtime, from_environment, local
from .trainer import Fit, evaluate, fit


@dataclass
class Setup:
    """A start record made objects: what the loop trains, on what, under which mask."""

    record: Start
    net: torch.nn.Module
    task: object  # None for SVMs
    data: object
    optim: Optional[OptimConfig]
    mask: masks.Mask  # the mask this stage's weights live under (reported as `remaining`)
    train_mask: masks.Mask  # what the loop applies: `mask`, or none where the mask is only reported
    task_state: Optional[dict] = None  # the task's state to start from (NPID's bank at the rewind point)
    features: object = None  # a standardised probe's features (sslprune.compute.probe.Features)
    pretrained: Optional[dict] = None  # how a pretrained file's names met the backbone's (result.json)
    frozen: Optional[dict] = None  # the frozen backbone's tensors as built ("backbone frozen" check)


COMPUTE, FOUND_DONE, PARENT_MISSING, FAILED = 0, 1, 2, 3  # rank 0's decision, broadcast to the other ranks


def run(stage: Stage, rt=None, interrupt=None, started: Optional[float] = None, observer=None,
        mirror: Optional[Callable] = None) -> dict:
    """Run (or resume) `stage` here; a done stage returns its stored result without work.

    `interrupt`: polled at step boundaries; True checkpoints and stops (Interrupted). `started`: when
    the job's work began (wall clock): result.json's `startup_s` is the time from then to the first
    training step. `observer`: gets start/log/note/finish/fail of the stage instead of its progress
    lines being printed (sslprune-run's live display). `mirror`: stage -> another observer of the
    writing rank or None (the W&B mirror, sslprune.control.dashboard.observer); both follow the
    progress protocol of sslprune.core.progress, so this plane never imports who listens.

    `rt`: a Runtime, None (this process alone) or "environment" (the ranks of a submitit job, set
    up by the process's first stage and kept for the next stages of a pack). One process at a time
    computes a stage: the writing rank holds the stage's lock (another run that reaches it waits,
    then finds it done). A stage whose outputs do not match its result.json (`corrupt`) is
    recomputed from scratch.

    Under several ranks only rank 0 reads the store to decide (done, a parent missing, compute) and
    broadcasts its answer: another writer can finish the stage between two ranks' reads, and a rank
    that saw it done would leave the others waiting in the next collective. Rank 0 decides exactly
    as one process does, and broadcasts FAILED when it raises before deciding (a link in the store,
    a `.lock` that is a folder, Ctrl-C): the other ranks would otherwise wait for its broadcast
    until the process group's timeout (30 minutes)."""
    if rt == "environment":
        return run(stage, from_environment(stage.cfg.run), interrupt, started, observer, mirror)
    # A target's module imported and its keyword arguments checked before anything is decided or
    # written: a misspelt argument is one line naming it, and the stage's folder stays untouched.
    factory.check_config(stage.cfg, stage.signal)
    check_network(stage)
    if rt is not None and rt.world > 1 and not rt.is_writer:
        decision = rt.decide(COMPUTE)
        if decision == FOUND_DONE:
            return stage.result()
        if decision == PARENT_MISSING:
            raise MissingInput(f"{stage.label}: rank 0 found a parent stage not done")
        if decision == FAILED:
            raise RuntimeError(f"{stage.label}: rank 0 failed before the stage started (its log says why)")
        return _compute(stage, rt, interrupt, started, observer, mirror)
    say = Progress(stage.label, quiet=stage.cfg.run.quiet or observer is not None,
                   sinks=[observer] if observer is not None else []).note
    with contextlib.ExitStack() as held:
        try:
            if stage.done():
                decision = FOUND_DONE
            else:
                stage.require_parents()
                rt = rt or local(stage.cfg.run)
                stage.confine(fresh=True)  # before the lock makes any folder: never through a link out of the store
                held.enter_context(files.lock(stage.dir, note=say))
                state = stage.state()
                decision = FOUND_DONE if state == "done" else COMPUTE  # done: by the process that held the lock
                if state == "corrupt":
                    say(f"warning: {stage.set_aside()}; recomputing this stage")
                if decision == COMPUTE:
                    files.clean(stage.dir, older_than=0)  # temporary files of killed writers (we hold the lock)
        except MissingInput:
            _broadcast(rt, PARENT_MISSING)
            raise
        except BaseException:
            _broadcast(rt, FAILED)
            raise
        # Only now: the other ranks read the folder once told to compute, and set_aside and clean
        # above remove files from it.
        _broadcast(rt, decision)
        if decision == FOUND_DONE:
            return stage.result()
        return _compute(stage, rt, interrupt, started, observer, mirror)


def check_network(stage: Stage) -> None:
    """What only the built network can tell, refused in one line before the stage's folder is touched:
    a pretrained file that does not fit it, a `prune.scope` that is not a cut point of a target's
    network. The network is built on the meta device (names and shapes, no weights)."""
    cfg = stage.cfg
    sig = cfg.signals.get(stage.signal)
    if sig is None:
        return
    scope = signal_prune(cfg, stage.signal).scope
    loads = stage.kind == "imp" and stage.level == 0 and cfg.model.weights is not None and sig.init_from is None
    cuts = cfg.model._target_ is not None and scope != "all"  # a built-in's scope is checked when planning
    if not (loads or cuts) or stage.done():
        return
    data = signal_data(cfg, stage.signal)
    channels = _channels(data, needed=loads)
    try:
        with torch.device("meta"):
            net = models.build(cfg.model, channels, 1, 0)
    except (RuntimeError, NotImplementedError):  # a target whose construction reads tensor values
        net = models.build(cfg.model, channels, 1, 0)
    if cuts:
        key = f"signals.{stage.signal}.scope" if sig.scope is not None else "prune.scope"
        if "@" in stage.signal and scope in stage.signal.split("@")[1:]:
            key = "prune.scopes"
        try:
            points = list(models.cut_points(net))
        except ValueError:
            raise ConfigError(f"{key}={scope}: model._target_={cfg.model._target_} names no cut points (a `cuts` "
                              "attribute, docs/extending.md), so only `all` can be pruned") from None
        if scope not in points:
            raise ConfigError(f"{key}={scope} is not a cut point of model._target_={cfg.model._target_} "
                              f"(its cut points: all, {', '.join(points)})")
    if loads:
        pretrained.check(cfg.model.weights, cfg.model.weights_key, net.backbone)


def _channels(d, needed: bool) -> int:
    """The input channels of data set `d`: known without loading it for a built-in; a target's data set is
    loaded only when the channels matter (a pretrained file's first layer), else any count will do."""
    from ..core import catalog

    channels = catalog.facts(d).channels if d._target_ is None else None
    if channels is None:
        channels = dataset.load(d).channels if needed else 3
    return channels


def _broadcast(rt: Optional[Runtime], decision: int) -> None:
    if rt is not None:
        rt.decide(decision)  # a no-op for one process


def _compute(stage: Stage, rt: Runtime, interrupt, started: Optional[float] = None, observer=None,
             mirror: Optional[Callable] = None) -> dict:
    monitor = open_for(stage, rt.is_writer, mirror)
    if observer is not None and rt.is_writer:
        observer.start(stage.label, stage.kind)
        monitor.observers.append(observer)  # it also gets finish/fail
    progress = Progress(stage.label, quiet=stage.cfg.run.quiet or observer is not None, sinks=[monitor])
    t0, wall0 = time.monotonic(), time.time()
    try:
        try:
            result = (run_svm if stage.kind == "svm" else _train)(stage, rt, progress, interrupt)
        except Corrupt as e:  # an input a parent wrote does not match its sha256: recompute the parent
            for parent in stage.parents():
                if str(parent.dir) in str(e) and rt.is_writer:
                    parent.set_aside()
            raise MissingInput(f"{stage.label}: {e}; that stage is set aside and is recomputed by the next "
                               "sslprune-run") from None
    except BaseException as e:
        monitor.fail(e)
        raise
    result.update({"kind": stage.kind, "signal_task": stage.signal_task,
                   "seed": stage.seed, "level": stage.level, "seconds": round(time.monotonic() - t0, 3),
                   "device": str(rt.device), "world": rt.world, "cpu_model": machine.cpu_model()})
    first = result.pop("first_step_at", None)
    if first is not None:
        # What a stage pays before training: building the network, loading weights and data (setup_s),
        # and for a job also Python, imports and the device since the process started (startup_s).
        result["setup_s"] = round(first - wall0, 3)
        result["startup_s"] = round(first - started, 3) if started is not None else None
    if rt.is_writer:
        result["outputs"] = files.manifest(stage.dir, OUTPUTS)
        files.write_json(result, stage.dir / DONE)
        checkpoint.discard_training(stage.dir)  # the final weights are in model.pt
    monitor.finish(result)
    progress.note(f"done: accuracy {result['accuracy']:.4f} in {clock(time.monotonic() - t0)}")
    return result


def _threads(stage: Stage, resume: Optional[dict], progress: Progress) -> int:
    """The thread count this stage computes with: the one its checkpoint recorded when it resumes
    (the count changes CPU results), else the configured one (the launcher fills run.threads)."""
    want = stage.cfg.run.threads or torch.get_num_threads()
    recorded = int((resume or {}).get("threads") or 0)
    if recorded and recorded != want:
        progress.note(f"resuming with the {recorded} threads this stage started with (not {want})")
        want = recorded
    torch.set_num_threads(want)
    return want


def prepare(stage: Stage, rt: Runtime) -> Setup:
    """Everything training starts from: the stage's start record, built."""
    return build(starts.of(stage), rt, stage.cfg.run.eval_batch_size)


def _train(stage: Stage, rt: Runtime, progress: Progress, interrupt=None) -> dict:
    resume = checkpoint.resume_state(stage.dir / checkpoint.LATEST, progress.note)
    threads = _threads(stage, resume, progress)
    s = prepare(stage, rt)
    r = s.record
    if rt.is_writer:
        files.write_json(r.config, stage.dir / "config.json")
        if "mask.pt" in r.saves and not (stage.dir / "mask.pt").exists():
            files.write_json(masks.report(s.mask), stage.dir / "sparsity_report.json")
            checkpoint.save(s.mask, stage.dir / "mask.pt")
    if s.pretrained is not None:
        progress.note(s.pretrained.pop("line"))
    net = s.net.to(rt.device)
    # A pretrained level 0 is the network as loaded: kept aside while it trains to the rewind point.
    start = {k: v.detach().clone() for k, v in net.state_dict().items()} if r.until == "k" else None
    seed = seeds.derive(*r.batches)
    if s.features is not None:
        loader = s.features.loader(s.optim.batch_size, seed, rt.device, rt.rank, rt.world)
    else:
        loader = loaders.make(s.data, s.optim.batch_size, seed, rt.device, rt.rank, rt.world,
                              rt.channels_last, s.task.index_targets)
    s.task.bind(loader)  # before fit, which restores the task's checkpointed state (NPID's bank)
    if s.task_state:
        s.task.load_state_dict(s.task_state)  # rewound with the weights; a checkpoint overrides it
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = net
    if rt.world > 1:
        net = model = rt.sync_batchnorm(net)  # batch statistics over the global batch, as in one process
        # The batch norms are synchronised: every rank computes the same running statistics from the
        # global batch, so broadcasting rank 0's buffers before every forward pass would copy equal
        # values (one more collective per step). Rank 0 writes model.pt from its own buffers anyway.
        ddp = torch.nn.parallel.DistributedDataParallel
        # (torch 2.14 renamed the switch; both still sync the buffers once, when DDP is built)
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
            else "broadcast_buffers"
        model = ddp(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, **{no_sync: False})
    params = net.head.parameters() if r.trains == "head" else None
    hooks = [_rewind_saver(r, s.task, loader, rt.is_writer)] if r.save_rewind else []
    job = Fit(model=model, net=net, task=s.task, loader=loader, optim=s.optim, mask=s.train_mask,
              checkpoint=stage.dir / checkpoint.LATEST, start_step=first_step(r, loader),
              end_step=rewind_step(r, loader) if r.until == "k" else None,
              params=params, hooks=hooks, interrupt=interrupt,
              agree=rt.agree_all if rt.world > 1 else None, resume=resume, threads=threads)
    info = fit(job, stage.cfg.run, progress, rt.is_writer)
    info["threads"] = threads
    if start is not None:
        net.load_state_dict(start)  # W_k is in rewind.pt; the level's result is W_0
    metrics = evaluate(net, s.task, loader, stage.cfg.run.eval_batch_size, stage.cfg.run.amp)
    check(s, net)
    if rt.is_writer and "model.pt" in r.saves:
        weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        checkpoint.save(weights, stage.dir / "model.pt")
        if "weights.json" in r.saves:  # the report's natural-sparsity statistics
            files.write_json(sparsity.summary(weights), stage.dir / "weights.json")
    # A standardised probe's L-BFGS reference: the optimum its SGD should reach.
    extra = (s.features.reference(s.optim.weight_decay) or {}) if s.features is not None else {}
    if s.pretrained is not None:
        extra["pretrained"] = s.pretrained
    return {**info, **metrics, **extra, "remaining": masks.density(s.mask), "evaluation": stage.evaluation,
            **cost(r.model, s.data, s.task.num_outputs, s.mask)}


def cost(model, data, outputs: int, mask: masks.Mask) -> dict:
    """The evaluated network's parameters and MACs of one forward pass at the data set's input size,
    dense and under `mask` (sslprune.compute.cost). A function of the architecture (`model`, a
    ModelConfig), the head's size and the mask only: it is counted on a copy built on the meta device,
    so the stage's weights and batch-norm statistics are never touched. For a standardised probe (a
    linear map on features), the network that computes those features is what an image costs."""
    with torch.device("meta"):
        net = models.build(model, data.channels, outputs, 0)
    size = dataset.input_size(data)
    return {**costs.count(net, size, mask), "input_size": list(size)}


# ---------------------------------------------------------------- the record, built


def build(r: Start, rt: Runtime, eval_batch_size: int) -> Setup:
    """The one interpreter of start records (sslprune.core.start): data (restricted to its label
    subset), task, network with its weights and head, mask, and for a probe its frozen backbone
    or its standardised features (computed here, in batches of `eval_batch_size`)."""
    unknown = sorted(set(r.checks) - set(starts.CHECKS))
    if unknown:
        raise ValueError(f"{r.label}: checks={unknown} are not among {', '.join(starts.CHECKS)}")
    loaded: dict = {}

    def load(path: str):
        if path not in loaded:  # rewind.pt gives both the weights and the task's state
            loaded[path] = checkpoint.load(Path(path))
        return loaded[path]

    data = dataset.load(r.data)
    if r.subset is not None:
        # Drawn once and saved at level 0: later levels and resumed runs read it back, so the chain
        # keeps the images it started with, and a file that disagrees with the config is an error.
        indices = subsets.saved(Path(r.subset), r.task, loaders.train_labels(data), data.num_classes,
                                write=rt.is_writer, must_exist=not r.subset_drawn)
        data = subsets.restrict(data, r.task, indices)
    task = tasks.make(r.task, data) if r.task is not None else None
    outputs = task.num_outputs if task is not None else data.num_classes
    net, mapping = _network(r, data, outputs, load)
    mask = _mask(r.mask, net, load)
    s = Setup(record=r, net=net, task=task, data=data, optim=r.optim, mask=mask,
              pretrained=None if mapping is None else {**mapping.summary(), "line": mapping.line()},
              train_mask=mask if r.mask.applied else {},
              task_state=(load(r.task_state).get("task") or None) if r.task_state is not None else None)
    if r.inputs == "standardised features":
        from . import probe

        s.features = probe.standardised(net.backbone, data, rt.device, eval_batch_size)
        s.net = probe.Linear(s.features.dim, outputs, seeds.generator(*r.head_seed))
    elif r.head == "fresh":
        net.new_head(outputs, seeds.generator(*r.head_seed))
    if r.trains == "head" and s.features is None:
        s.net = models.FrozenBackbone(net)
    if "backbone frozen" in r.checks:
        s.frozen = {k: v.detach().clone() for k, v in s.net.backbone.state_dict().items()}
    return s


def _network(r: Start, data, outputs: int, load) -> tuple:
    """(network, the pretrained file's mapping or None)."""
    w = r.weights
    if w.seed is None:  # every tensor from the file: no draw of its own, the head's size from the file
        weights = load(w.load)
        net = models.build(r.model, data.channels, weights["head.weight"].shape[0], 0)
        net.load_state_dict(weights)
        return net, None
    net = models.build(r.model, data.channels, outputs, seeds.derive(*w.seed))
    if w.part == "pretrained":
        return net, pretrained.load(w.load, w.key, net.backbone)
    if w.load is not None:
        weights = load(w.load)
        if w.key is not None:
            weights = weights[w.key]
        if w.part == "backbone":
            weights = {**net.state_dict(), **{k: v for k, v in weights.items() if k.startswith("backbone.")}}
        net.load_state_dict(weights)
    return net, None


def _mask(m, net, load) -> masks.Mask:
    if m.rule == "ones":
        return masks.ones(net, m.ignore, m.scope)
    if m.rule == "drawn":
        like = masks.ones(net, m.ignore, m.scope)
        return masks.drawn(like, masks.survivors(masks.count(like)[1], m.rate, m.level), seeds.generator(*m.seed))
    saved = load(m.file)
    if m.rule == "file":
        return saved
    if m.rule == "magnitude":
        return masks.magnitude(load(m.weights), saved, m.rate)
    if m.rule == "adjusted":
        return masks.adjusted_random(saved, load(m.weights), seeds.generator(*m.seed))
    raise ValueError(f"mask rule {m.rule!r} is not one of ones, drawn, file, magnitude, adjusted")


def rewind_step(r: Start, loader) -> int:
    """k, the rewind point in optimizer updates (it depends on the loader's steps per epoch)."""
    spe = loader.steps_per_epoch
    return rewind_steps(r.rewind, spe, r.optim.batch_size, r.optim.epochs * spe)


def first_step(r: Start, loader) -> int:
    """The schedule's first step: 0, or k for a level rewound to W_k (as if training had gone on from there)."""
    return rewind_step(r, loader) if r.first_step == "k" else 0


def _rewind_saver(r: Start, task, loader, writer: bool):
    """The step hook that saves W_k, and the task's state with it (NPID's memory bank), once."""
    k, path = rewind_step(r, loader), Path(r.save_rewind)

    def hook(step, module):
        if step == k and writer and not path.exists():
            checkpoint.save({"model": module.state_dict(), "step": k, "task": task.state_dict()}, path)
    return hook


def check(s: Setup, net) -> None:
    """The record's result checks on the trained network; raises naming the stage."""
    if "backbone frozen" in s.record.checks:
        now = net.backbone.state_dict()
        if any(not torch.equal(s.frozen[k], now[k].cpu()) for k in s.frozen):
            raise RuntimeError(f"{s.record.label}: the frozen backbone changed during probing")
    if "pruned stay zero" in s.record.checks:
        params = dict(net.named_parameters())
        if any(bool((params[n].detach().cpu()[m == 0] != 0).any()) for n, m in s.mask.items()):
            raise RuntimeError(f"{s.record.label}: a pruned weight is non-zero after fine-tuning")


# ---------------------------------------------------------------- SVMs


def run_svm(stage: Stage, rt: Runtime, progress: Progress, interrupt=None) -> dict:
    """Linear SVMs on IMP level L's frozen features (sslprune.compute.svm). No training loop: features
    of both splits, then the SVMs. It is short, so an interrupted run simply starts again; only
    result.json (and config.json) are written."""
    from . import svm

    cfg, sv = stage.cfg, stage.cfg.svm
    s = prepare(stage, rt)
    r, data = s.record, s.data
    if rt.is_writer:
        files.write_json(r.config, stage.dir / "config.json")
    # Every rank computes the same numbers (no sharding): the stage is short, rank 0 writes.
    split = {}
    for name in ("train", "test"):
        split[name] = svm.features(s.net.backbone, data, name, rt.device, cfg.run.eval_batch_size)
        progress.note(f"{name} features: {split[name][0].shape[0]} x {split[name][0].shape[1]}")
    (train_x, train_t), (test_x, test_t) = split["train"], split["test"]
    result = svm.evaluate(train_x, train_t, test_x, test_t, sv.costs, sv.folds, seeds.derive(*r.batches),
                          getattr(data, "classes", ()), jobs=cfg.run.threads or None, note=progress.note,
                          features=sv.features)
    # The SVMs are one linear map from the features to the classes: the head's cost.
    return {**result, "remaining": masks.density(s.mask), "evaluation": stage.evaluation,
            **cost(r.model, data, data.num_classes, s.mask)}
