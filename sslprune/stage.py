"""The kinds of stage (IMP level, re-training, probe, SVM, fine-tuning), each a self-contained,
resumable job writing into its own directory.

Store layout (open_lth style: hashes name what changes the numbers, seeds and levels are path parts):

    <store>/imp/<chain>/seed_<s>/level_<L>/             IMP level L (level 0 = dense pretraining)
        mask.pt sparsity_report.json model.pt result.json [rewind.pt at level 0] [checkpoint.pt while running]
    .../level_0/label_subset.json                       the label subset a labels/s4l signal uses (if any)
    .../level_<L>/retrain_<hash>/<scheme>/              re-training of that mask on labels
    .../level_<L>/probe_<hash>/                         linear probe of that level's weights
    .../level_<L>/svm_<hash>/                           linear SVMs on that level's frozen features (VOC07)
    .../level_<L>/finetune_<hash>/                      full fine-tuning of that level's network, mask kept

`result.json` is written last: a stage with it is done and is never recomputed; a stage without
it resumes from its checkpoint. A stage whose parent is not done fails at once naming the path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
import torch

from . import checkpoint, dataset, monitor as monitors, loader as loaders, mask as masks, model as models, seed as seeds, task as tasks
from . import subset as subsets
from .config import Config, DataConfig, OptimConfig, SignalConfig, digest, identity, rewind_steps, \
    signal_data, signal_prune
from .progress import Progress, clock
from .runtime import Runtime
from .trainer import Fit, evaluate, fit

DONE = "result.json"


class MissingInput(FileNotFoundError):
    pass


def chain_identity(cfg: Config, signal: str) -> dict:
    s: SignalConfig = cfg.signals[signal]
    out = {"data": identity(signal_data(cfg, signal)), "model": identity(cfg.model), "task": identity(s.task),
           "optim": identity(s.optim), "prune": identity(signal_prune(cfg, signal))}
    if s.init_from is not None:  # pruning during transfer: the pretrained source is part of what it is
        out["init_from"] = chain_identity(cfg, s.init_from)
    return out


class Stage:
    kind = ""

    def __init__(self, cfg: Config, signal: str, seed: int, level: int):
        self.cfg, self.signal, self.seed, self.level = cfg, signal, seed, level
        self.store = Path(cfg.store)

    # --- identity and files
    @property
    def chain_dir(self) -> Path:
        return self.store / "imp" / digest(chain_identity(self.cfg, self.signal))

    @property
    def level_dir(self) -> Path:
        return self.chain_dir / f"seed_{self.seed}" / f"level_{self.level}"

    @property
    def dir(self) -> Path:
        raise NotImplementedError

    def done(self) -> bool:
        return (self.dir / DONE).exists()

    def result(self) -> dict:
        return checkpoint.read_json(self.dir / DONE)

    def parents(self) -> list["Stage"]:
        return []

    def key(self) -> str:
        return str(self.dir)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.signal} seed={self.seed} level={self.level}"

    @property
    def evaluation(self) -> str:
        """The `evaluation` column of results.csv: pretext, a re-training start, or probe:<dataset>."""
        raise NotImplementedError

    def require_parents(self) -> None:
        for p in self.parents():
            if not p.done():
                raise MissingInput(
                    f"{self.label} needs {p.label}, which is not done: expected {p.dir / DONE}. "
                    "Run that stage first (or run the whole experiment with sslprune-run).")

    # --- running
    def run(self, rt: Runtime, interrupt=None) -> dict:
        """Run (or resume) this stage; a done stage returns its stored result without work."""
        if self.done():
            return self.result()
        self.require_parents()
        monitor = monitors.open_for(self, rt)
        progress = Progress(self.label, quiet=self.cfg.run.quiet, sinks=[monitor])
        t0 = time.monotonic()
        try:
            result = self._run(rt, progress, interrupt)
        except BaseException as e:
            monitor.fail(e)
            raise
        result.update({"kind": self.kind, "signal_task": self.cfg.signals[self.signal].task.name,
                       "seed": self.seed, "level": self.level, "seconds": round(time.monotonic() - t0, 3)})
        if rt.is_writer:
            checkpoint.write_json(result, self.dir / DONE)
            (self.dir / "checkpoint.pt").unlink(missing_ok=True)  # the final weights are in model.pt
        monitor.finish(result)
        progress.note(f"done: accuracy {result['accuracy']:.4f} in {clock(time.monotonic() - t0)}")
        return result

    def prepare(self, rt: Runtime) -> "Setup":
        """Everything training starts from: network (weights loaded), mask, task, data, schedule start."""
        raise NotImplementedError

    def _run(self, rt: Runtime, progress: Progress, interrupt=None) -> dict:
        s = self.prepare(rt)
        if rt.is_writer:
            checkpoint.write_json({"chain": chain_identity(self.cfg, self.signal), **s.identity},
                                  self.dir / "config.json")
            if s.save_mask and not (self.dir / "mask.pt").exists():
                checkpoint.write_json(masks.report(s.mask), self.dir / "sparsity_report.json")
                checkpoint.save(s.mask, self.dir / "mask.pt")
        net = s.net.to(rt.device)
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
            model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        params = s.params(net) if s.params else None
        job = Fit(model=model, net=net, task=s.task, loader=loader, optim=s.optim, mask=s.train_mask,
                  checkpoint=self.dir / "checkpoint.pt", start_step=s.start(loader) if s.start else 0,
                  params=params, hooks=[h(loader) for h in s.hooks], interrupt=interrupt)
        info = fit(job, self.cfg.run, progress, rt.is_writer)
        metrics = evaluate(net, s.task, loader, self.cfg.run.eval_batch_size, self.cfg.run.amp)
        if s.check:
            s.check(net)
        if rt.is_writer and s.save_model:
            checkpoint.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, self.dir / "model.pt")
        return {**info, **metrics, "remaining": masks.density(s.mask), "evaluation": self.evaluation}


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

    def __post_init__(self):
        if self.train_mask is None:
            self.train_mask = self.mask


class ImpLevel(Stage):
    """Level L of iterative magnitude pruning, driven by the signal's own task loss."""

    kind = "imp"
    evaluation = "pretext"

    @property
    def dir(self) -> Path:
        return self.level_dir

    def parents(self):
        if self.level > 0:
            return [ImpLevel(self.cfg, self.signal, self.seed, self.level - 1)]
        source = self.cfg.signals[self.signal].init_from
        return [ImpLevel(self.cfg, source, self.seed, 0)] if source is not None else []

    def rewind_file(self) -> Path:
        return ImpLevel(self.cfg, self.signal, self.seed, 0).dir / "rewind.pt"

    def label_subset(self, data, rt):
        """The signal's data restricted to its label subset, drawn once and saved at level 0
        (label_subset.json): later levels and resumed runs read it back, so the chain keeps the
        images it started with, and a file that disagrees with the config is an error."""
        task = self.cfg.signals[self.signal].task
        path = ImpLevel(self.cfg, self.signal, self.seed, 0).dir / subsets.FILE
        indices = subsets.saved(path, task, loaders.train_labels(data), data.num_classes,
                                write=rt.is_writer, must_exist=self.level > 0)
        return subsets.restrict(data, task, indices)

    def prepare(self, rt):
        cfg, sig = self.cfg, self.cfg.signals[self.signal]
        prune = signal_prune(cfg, self.signal)
        data = dataset.load(signal_data(cfg, self.signal))
        if sig.task.label_fraction < 1:
            data = self.label_subset(data, rt)
        task = tasks.make(sig.task, data)
        net = models.build(cfg.model, data.channels, task.num_outputs, seeds.derive(self.seed, "init"))
        rewind_file = self.rewind_file()

        def k_of(loader) -> int:
            spe = loader.steps_per_epoch
            return rewind_steps(prune.rewind, spe, sig.optim.batch_size, sig.optim.epochs * spe)

        hooks, start, task_state = [], None, None
        if self.level == 0:
            if sig.init_from is not None:
                # Pruning during transfer: start from the source signal's trained dense network, keep
                # its backbone, and put a fresh head for this task on it.
                trained = checkpoint.load(self.parents()[0].dir / "model.pt")
                net.load_state_dict({**net.state_dict(), **{k: v for k, v in trained.items()
                                                              if k.startswith("backbone.")}})
                net.new_head(task.num_outputs, seeds.generator(self.seed, "transfer-head"))
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
            parent = self.parents()[0]
            mask = masks.magnitude(checkpoint.load(parent.dir / "model.pt"), checkpoint.load(parent.dir / "mask.pt"),
                                   prune.rate)
            rewound = checkpoint.load(rewind_file)
            net.load_state_dict(rewound["model"])
            task_state = rewound.get("task") or None
            start = k_of
        return Setup(net=net, task=task, data=data, optim=sig.optim, mask=mask, seed_parts=(self.seed, "imp", self.level),
                     identity={"stage": "imp", "level": self.level}, start=start, hooks=hooks,
                     task_state=task_state)


