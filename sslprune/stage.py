"""The three kinds of stage, each a self-contained, resumable job writing into its own directory.

Store layout (open_lth style: hashes name what changes the numbers, seeds and levels are path parts):

    <store>/imp/<chain>/seed_<s>/level_<L>/             IMP level L (level 0 = dense pretraining)
        mask.pt sparsity_report.json model.pt result.json [rewind.pt at level 0] [checkpoint.pt while running]
    .../level_<L>/retrain_<hash>/<scheme>/              re-training of that mask on labels
    .../level_<L>/probe_<hash>/                         linear probe of that level's weights

`result.json` is written last: a stage with it is done and is never recomputed; a stage without
it resumes from its checkpoint. A stage whose parent is not done fails at once naming the path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
import torch

from . import checkpoint, dataset, loader as loaders, mask as masks, model as models, seed as seeds, task as tasks
from .config import Config, DataConfig, OptimConfig, SignalConfig, digest, identity, rewind_steps
from .progress import Progress, clock
from .runtime import Runtime
from .trainer import Fit, evaluate, fit

DONE = "result.json"


class MissingInput(FileNotFoundError):
    pass


def chain_identity(cfg: Config, signal: str) -> dict:
    s: SignalConfig = cfg.signals[signal]
    return {"data": identity(cfg.data), "model": identity(cfg.model), "task": identity(s.task),
            "optim": identity(s.optim), "prune": identity(cfg.prune)}


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

    def require_parents(self) -> None:
        for p in self.parents():
            if not p.done():
                raise MissingInput(
                    f"{self.label} needs {p.label}, which is not done: expected {p.dir / DONE}. "
                    "Run that stage first (or run the whole experiment with sslprune-run).")

    # --- running
    def run(self, rt: Runtime) -> dict:
        """Run (or resume) this stage; a done stage returns its stored result without work."""
        if self.done():
            return self.result()
        self.require_parents()
        progress = Progress(self.label, quiet=self.cfg.run.quiet)
        t0 = time.monotonic()
        result = self._run(rt, progress)
        result.update({"kind": self.kind, "signal_task": self.cfg.signals[self.signal].task.name,
                       "seed": self.seed, "level": self.level, "seconds": round(time.monotonic() - t0, 3)})
        if rt.is_writer:
            checkpoint.write_json(result, self.dir / DONE)
            (self.dir / "checkpoint.pt").unlink(missing_ok=True)  # the final weights are in model.pt
        progress.note(f"done: accuracy {result['accuracy']:.4f} in {clock(time.monotonic() - t0)}")
        return result

    def _run(self, rt: Runtime, progress: Progress) -> dict:
        raise NotImplementedError

    def _write_config(self, rt: Runtime, extra: dict) -> None:
        if rt.is_writer:
            checkpoint.write_json({"chain": chain_identity(self.cfg, self.signal), **extra}, self.dir / "config.json")

    def _train(self, rt: Runtime, progress: Progress, net, task, data, optim: OptimConfig, mask, seed_parts,
               start_step=0, hooks=(), params=None) -> dict:
        loader = loaders.make(data, optim.batch_size, seeds.derive(*seed_parts), rt.device, rt.rank, rt.world,
                              rt.channels_last)
        start_step = start_step(loader) if callable(start_step) else start_step  # rewinding needs steps/epoch
        if rt.channels_last:
            net = net.to(memory_format=torch.channels_last)
        model = net
        if rt.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        job = Fit(model=model, net=net, task=task, loader=loader, optim=optim, mask=mask,
                  checkpoint=self.dir / "checkpoint.pt", start_step=start_step, params=params,
                  hooks=[h(loader) for h in hooks])
        info = fit(job, self.cfg.run, progress, rt.is_writer)
        metrics = evaluate(net, task, loader, self.cfg.run.eval_batch_size, self.cfg.run.amp)
        return {**info, **metrics}


def _remaining(mask: masks.Mask) -> float:
    return masks.density(mask)


class ImpLevel(Stage):
    """Level L of iterative magnitude pruning, driven by the signal's own task loss."""

    kind = "imp"

    @property
    def dir(self) -> Path:
        return self.level_dir

    def parents(self):
        return [ImpLevel(self.cfg, self.signal, self.seed, self.level - 1)] if self.level > 0 else []

    def rewind_file(self) -> Path:
        return ImpLevel(self.cfg, self.signal, self.seed, 0).dir / "rewind.pt"

    def _run(self, rt, progress):
        cfg, sig = self.cfg, self.cfg.signals[self.signal]
        data = dataset.load(cfg.data)
        task = tasks.make(sig.task, data.num_classes)
        net = models.build(cfg.model, data.channels, task.num_outputs, seeds.derive(self.seed, "init")).to(rt.device)
        rewind_file = self.rewind_file()

        def k_of(loader) -> int:
            spe = loader.steps_per_epoch
            return rewind_steps(cfg.prune.rewind, spe, sig.optim.batch_size, sig.optim.epochs * spe)

        if self.level == 0:
            mask = masks.ones(net, cfg.prune.ignore)
            start = 0

            def save_rewind(loader):
                k = k_of(loader)

                def hook(step, module):
                    if step == k and rt.is_writer and not rewind_file.exists():
                        checkpoint.save({"model": module.state_dict(), "step": k}, rewind_file)
                return hook
            hooks = [save_rewind]
        else:
            parent = self.parents()[0]
            mask = masks.magnitude(checkpoint.load(parent.dir / "model.pt"), checkpoint.load(parent.dir / "mask.pt"),
                                   cfg.prune.rate)
            rewound = checkpoint.load(rewind_file, rt.device)
            net.load_state_dict(rewound["model"])
            start, hooks = k_of, []
        self._write_config(rt, {"stage": "imp", "level": self.level})
        if rt.is_writer and not (self.dir / "mask.pt").exists():
            checkpoint.write_json(masks.report(mask), self.dir / "sparsity_report.json")
            checkpoint.save(mask, self.dir / "mask.pt")
        out = self._train(rt, progress, net, task, data, sig.optim, mask, (self.seed, "imp", self.level),
                          start_step=start, hooks=hooks)
        if rt.is_writer:
            checkpoint.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, self.dir / "model.pt")
        return {**out, "remaining": _remaining(mask), "evaluation": "pretext"}


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

    def parents(self):
        return [ImpLevel(self.cfg, self.signal, self.seed, self.level)]

    def _run(self, rt, progress):
        cfg, r = self.cfg, self.cfg.retrain
        imp = self.parents()[0]
        data = dataset.load(r.data)
        task = tasks.Labels(data.num_classes)
        mask = checkpoint.load(imp.dir / "mask.pt")
        # Fresh weights for both random starts come from one seed, so they differ only in the mask.
        net = models.build(cfg.model, data.channels, task.num_outputs, seeds.derive(self.seed, "reinit"))
        if self.scheme == "random":
            mask = masks.shuffled(mask, seeds.generator(self.seed, "random-mask", self.level))
        elif self.scheme == "winning_ticket":
            rewound = checkpoint.load(imp.rewind_file())["model"]
            backbone = {k: v for k, v in rewound.items() if k.startswith("backbone.")}
            net.load_state_dict({**net.state_dict(), **backbone})
            net.new_head(task.num_outputs, seeds.generator(self.seed, "head"))
        net = net.to(rt.device)
        self._write_config(rt, {"stage": "retrain", "scheme": self.scheme, "data": identity(r.data),
                                "optim": identity(r.optim)})
        if rt.is_writer and not (self.dir / "mask.pt").exists():
            checkpoint.save(mask, self.dir / "mask.pt")
            checkpoint.write_json(masks.report(mask), self.dir / "sparsity_report.json")
        out = self._train(rt, progress, net, task, data, r.optim, mask, (self.seed, "retrain", self.level))
        if rt.is_writer:
            checkpoint.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, self.dir / "model.pt")
        return {**out, "remaining": _remaining(mask), "evaluation": self.scheme}


