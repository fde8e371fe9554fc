"""Running a stage: what training starts from for each kind of stage, then the one loop.

`run` is the one place a process starts computing a stage (sslprune-run's workers, submitit jobs,
the stage apps and the Python API all reach it; the control plane never imports it: the app layer
hands it over, sslprune.api.compute). The stage record (sslprune.core.stage) says where a stage
lives and what it needs; this
module turns it into a network with its weights loaded, a mask, a task, data and the step the
schedule starts at (`Setup`, one function per kind below), trains it with sslprune.compute.trainer
and writes its outputs. `result.json` is written last, with the size and sha256 of every output.
"""
from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Optional
import torch

from ..core import machine, store as files
from ..core.errors import Corrupt, MissingInput
from ..core.identity import identity, chain_identity
from ..core.progress import Progress, clock, open_for
from ..core.rewind import rewind_steps
from ..core.schema import OptimConfig
from ..core.stage import DONE, OUTPUTS, Finetune, ImpLevel, Probe, Retrain, Stage, Svm
from ..core.sweep import signal_data, signal_prune
from . import checkpoint, dataset, loader as loaders, mask as masks, model as models, seed as seeds, task as tasks
from . import cost as costs, sparsity, subset as subsets
from .runtime import Runtime, from_environment, local
from .trainer import Fit, evaluate, fit