class Retrain(Stage):
    """Re-train the mask of IMP level L on labels from one of three starts."""

    kind = "retrain"

    def __init__(self, cfg, signal, seed, level, scheme: str):
        super().__init__(cfg, signal, seed, level)
        self.scheme = scheme

    @property
    def dir(self) -> Path:
        r = self.cfg.retrain
        return self.level_dir / f"retrain_{digest(r.data, r.optim)}" / self.scheme

    @property
    def label(self) -> str:
        return f"retrain {self.signal} {self.scheme} seed={self.seed} level={self.level}"

    @property
    def evaluation(self) -> str:
        return self.scheme

    def parents(self):
        return [ImpLevel(self.cfg, self.signal, self.seed, self.level)]

    def prepare(self, rt):
        cfg, r = self.cfg, self.cfg.retrain
        imp = self.parents()[0]
        data = dataset.load(r.data)
        task = tasks.labels(data)
        mask = checkpoint.load(imp.dir / "mask.pt")
        # Fresh weights for both random starts come from one seed, so they differ only in the mask.
        net = models.build(cfg.model, data.channels, task.num_outputs, seeds.derive(self.seed, "reinit"))
        if self.scheme == "random":
            mask = masks.shuffled(mask, seeds.generator(self.seed, "random-mask", self.level))
        elif self.scheme == "random_adjusted":
            # Random, but the weights the trained dense network (level 0) has at zero are removed first.
            dense = checkpoint.load(ImpLevel(cfg, self.signal, self.seed, 0).dir / "model.pt")
            mask = masks.adjusted_random(mask, dense, seeds.generator(self.seed, "adjusted-mask", self.level))
        elif self.scheme == "winning_ticket":
            rewound = checkpoint.load(imp.rewind_file())["model"]
            backbone = {k: v for k, v in rewound.items() if k.startswith("backbone.")}
            net.load_state_dict({**net.state_dict(), **backbone})
            net.new_head(task.num_outputs, seeds.generator(self.seed, "head"))
        # All three starts see the same batches: they differ only in mask and initial weights.
        return Setup(net=net, task=task, data=data, optim=r.optim, mask=mask,
                     seed_parts=(self.seed, "retrain", self.level),
                     identity={"stage": "retrain", "scheme": self.scheme, "data": identity(r.data),
                               "optim": identity(r.optim)})


