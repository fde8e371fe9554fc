"""Where a stage starts from, as plain data (torch-free).

`of(stage)` says, for every kind of stage, what its training (or evaluation) is built from: which
weights (a fresh network from which seed, a parent's model.pt, the rewind point rewind.pt, the
transfer source's trained network), which mask (none kept back, a parent's, IMP's count of weights
drawn at random from which seed, layerwise), the head (kept, or fresh from which seed), which
parameters train, the schedule's first step, when the rewind point is saved, which checks the result must pass, and
which data, task and inputs. The compute plane turns the record into a network, a mask, a task,
data and a loop (sslprune.compute.runner.build), and nothing else decides how a stage starts: the
difference between a winning ticket, a random re-init and a random mask is the difference between
their records (`table` prints them side by side; tests/test_records.py pins the demo's).

Seeds are the parts of a derived seed (sslprune.compute.seed.derive joins them), kept as parts so a
record says what the draw depends on; files are absolute paths in the store.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

from .identity import chain_identity, identity
from .schema import DataConfig, ModelConfig, OptimConfig, TaskConfig
from .stage import Evaluation, Finetune, ImpLevel, Probe, Retrain, Stage, Svm
from .sweep import signal_data, signal_prune

LABELS = TaskConfig("labels")  # the supervised task of the data set's own labels (multi-label on VOC07)
# What a result may be checked for: a probe's backbone is bit for bit as loaded (weights and batch-norm
# statistics), a fine-tuned network keeps every pruned weight at zero.
CHECKS = ("backbone frozen", "pruned stay zero")


@dataclass(frozen=True)
class Weights:
    """A network built from `seed` (the parts of a derived seed), then the tensors of `load` put in:
    `part` "all", "backbone" (the built network keeps its head) or "pretrained" (a checkpoint of any
    common layout mapped onto the backbone: sslprune.compute.pretrained). `seed` None: no draw of its
    own, every tensor comes from `load` (built from seed 0 with the file's head size). `key`: the
    entry of `load` holding the weights (rewind.pt holds {"model", "step", "task"}; a pretrained
    file: model.weights_key, None = found from its layout)."""

    seed: Optional[tuple]
    load: Optional[str] = None
    key: Optional[str] = None
    part: str = "all"


@dataclass(frozen=True)
class Masking:
    """The mask the stage's weights live under (its density is the result's `remaining`).

    `rule`: "ones" (every weight IMP may prune kept, the names from `ignore` and `scope`: layerwise
    pruning keeps the layers up to that cut point), "file" (`file` as saved), "magnitude" (`file`
    with `rate` of its survivors of smallest |w| in `weights` removed), "adjusted" (`file`'s count drawn
    at random after the weights `weights` has at zero, from `seed`), "drawn" (as many of the weights
    "ones" keeps as `level` levels of pruning at `rate` leave, at random from `seed`: no file, so one
    draw serves every signal). `applied`: the loop keeps pruned weights at zero; False where the stage
    only reports it (a probe trains its head alone)."""

    rule: str
    file: Optional[str] = None
    weights: Optional[str] = None
    rate: Optional[float] = None
    seed: Optional[tuple] = None
    ignore: tuple = ()
    scope: str = "all"
    applied: bool = True
    level: Optional[int] = None


@dataclass(frozen=True)
class Start:
    """What one stage computes from, as data; see the module docstring."""

    label: str  # the stage's label (error messages)
    kind: str  # imp, retrain, probe, svm, finetune
    model: ModelConfig
    data: DataConfig
    task: Optional[TaskConfig]  # None: no training task (SVMs)
    weights: Weights
    head: str  # "keep" (the head the weights come with), "fresh" (drawn from head_seed), "unused" (SVMs)
    head_seed: Optional[tuple]
    mask: Masking
    trains: str  # "all" parameters, the "head" alone (the backbone frozen in eval mode), "none"
    inputs: str  # "images" (the loader's augmented batches), "standardised features" (computed once:
    #              the head is a linear map on them), "features" (SVMs on both splits, no loop)
    optim: Optional[OptimConfig]
    batches: tuple  # seed parts of the data order and augmentation (SVMs: of the cross-validation)
    first_step: str  # "0", or "k": the rewind point, the schedule resumes there (late resetting)
    rewind: Optional[str]  # the rewind point k is resolved from (prune.rewind: "1ep", "11it", "3.3%")
    save_rewind: Optional[str]  # where the weights and task state at step k are saved during training
    task_state: Optional[str]  # a file whose "task" entry the task starts from (NPID's bank at k)
    subset: Optional[str]  # label_subset.json of a label fraction < 1
    subset_drawn: bool  # the subset is drawn here (level 0) if absent; else it must exist
    checks: tuple  # "backbone frozen", "pruned stay zero": what the result must pass
    saves: tuple  # model files the stage writes besides result.json and config.json
    config: dict  # config.json: what the stage's numbers depend on
    # "end" of the schedule, or "k": a pretrained level 0 trains only to the rewind point (to save W_k)
    # and its result (model.pt, the test metrics) is the network as loaded, W_0.
    until: str = "end"


def of(stage: Stage) -> Start:
    """The record of `stage` (any kind)."""
    if isinstance(stage, ImpLevel):
        return _imp(stage)
    if isinstance(stage, Retrain):
        return _retrain(stage)
    if isinstance(stage, (Probe, Svm, Finetune)):
        return _evaluation(stage)
    raise ValueError(f"{stage.label}: no start record for stage kind {stage.kind!r}")


def init_seed(stage: Stage) -> tuple:
    """The seed of a chain's initial weights. `per_signal` (model.init): from the seed and the signal's
    base name, so two signals start from independent weights as in the paper, while the scope and
    rewind sweeps of one signal (rotnet@stage1, rotnet@0it: the part before the first @) share their
    dense initialisation and their level 0 trains the same network. `shared`: one start per seed."""
    if stage.cfg.model.init == "shared":
        return (stage.seed, "init")
    return (stage.seed, "init", stage.signal.split("@")[0])


def _file(stage: Stage, name: str) -> str:
    return str(stage.dir / name)


def _imp(stage: ImpLevel) -> Start:
    """Level 0: the dense network from its initialisation (pruning during transfer: the source's
    trained backbone, a fresh head; a pretrained start: the file's backbone, trained only to k);
    level L: the previous level's trained weights pruned, the survivors rewound to W_k and the
    schedule resumed at k (late resetting)."""
    cfg, sig = stage.cfg, stage.cfg.signals[stage.signal]
    prune = signal_prune(cfg, stage.signal)
    level0 = ImpLevel(cfg, stage.signal, stage.seed, 0)
    rewind = str(stage.rewind_file())
    common = dict(label=stage.label, kind="imp", model=cfg.model, data=signal_data(cfg, stage.signal), task=sig.task,
                  trains="all", inputs="images", optim=sig.optim, batches=(stage.seed, "imp", stage.level),
                  rewind=prune.rewind, subset=_file(level0, "label_subset.json") if sig.task.label_fraction < 1 else None,
                  subset_drawn=stage.level == 0, checks=(),
                  saves=("mask.pt", "model.pt") + (("weights.json",) if stage.level == 0 else ()),
                  config={"chain": chain_identity(cfg, stage.signal), "stage": "imp", "level": stage.level})
    if stage.level == 0:
        ones = Masking("ones", ignore=tuple(prune.ignore), scope=prune.scope)
        if sig.init_from is not None:
            source = _file(stage.parents()[0], "model.pt")
            weights, head, head_seed = Weights(init_seed(stage), source, part="backbone"), "fresh", \
                (stage.seed, "transfer-head")
        elif cfg.model.weights is not None:
            # A pretrained start: level 0 is the loaded network (its head drawn from the seed, sized by
            # the task), not trained; it only runs to the rewind point k to save W_k (k = 0: the file).
            weights = Weights(init_seed(stage), cfg.model.weights, key=cfg.model.weights_key, part="pretrained")
            return Start(weights=weights, head="keep", head_seed=None, mask=ones, first_step="0",
                         save_rewind=rewind, task_state=None, until="k", **common)
        else:
            weights, head, head_seed = Weights(init_seed(stage)), "keep", None
        return Start(weights=weights, head=head, head_seed=head_seed, mask=ones, first_step="0",
                     save_rewind=rewind, task_state=None, **common)
    parent = stage.parents()[0]
    mask = Masking("magnitude", file=_file(parent, "mask.pt"), weights=_file(parent, "model.pt"), rate=prune.rate)
    return Start(weights=Weights(init_seed(stage), rewind, key="model"), head="keep", head_seed=None, mask=mask,
                 first_step="k", save_rewind=None, task_state=rewind, **common)


def _retrain(stage: Retrain) -> Start:
    """The mask of IMP level L re-trained on labels from the stage's scheme: winning ticket (rewound
    backbone, fresh head), random re-init (fresh weights), random (IMP's count of weights drawn at
    random, fresh weights: one stage for every signal), random adjusted (a random mask avoiding the
    dense network's zeros, fresh weights). All see the same batches: they differ only in mask and
    initial weights."""
    cfg, r = stage.cfg, stage.cfg.retrain
    config = {"stage": "retrain", "scheme": "dense" if stage.dense else stage.scheme, "data": identity(r.data),
              "optim": identity(r.optim)}
    if stage.shared and not stage.dense:  # the random mask of every signal: what its count depends on
        config = {"model": identity(cfg.model), "prune": stage.mask_spec(), "level": stage.level, **config}
    elif not stage.shared:
        config = {"chain": chain_identity(cfg, stage.signal), **config}
    common = dict(label=stage.label, kind="retrain", model=cfg.model, data=r.data, task=LABELS, trains="all",
                  inputs="images", optim=r.optim, batches=(stage.seed, "retrain", stage.level), first_step="0",
                  rewind=None, save_rewind=None, task_state=None, subset=None, subset_drawn=False, checks=(),
                  saves=("mask.pt", "model.pt"), config=config)
    # Fresh weights for every random start come from one seed, so they differ only in the mask.
    fresh = Weights((stage.seed, "reinit"))
    if stage.dense:  # level 0's random starts: the dense network from scratch, for every signal
        return Start(weights=fresh, head="keep", head_seed=None, mask=Masking("ones"), **common)
    if stage.shared:  # the random mask of level L, for every signal: IMP's count, drawn from the seed
        prune = signal_prune(cfg, stage.signal)
        drawn = Masking("drawn", rate=prune.rate, seed=(stage.seed, "random-mask", stage.level),
                        ignore=tuple(prune.ignore), scope=prune.scope, level=stage.level)
        return Start(weights=fresh, head="keep", head_seed=None, mask=drawn, **common)
    imp = stage.parents()[0]
    mask = _file(imp, "mask.pt")
    if stage.scheme == "winning_ticket":
        return Start(weights=Weights((stage.seed, "reinit"), str(imp.rewind_file()), key="model", part="backbone"),
                     head="fresh", head_seed=(stage.seed, "head"), mask=Masking("file", file=mask), **common)
    if stage.scheme == "random_reinit":
        masking = Masking("file", file=mask)
    elif stage.scheme == "random_adjusted":
        # Random, but the weights the trained dense network (level 0) has at zero are removed first.
        dense = _file(ImpLevel(cfg, stage.signal, stage.seed, 0), "model.pt")
        masking = Masking("adjusted", file=mask, weights=dense, seed=(stage.seed, "adjusted-mask", stage.level))
    else:
        raise ValueError(f"{stage.label}: retrain scheme {stage.scheme!r} has no start record")
    return Start(weights=fresh, head="keep", head_seed=None, mask=masking, **common)


def _evaluation(stage: Evaluation) -> Start:
    """IMP level L's trained network (its mask already applied to the saved weights), or for the
    random-features reference the chain's dense network before training, measured on a data set:
    a probe trains a fresh head on the frozen backbone (on augmented images, or on standardised
    features computed once), SVMs fit the frozen features of both splits, fine-tuning trains every
    weight with a fresh head and the mask kept."""
    cfg = stage.cfg
    name = stage.data.name
    if stage.at_init:
        # Built exactly as IMP level 0 builds it (the backbone is drawn before the head, so the
        # head's size does not change it); the head is replaced by the evaluation anyway.
        prune = signal_prune(cfg, stage.signal)
        weights, mask = Weights(init_seed(stage)), Masking("ones", ignore=tuple(prune.ignore), scope=prune.scope)
    else:
        imp = stage.parents()[0]
        weights, mask = Weights(None, _file(imp, "model.pt")), Masking("file", file=_file(imp, "mask.pt"))
    common = dict(label=stage.label, kind=stage.kind, model=cfg.model, data=stage.data, weights=weights,
                  first_step="0", rewind=None, save_rewind=None, task_state=None, subset=None, subset_drawn=False)
    if isinstance(stage, Svm):
        return Start(task=None, head="unused", head_seed=None, mask=dataclasses.replace(mask, applied=False),
                     trains="none", inputs="features", optim=None, batches=(stage.seed, "svm"), checks=(), saves=(),
                     config={"chain": chain_identity(cfg, stage.signal), "stage": "svm", "data": identity(stage.data),
                             **stage.settings()}, **common)
    if isinstance(stage, Probe):
        config = {"stage": "probe", "data": identity(stage.data), "optim": identity(cfg.probe.optim)}
        standardised = cfg.probe.features == "standardised"
        if standardised:
            config["features"] = "standardised"
        return Start(task=LABELS, head="fresh", head_seed=(stage.seed, "probe-head", name),
                     mask=dataclasses.replace(mask, applied=False), trains="head",
                     inputs="standardised features" if standardised else "images", optim=cfg.probe.optim,
                     batches=(stage.seed, "probe", stage.level, name),
                     checks=() if standardised else ("backbone frozen",), saves=(),
                     config={"chain": chain_identity(cfg, stage.signal), **config}, **common)
    return Start(task=LABELS, head="fresh", head_seed=(stage.seed, "finetune-head", name), mask=mask, trains="all",
                 inputs="images", optim=cfg.finetune.optim, batches=(stage.seed, "finetune", stage.level, name),
                 checks=("pruned stay zero",), saves=("mask.pt", "model.pt"),  # the tuned network and its mask
                 config={"chain": chain_identity(cfg, stage.signal), "stage": "finetune",
                         "data": identity(stage.data), "optim": identity(cfg.finetune.optim)}, **common)


# ---------------------------------------------------------------- reading records


COLUMNS = ("stage", "weights", "head", "mask", "trains", "data", "schedule", "checks")


def table(stages: list) -> str:
    """The records of `stages` as one text table, a row per stage. A file prints as `<signal>
    L<level> <name>` (the chain and level folder it is in), a seed as its parts joined by '/', a
    draw from one as `draw <parts>`, loaded tensors as `part <- file`."""
    names = {}
    for s in stages:
        for signal in s.cfg.signals:  # a transfer chain reads its source chain's files
            names.setdefault(os.path.normpath(str(ImpLevel(s.cfg, signal, s.seed, 0).chain_dir)), signal)
    rows = [COLUMNS] + [_row(s, of(s), names) for s in stages]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _short(path: Optional[str], names: dict) -> str:
    for chain, name in names.items():
        if path.startswith(chain + os.sep):
            _, level, file = path[len(chain) + 1:].split(os.sep, 2)
            return f"{name} L{level[len('level_'):]} {file}"
    return path


def _seed(parts: Optional[tuple]) -> str:
    return "0" if parts is None else "/".join(str(p) for p in parts)


def _stage(stage: Stage) -> str:
    if isinstance(stage, Retrain):
        what = "dense" if stage.dense else "random (shared)" if stage.shared else f"{stage.signal} {stage.scheme}"
    elif isinstance(stage, Evaluation):
        what = f"{stage.signal} {stage.data.name}" + ("@init" if stage.at_init else "")
    else:
        what = stage.signal
    return f"{stage.kind} {what} L{stage.level}"


def _row(stage: Stage, r: Start, names: dict) -> tuple:
    w, m = r.weights, r.mask
    if w.seed is None:
        weights = _short(w.load, names)
    else:
        weights = f"draw {_seed(w.seed)}" + ("" if w.load is None else f", {w.part} <- {_short(w.load, names)}")
    head = f"draw {_seed(r.head_seed)}" if r.head == "fresh" else r.head
    if m.rule == "ones":
        mask = "ones" + ("" if m.scope == "all" else f" up to {m.scope}") + \
               (f" except {','.join(m.ignore)}" if m.ignore else "")
    elif m.rule == "file":
        mask = _short(m.file, names)
    elif m.rule == "magnitude":
        mask = f"{_short(m.file, names)} less {m.rate} by |{_short(m.weights, names)}|"
    elif m.rule == "drawn":
        where = "ones" + ("" if m.scope == "all" else f" up to {m.scope}") + \
            (f" except {','.join(m.ignore)}" if m.ignore else "")
        mask = f"IMP's count after {m.level} x {m.rate} of {where} (draw {_seed(m.seed)})"
    else:
        mask = f"count of {_short(m.file, names)}, zeros of {_short(m.weights, names)} out (draw {_seed(m.seed)})"
    if not m.applied:
        mask += " reported"
    data = f"{r.data.name} {r.inputs}" + ("" if r.task is None else f" {r.task.name}") + f" ({_seed(r.batches)})"
    schedule = f"from k={r.rewind}" if r.first_step == "k" else "from 0"
    if r.save_rewind:
        schedule += f", saves k={r.rewind}"
    if r.until == "k":
        schedule += ", stops at k, keeps W_0"
    if r.trains == "none":
        schedule = "-"
    return (_stage(stage), weights, head, mask, r.trains, data, schedule, ",".join(r.checks) or "-")