@dataclass
class Setup:
    net: torch.nn.Module
    task: object
    data: object
    optim: OptimConfig
    mask: masks.Mask  # the mask this stage's weights live under (reported as `remaining`)
    seed_parts: tuple  # what seeds the data order and augmentation
    identity: dict
    train_mask: Optional[masks.Mask] = None  # what the loop applies; defaults to `mask`
    start: Optional[Callable] = None  # loader -> first step of the schedule (rewinding)
    hooks: list = field(default_factory=list)  # loader -> step hook
    params: Optional[Callable] = None  # net -> the parameters to optimise (default all)
    check: Optional[Callable] = None  # net -> None, raises if the result is inconsistent
    save_mask: bool = True
    save_model: bool = True
    task_state: Optional[dict] = None  # the task's state to start from (NPID's bank at the rewind point)
    # (batch size, seed, device, rank, world) -> the loader; None: sslprune.compute.loader.make on `data`
    loader: Optional[Callable] = None
    report: Optional[Callable] = None  # () -> more entries of result.json (the probe's L-BFGS reference)

    def __post_init__(self):
        if self.train_mask is None:
            self.train_mask = self.mask




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
    result.update({"kind": stage.kind, "signal_task": stage.cfg.signals[stage.signal].task.name,
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
    """Everything training starts from: network (weights loaded), mask, task, data, schedule start."""
    return {"imp": prepare_imp, "retrain": prepare_retrain, "probe": prepare_probe,
            "finetune": prepare_finetune}[stage.kind](stage, rt)


def _train(stage: Stage, rt: Runtime, progress: Progress, interrupt=None) -> dict:
    resume = checkpoint.resume_state(stage.dir / checkpoint.LATEST, progress.note)
    threads = _threads(stage, resume, progress)
    s = prepare(stage, rt)
    if rt.is_writer:
        shared = getattr(stage, "shared", False)  # the dense re-training belongs to no one chain
        files.write_json({**({} if shared else {"chain": chain_identity(stage.cfg, stage.signal)}), **s.identity},
                         stage.dir / "config.json")
        if s.save_mask and not (stage.dir / "mask.pt").exists():
            files.write_json(masks.report(s.mask), stage.dir / "sparsity_report.json")
            checkpoint.save(s.mask, stage.dir / "mask.pt")
    net = s.net.to(rt.device)
    if s.loader is not None:
        loader = s.loader(s.optim.batch_size, seeds.derive(*s.seed_parts), rt.device, rt.rank, rt.world)
    else:
        loader = loaders.make(s.data, s.optim.batch_size, seeds.derive(*s.seed_parts), rt.device, rt.rank, rt.world,
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
    params = s.params(net) if s.params else None
    job = Fit(model=model, net=net, task=s.task, loader=loader, optim=s.optim, mask=s.train_mask,
              checkpoint=stage.dir / checkpoint.LATEST, start_step=s.start(loader) if s.start else 0,
              params=params, hooks=[h(loader) for h in s.hooks], interrupt=interrupt,
              agree=rt.agree_all if rt.world > 1 else None, resume=resume, threads=threads)
    info = fit(job, stage.cfg.run, progress, rt.is_writer)
    info["threads"] = threads
    metrics = evaluate(net, s.task, loader, stage.cfg.run.eval_batch_size, stage.cfg.run.amp)
    if s.check:
        s.check(net)
    if rt.is_writer and s.save_model:
        weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        checkpoint.save(weights, stage.dir / "model.pt")
        if stage.kind == "imp" and stage.level == 0:  # the report's natural-sparsity statistics
            files.write_json(sparsity.summary(weights), stage.dir / "weights.json")
    extra = s.report() if s.report else {}
    return {**info, **metrics, **extra, "remaining": masks.density(s.mask), "evaluation": stage.evaluation,
            **cost(stage.cfg, s.data, s.task.num_outputs, s.mask)}


def cost(cfg, data, outputs: int, mask: masks.Mask) -> dict:
    """The evaluated network's parameters and MACs of one forward pass at the data set's input size,
    dense and under `mask` (sslprune.compute.cost). A function of the architecture, the head's size
    and the mask only: it is counted on a copy built on the meta device, so the stage's weights and
    batch-norm statistics are never touched. For a standardised probe (a linear map on features),
    the network that computes those features is what an image costs."""
    with torch.device("meta"):
        net = models.build(cfg.model, data.channels, outputs, 0)
    size = dataset.input_size(data)
    return {**costs.count(net, size, mask), "input_size": list(size)}


# ---------------------------------------------------------------- IMP level


def label_subset(stage: ImpLevel, data, rt: Runtime):
    """The signal's data restricted to its label subset, drawn once and saved at level 0
    (label_subset.json): later levels and resumed runs read it back, so the chain keeps the
    images it started with, and a file that disagrees with the config is an error."""
    task = stage.cfg.signals[stage.signal].task
    path = ImpLevel(stage.cfg, stage.signal, stage.seed, 0).dir / subsets.FILE
    indices = subsets.saved(path, task, loaders.train_labels(data), data.num_classes,
                            write=rt.is_writer, must_exist=stage.level > 0)
    return subsets.restrict(data, task, indices)


def init_seed(stage: Stage) -> int:
    """The seed of a chain's initial weights. `per_signal` (model.init): from the seed and the signal's
    base name, so two signals start from independent weights as in the paper, while the scope and
    rewind sweeps of one signal (rotnet@stage1, rotnet@0it: the part before the first @) share their
    dense initialisation and their level 0 trains the same network. `shared`: one start per seed."""
    if stage.cfg.model.init == "shared":
        return seeds.derive(stage.seed, "init")
    return seeds.derive(stage.seed, "init", stage.signal.split("@")[0])


def prepare_imp(stage: ImpLevel, rt: Runtime) -> Setup:
    """Level 0: the dense network from its initialisation; level L: the previous level's trained
    weights pruned, the survivors rewound to W_k (late resetting)."""
    cfg, sig = stage.cfg, stage.cfg.signals[stage.signal]
    prune = signal_prune(cfg, stage.signal)
    data = dataset.load(signal_data(cfg, stage.signal))
    if sig.task.label_fraction < 1:
        data = label_subset(stage, data, rt)
    task = tasks.make(sig.task, data)
    net = models.build(cfg.model, data.channels, task.num_outputs, init_seed(stage))
    rewind_file = stage.rewind_file()

    def k_of(loader) -> int:
        spe = loader.steps_per_epoch
        return rewind_steps(prune.rewind, spe, sig.optim.batch_size, sig.optim.epochs * spe)

    hooks, start, task_state = [], None, None
    if stage.level == 0:
        if sig.init_from is not None:
            # Pruning during transfer: start from the source signal's trained dense network, keep
            # its backbone, and put a fresh head for this task on it.
            trained = checkpoint.load(stage.parents()[0].dir / "model.pt")
            net.load_state_dict({**net.state_dict(), **{k: v for k, v in trained.items()
                                                          if k.startswith("backbone.")}})
            net.new_head(task.num_outputs, seeds.generator(stage.seed, "transfer-head"))
        mask = masks.ones(net, prune.ignore, prune.scope)

        def save_rewind(loader):
            k = k_of(loader)

            def hook(step, module):
                if step == k and rt.is_writer and not rewind_file.exists():
                    # The task's state (NPID's memory bank) is rewound with the weights.
                    checkpoint.save({"model": module.state_dict(), "step": k, "task": task.state_dict()},
                                    rewind_file)
            return hook
        hooks = [save_rewind]
    else:
        # Prune the previous level's trained weights, then rewind the survivors to W_k (late resetting);
        # the schedule resumes at step k, as if training had continued from there.
        parent = stage.parents()[0]
        mask = masks.magnitude(checkpoint.load(parent.dir / "model.pt"), checkpoint.load(parent.dir / "mask.pt"),
                               prune.rate)
        rewound = checkpoint.load(rewind_file)
        net.load_state_dict(rewound["model"])
        task_state = rewound.get("task") or None
        start = k_of
    return Setup(net=net, task=task, data=data, optim=sig.optim, mask=mask, seed_parts=(stage.seed, "imp", stage.level),
                 identity={"stage": "imp", "level": stage.level}, start=start, hooks=hooks,
                 task_state=task_state)


# ---------------------------------------------------------------- re-training


def prepare_retrain(stage: Retrain, rt: Runtime) -> Setup:
    """The mask of IMP level L on labels, from the stage's scheme: winning ticket (rewound weights,
    fresh head), random re-init (fresh weights) or random (a shuffled mask, fresh weights)."""
    cfg, r = stage.cfg, stage.cfg.retrain
    data = dataset.load(r.data)
    task = tasks.labels(data)
    # Fresh weights for both random starts come from one seed, so they differ only in the mask.
    net = models.build(cfg.model, data.channels, task.num_outputs, seeds.derive(stage.seed, "reinit"))
    if stage.shared:  # level 0's random starts: the dense network from scratch, for every signal
        return Setup(net=net, task=task, data=data, optim=r.optim, mask=masks.ones(net),
                     seed_parts=(stage.seed, "retrain", 0),
                     identity={"stage": "retrain", "scheme": "dense", "data": identity(r.data),
                               "optim": identity(r.optim)})
    imp = stage.parents()[0]
    mask = checkpoint.load(imp.dir / "mask.pt")
    if stage.scheme == "random":
        mask = masks.shuffled(mask, seeds.generator(stage.seed, "random-mask", stage.level))
    elif stage.scheme == "random_adjusted":
        # Random, but the weights the trained dense network (level 0) has at zero are removed first.
        dense = checkpoint.load(ImpLevel(cfg, stage.signal, stage.seed, 0).dir / "model.pt")
        mask = masks.adjusted_random(mask, dense, seeds.generator(stage.seed, "adjusted-mask", stage.level))
    elif stage.scheme == "winning_ticket":
        rewound = checkpoint.load(imp.rewind_file())["model"]
        backbone = {k: v for k, v in rewound.items() if k.startswith("backbone.")}
        net.load_state_dict({**net.state_dict(), **backbone})
        net.new_head(task.num_outputs, seeds.generator(stage.seed, "head"))
    # All three starts see the same batches: they differ only in mask and initial weights.
    return Setup(net=net, task=task, data=data, optim=r.optim, mask=mask,
                 seed_parts=(stage.seed, "retrain", stage.level),
                 identity={"stage": "retrain", "scheme": stage.scheme, "data": identity(r.data),
                           "optim": identity(r.optim)})


# ---------------------------------------------------------------- evaluations


def trained(stage, data) -> models.Network:
    """IMP level L's network (its mask is already applied to the saved weights), for `data`'s images;
    for an evaluation of the initial weights (at_init), the chain's dense network before training."""
    if getattr(stage, "at_init", False):
        # Built exactly as IMP level 0 builds it (the backbone is drawn before the head, so the
        # head's size does not change it); the head is replaced by the evaluation anyway.
        return models.build(stage.cfg.model, data.channels, data.num_classes, init_seed(stage))
    weights = checkpoint.load(stage.parents()[0].dir / "model.pt")
    net = models.build(stage.cfg.model, data.channels, weights["head.weight"].shape[0], 0)
    net.load_state_dict(weights)
    return net


def _evaluated_mask(stage, net) -> masks.Mask:
    """The mask the evaluated weights live under (reported as `remaining`): the IMP level's, or for
    the initial weights level 0's, every prunable weight kept."""
    if getattr(stage, "at_init", False):
        prune = signal_prune(stage.cfg, stage.signal)
        return masks.ones(net, prune.ignore, prune.scope)
    return checkpoint.load(stage.parents()[0].dir / "mask.pt")


def prepare_probe(stage: Probe, rt: Runtime) -> Setup:
    """A linear classifier on the frozen penultimate features of IMP level L's weights.

    probe.features=augmented: the backbone runs on every augmented training batch (frozen, in eval
    mode), only the head learns. standardised: the features of the un-augmented images are computed
    once, standardised, and the head is trained on them (sslprune.compute.probe)."""
    cfg = stage.cfg
    data = dataset.load(stage.data)
    net = trained(stage, data)
    head_seed = seeds.generator(stage.seed, "probe-head", stage.data.name)
    ident = {"stage": "probe", "data": identity(stage.data), "optim": identity(cfg.probe.optim)}
    common = dict(task=tasks.labels(data), data=data, optim=cfg.probe.optim, mask=_evaluated_mask(stage, net),
                  train_mask={}, seed_parts=(stage.seed, "probe", stage.level, stage.data.name),
                  params=lambda n: n.head.parameters(), save_mask=False, save_model=False)
    if cfg.probe.features == "standardised":
        from . import probe

        feats = probe.standardised(net.backbone, data, rt.device, cfg.run.eval_batch_size)
        return Setup(net=probe.Linear(feats.dim, data.num_classes, head_seed), loader=feats.loader,
                     report=lambda: feats.reference(cfg.probe.optim.weight_decay) or {},
                     identity={**ident, "features": "standardised"}, **common)
    net.new_head(data.num_classes, head_seed)
    net = models.FrozenBackbone(net)
    frozen = {k: v.detach().clone() for k, v in net.backbone.state_dict().items()}

    def unchanged(trained_net):
        now = trained_net.backbone.state_dict()
        if any(not torch.equal(frozen[k], now[k].cpu()) for k in frozen):
            raise RuntimeError(f"{stage.label}: the frozen backbone changed during probing")

    return Setup(net=net, identity=ident, check=unchanged, **common)


def run_svm(stage: Svm, rt: Runtime, progress: Progress, interrupt=None) -> dict:
    """Linear SVMs on IMP level L's frozen features (sslprune.compute.svm). No training loop: features
    of both splits, then the SVMs. It is short, so an interrupted run simply starts again; only
    result.json (and config.json) are written."""
    from . import svm

    cfg, sv = stage.cfg, stage.cfg.svm
    data = dataset.load(stage.data)
    net = trained(stage, data)
    if rt.is_writer:
        files.write_json({"chain": chain_identity(cfg, stage.signal), "stage": "svm",
                          "data": identity(stage.data), **stage.settings()}, stage.dir / "config.json")
    # Every rank computes the same numbers (no sharding): the stage is short, rank 0 writes.
    split = {}
    for name in ("train", "test"):
        split[name] = svm.features(net.backbone, data, name, rt.device, cfg.run.eval_batch_size)
        progress.note(f"{name} features: {split[name][0].shape[0]} x {split[name][0].shape[1]}")
    (train_x, train_t), (test_x, test_t) = split["train"], split["test"]
    result = svm.evaluate(train_x, train_t, test_x, test_t, sv.costs, sv.folds, seeds.derive(stage.seed, "svm"),
                          getattr(data, "classes", ()), jobs=cfg.run.threads or None, note=progress.note,
                          features=sv.features)
    mask = _evaluated_mask(stage, net)
    # The SVMs are one linear map from the features to the classes: the head's cost.
    return {**result, "remaining": masks.density(mask), "evaluation": stage.evaluation,
            **cost(cfg, data, data.num_classes, mask)}


def prepare_finetune(stage: Finetune, rt: Runtime) -> Setup:
    """Every weight of IMP level L's network fine-tuned on a target data set, its mask kept."""
    cfg = stage.cfg
    imp = stage.parents()[0]
    data = dataset.load(stage.data)
    task = tasks.labels(data)  # MultiLabel on VOC07
    net = trained(stage, data)
    net.new_head(task.num_outputs, seeds.generator(stage.seed, "finetune-head", stage.data.name))
    mask = checkpoint.load(imp.dir / "mask.pt")

    def pruned_stay_zero(tuned):
        params = dict(tuned.named_parameters())
        if any(bool((params[n].detach().cpu()[m == 0] != 0).any()) for n, m in mask.items()):
            raise RuntimeError(f"{stage.label}: a pruned weight is non-zero after fine-tuning")

    return Setup(net=net, task=task, data=data, optim=cfg.finetune.optim, mask=mask,
                 seed_parts=(stage.seed, "finetune", stage.level, stage.data.name),
                 identity={"stage": "finetune", "data": identity(stage.data),
                           "optim": identity(cfg.finetune.optim)},
                 check=pruned_stay_zero)