class Evaluation(Stage):
    """A measurement of IMP level L's trained network on a data set: probe, SVM or fine-tuning.

    Its directory is `<kind>_<hash of the data set and the settings>` under the level, its
    evaluation label `<kind>:<data set>`."""

    def __init__(self, cfg, signal, seed, level, data: DataConfig):
        super().__init__(cfg, signal, seed, level)
        self.data = data

    def settings(self):
        """What, besides the data set, changes this evaluation's numbers."""
        raise NotImplementedError

    @property
    def dir(self) -> Path:
        return self.level_dir / f"{self.kind}_{digest(self.data, self.settings())}"

    @property
    def label(self) -> str:
        return f"{self.evaluation} {self.signal} seed={self.seed} level={self.level}"

    @property
    def evaluation(self) -> str:
        return f"{self.kind}:{self.data.name}"

    def parents(self):
        return [ImpLevel(self.cfg, self.signal, self.seed, self.level)]

    def trained(self, data) -> models.Network:
        """IMP level L's network (its mask is already applied to the saved weights), for `data`'s images."""
        trained = checkpoint.load(self.parents()[0].dir / "model.pt")
        net = models.build(self.cfg.model, data.channels, trained["head.weight"].shape[0], 0)
        net.load_state_dict(trained)
        return net