class Probe(Stage):
    """Linear classifier on the frozen penultimate features of IMP level L's weights."""

    kind = "probe"

    def __init__(self, cfg, signal, seed, level, data: DataConfig):
        super().__init__(cfg, signal, seed, level)
        self.data = data

    @property
    def dir(self) -> Path:
        return self.level_dir / f"probe_{digest(self.data, self.cfg.probe.optim)}"

    @property
    def label(self) -> str:
        return f"probe:{self.data.name} {self.signal} seed={self.seed} level={self.level}"

    def parents(self):
        return [ImpLevel(self.cfg, self.signal, self.seed, self.level)]

    def _run(self, rt, progress):
        cfg = self.cfg
        imp = self.parents()[0]
        data = dataset.load(self.data)
        trained = checkpoint.load(imp.dir / "model.pt")
        pretext = tasks.make(cfg.signals[self.signal].task, data.num_classes)
        net = models.build(cfg.model, data.channels, trained["head.weight"].shape[0], 0)
        net.load_state_dict(trained)
        net.new_head(data.num_classes, seeds.generator(self.seed, "probe-head", self.data.name))
        net = models.FrozenBackbone(net).to(rt.device)
        before = [v.detach().clone() for v in net.backbone.state_dict().values()]
        self._write_config(rt, {"stage": "probe", "data": identity(self.data), "optim": identity(cfg.probe.optim),
                                "pretext": pretext.name})
        out = self._train(rt, progress, net, tasks.Labels(data.num_classes), data, cfg.probe.optim, {},
                          (self.seed, "probe", self.level, self.data.name), params=net.head.parameters())
        after = list(net.backbone.state_dict().values())
        if any(not torch.equal(a, b) for a, b in zip(before, after)):
            raise RuntimeError(f"{self.label}: the frozen backbone changed during probing")
        return {**out, "remaining": _remaining(checkpoint.load(imp.dir / "mask.pt")),
                "evaluation": f"probe:{self.data.name}"}