class Probe(Evaluation):
    """Linear classifier on the frozen penultimate features of IMP level L's weights."""

    kind = "probe"

    def settings(self):
        return self.cfg.probe.optim

    def prepare(self, rt):
        cfg = self.cfg
        imp = self.parents()[0]
        data = dataset.load(self.data)
        net = self.trained(data)
        net.new_head(data.num_classes, seeds.generator(self.seed, "probe-head", self.data.name))
        net = models.FrozenBackbone(net)
        frozen = {k: v.detach().clone() for k, v in net.backbone.state_dict().items()}

        def unchanged(trained_net):
            now = trained_net.backbone.state_dict()
            if any(not torch.equal(frozen[k], now[k].cpu()) for k in frozen):
                raise RuntimeError(f"{self.label}: the frozen backbone changed during probing")

        return Setup(net=net, task=tasks.labels(data), data=data, optim=cfg.probe.optim,
                     mask=checkpoint.load(imp.dir / "mask.pt"), train_mask={},
                     seed_parts=(self.seed, "probe", self.level, self.data.name),
                     identity={"stage": "probe", "data": identity(self.data), "optim": identity(cfg.probe.optim)},
                     params=lambda n: n.head.parameters(), check=unchanged, save_mask=False, save_model=False)


class Svm(Evaluation):
    """Linear SVMs, one per class, on the frozen penultimate features of IMP level L's weights (sslprune.svm).

    No training loop: features of both splits, then the SVMs. It is short, so an interrupted run
    simply starts again; only result.json (and config.json) are written."""

    kind = "svm"

    def settings(self):
        return {"costs": list(self.cfg.svm.costs), "folds": self.cfg.svm.folds}

    def _run(self, rt, progress, interrupt=None) -> dict:
        from . import svm

        cfg, sv = self.cfg, self.cfg.svm
        imp = self.parents()[0]
        data = dataset.load(self.data)
        net = self.trained(data)
        if rt.is_writer:
            checkpoint.write_json({"chain": chain_identity(cfg, self.signal), "stage": "svm",
                                   "data": identity(self.data), "costs": list(sv.costs), "folds": sv.folds},
                                  self.dir / "config.json")
        # Every rank computes the same numbers (no sharding): the stage is short, rank 0 writes.
        split = {}
        for name in ("train", "test"):
            split[name] = svm.features(net.backbone, data, name, rt.device, cfg.run.eval_batch_size)
            progress.note(f"{name} features: {split[name][0].shape[0]} x {split[name][0].shape[1]}")
        (train_x, train_t), (test_x, test_t) = split["train"], split["test"]
        result = svm.evaluate(train_x, train_t, test_x, test_t, sv.costs, sv.folds, seeds.derive(self.seed, "svm"),
                              getattr(data, "classes", ()), jobs=cfg.run.threads or None, note=progress.note)
        mask = checkpoint.load(imp.dir / "mask.pt")
        return {**result, "remaining": masks.density(mask), "evaluation": self.evaluation}


class Finetune(Evaluation):
    """Fine-tune every weight of IMP level L's network on a target data set, its mask kept (VOC07)."""

    kind = "finetune"

    def settings(self):
        return self.cfg.finetune.optim

    def prepare(self, rt):
        cfg = self.cfg
        imp = self.parents()[0]
        data = dataset.load(self.data)
        task = tasks.labels(data)  # MultiLabel on VOC07
        net = self.trained(data)
        net.new_head(task.num_outputs, seeds.generator(self.seed, "finetune-head", self.data.name))
        mask = checkpoint.load(imp.dir / "mask.pt")

        def pruned_stay_zero(tuned):
            params = dict(tuned.named_parameters())
            if any(bool((params[n].detach().cpu()[m == 0] != 0).any()) for n, m in mask.items()):
                raise RuntimeError(f"{self.label}: a pruned weight is non-zero after fine-tuning")

        return Setup(net=net, task=task, data=data, optim=cfg.finetune.optim, mask=mask,
                     seed_parts=(self.seed, "finetune", self.level, self.data.name),
                     identity={"stage": "finetune", "data": identity(self.data),
                               "optim": identity(cfg.finetune.optim)},
                     check=pruned_stay_zero)
