"""The configuration reference (docs/config.md), generated from the schema so it cannot drift.

Walks the `Config` dataclass tree and writes, per dotted key, its type, its schema default, the
values it accepts (the same tuples validation checks against) and a one-line description from
DESCRIPTIONS below. A dataclass reached a second time (a data set under `retrain.data`, an
optimisation under `probe.optim`) is one row pointing at its first section, so each group of keys
is described once. tests/test_docs.py fails when docs/config.md differs from `text()`, when a
schema key has no description, or when a description names a key the schema no longer has.

Regenerate with `python -m sslprune.control.reference > docs/config.md`.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Iterator, NamedTuple

from sslprune.core import schema  # the schema's one import

# One line per key, taken from the schema's comments, conf/*.yaml and the README. `<name>` is a
# signal's name, `<i>` a list index (probe.datasets.0.root on the command line).
DESCRIPTIONS = {
    "experiment": "the preset's name (conf/experiment/); names the report folder and the W&B group",
    "store": "the run store: every stage's files, reports, job ledger and code snapshots",
    "seeds": "the seeds every chain runs with (seeds and levels are path parts, not identity)",
    "seed": "stage apps: the seed of the one stage to run",
    "signal": "stage apps: the signal of the one stage to run; with sweeps a full name like `rotnet@layer2`",
    "level": "stage apps: the IMP level of the one stage to run (`sslprune-imp` without it runs the chain)",
    "scheme": "`sslprune-retrain`: the re-training start to run",
    "probe_dataset": "stage apps: index into `probe.datasets` (`svm.datasets`, `finetune.datasets` for those apps)",
    "data": "the data set IMP trains and prunes on (config group `data=`)",
    "data.name": "which data set",
    "data.root": "where its files are (layouts in the README's Data section); not identity",
    "data.image_size": "crop size for ImageFolder data sets (ignored by fixed-size ones)",
    "data.train_limit": "keep only N training images (quick runs; ImageFolder data takes classes in turn); null = all",
    "data.test_limit": "keep only N test images; null = all",
    "data.workers": "DataLoader worker processes per rank for ImageFolder data (10 in conf/data/{imagenet,places205,voc07}.yaml); not identity",
    "data.decode": "where ImageFolder images are decoded: `device` a batch at a time on the run's device (nvJPEG on a GPU), `workers` in the DataLoader workers, `auto` = device on a GPU, workers on CPU; not identity",
    "data._target_": "your own data set (docs/extending.md): import path of a function returning a MemoryData, called with this node's other keys; null = the built-in `name`",
    "data.kwargs": "the target's keyword arguments, written as this node's other keys (`data: {_target_: ..., size: 500}`); identity",
    "model": "the network (config group `model=`)",
    "model.name": "architecture; `alexnet_cifar` is AlexNet's layers for 8-32 px images, `vgg19` has one FC classifier",
    "model.width": "ResNets: channels of the first stage, later stages double it (resnet50: width_per_group); AlexNet, VGG-19: 64 is the published network, other widths scale every layer",
    "model.init": "dense initial weights: `per_signal` drawn from the seed and the signal's base name (independent starts, as in the paper); `shared`: one start per seed (an ablation)",
    "model._target_": "your own network (docs/extending.md): import path of a backbone class or function, called with `in_channels` and this node's other keys; null = the built-in `name`",
    "model.kwargs": "the target's keyword arguments, written as this node's other keys (`model: {_target_: my_lab.nets.build, depth: 26}`); identity",
    "model.weights": "a pretrained start (docs/extending.md): a checkpoint file (torchvision, MoCo, DINO, VISSL, SwAV/SimCLR ports, timm) whose backbone is IMP's level 0, not trained; the path is not identity, the file's sha256 is",
    "model.weights_key": "the entry of `model.weights` holding the network (DINO: `teacher` or `student`); null = found from the file's layout",
    "prune": "iterative magnitude pruning (config group `prune=`)",
    "prune.rate": "fraction of the remaining prunable weights removed per level, in (0, 1); density at level L is (1-rate)^L",
    "prune.levels": "last level of the chain; a path part, not identity (levels can be added later)",
    "prune.rewind": "late-resetting point k: `<n>it` updates, `<n>ep` epochs, `<n>sa` samples, `<n>%` of training; `0it` = initial weights",
    "prune.ignore": "extra parameter-name prefixes never pruned (the head, batch norm and biases never are)",
    "prune.scope": "layerwise pruning: prune only the layers up to and including this cut point, or `all`",
    "prune.scopes": "sweep: one chain per scope for every signal, named `<signal>@<scope>`; empty = `prune.scope`",
    "prune.rewinds": "sweep: one chain per rewind point for every signal, named `<signal>@<rewind>`; empty = `prune.rewind`",
    "signals": "the pruning signals: name -> the task whose loss drives IMP and its optimisation",
    "signals.<name>.task": "the signal's task (config group `task@signals.<name>.task=`)",
    "signals.<name>.task.name": "the pretext or supervised task",
    "signals.<name>.task.label_fraction": "labels and s4l: fraction of the labels kept (1.0 = every label)",
    "signals.<name>.task.label_subset": "how the label subset is drawn: `images` = that fraction of every class's images, `classes` = that fraction of the classes",
    "signals.<name>.task.subset_seed": "seed of the label subset's draw",
    "signals.<name>.task.embedding": "exemplar and npid: size of the L2-normalised embedding the head outputs; simclr, mocov2, byol: the projection MLP's output",
    "signals.<name>.task.margin": "exemplar: triplet margin",
    "signals.<name>.task.temperature": "npid, simclr, mocov2: softmax temperature",
    "signals.<name>.task.negatives": "npid: negatives drawn from the memory bank per image",
    "signals.<name>.task.bank_momentum": "npid: memory-bank update momentum",
    "signals.<name>.task.rotation_weight": "s4l: weight of the rotation loss next to the label loss",
    "signals.<name>.task.hidden": "simclr, mocov2, byol: hidden width of the projection MLP (the network's head outputs it) and of BYOL's predictor",
    "signals.<name>.task.queue": "mocov2: keys in the queue",
    "signals.<name>.task.target_momentum": "mocov2: the key encoder's momentum; byol: the EMA rate's base, rising to 1 by a cosine over training",
    "signals.<name>.task._target_": "your own task (docs/extending.md): import path of a task class or function, called with `data` and this node's other keys; null = the built-in `name`",
    "signals.<name>.task.kwargs": "the target's keyword arguments, written as this node's other keys; identity",
    "signals.<name>.optim": "the signal's optimisation (config group `optim@signals.<name>.optim=`)",
    "signals.<name>.optim.optimizer": "optimiser",
    "signals.<name>.optim.lr": "learning rate",
    "signals.<name>.optim.momentum": "SGD momentum (Adam ignores it)",
    "signals.<name>.optim.weight_decay": "weight decay",
    "signals.<name>.optim.batch_size": "global batch size in images (RotNet's forward batch is four times larger)",
    "signals.<name>.optim.epochs": "training length",
    "signals.<name>.optim.warmup_epochs": "linear warm-up of the learning rate",
    "signals.<name>.optim.schedule": "learning-rate schedule after warm-up",
    "signals.<name>.optim.milestones": "`step`: epochs at which the learning rate is multiplied by `gamma`",
    "signals.<name>.optim.gamma": "`step`: factor applied at each milestone",
    "signals.<name>.scope": "`prune.scope` for this signal's chains only; null = the experiment's",
    "signals.<name>.rewind": "`prune.rewind` for this signal's chains only; null = the experiment's",
    "signals.<name>.data": "train and prune this signal on this data set instead of `data`; null = `data`",
    "signals.<name>.init_from": "pruning during transfer: level 0 starts from this other signal's trained dense network, with a fresh head",
    "retrain": "re-training of each level's mask on labels",
    "retrain.signals": "whose masks to re-train; empty = every signal",
    "retrain.schemes": "the starts: winning ticket, random re-init, random (the paper's three), adjusted random",
    "retrain.levels": "which levels; null = every level",
    "retrain.data": "the labelled data set re-training runs on",
    "retrain.optim": "re-training's optimisation",
    "probe": "linear classifiers on frozen penultimate features (config group `probe=`)",
    "probe.signals": "whose weights to probe; empty = none",
    "probe.datasets": "the data sets to probe on, one stage each (`probe.datasets.0.root=...`)",
    "probe.levels": "which levels; null = every level",
    "probe.optim": "the probe's optimisation",
    "probe.features": "`augmented`: features of augmented images, recomputed every step (paper scale); `standardised`: un-augmented features computed once and standardised, checked against an L-BFGS fit",
    "svm": "linear SVMs, one per class, on frozen penultimate features (VOC07 protocol), test mAP",
    "svm.signals": "whose weights to evaluate; empty = none",
    "svm.datasets": "the data sets, one stage each",
    "svm.levels": "which levels; null = every level",
    "svm.costs": "the cost grid each class's cost is chosen from by cross-validation",
    "svm.folds": "cross-validation folds on the training split",
    "svm.features": "`normalised`: each image's features L2-normalised (VOC07 protocol); `standardised`: each dimension standardised with the training split's statistics",
    "finetune": "full fine-tuning of a pruned network on a target data set, mask kept",
    "finetune.signals": "whose networks to fine-tune; empty = none",
    "finetune.datasets": "the target data sets, one stage each",
    "finetune.levels": "which levels; null = every level",
    "finetune.optim": "fine-tuning's optimisation",
    "run": "how a stage runs, not what it computes; never identity",
    "run.device": "`auto` = CUDA when there is a GPU, else CPU",
    "run.threads": "torch intra-op threads, recorded and kept on resume (it changes CPU results); 0 = cores // workers, or `launcher.cpus_per_task` on SLURM",
    "run.amp": "bf16 autocast on CUDA (CPU always runs float32)",
    "run.log_every": "steps between progress lines and the finite-loss check",
    "run.checkpoint_steps": "checkpoint every N steps; 0 = only by time",
    "run.checkpoint_minutes": "checkpoint at least this often",
    "run.eval_batch_size": "batch size of evaluation passes",
    "run.quiet": "no progress output",
    "run.progress_seconds": "`sslprune-run`'s status line interval when its output is not a terminal (a log, CI)",
    "run.interrupt_every": "DDP: steps between the ranks' agreement on stopping, so all ranks stop at the same step",
    "run.workers": "local parallel processes for independent chains, those with the most work left first (`sslprune/control/workload.py`); 0 = one per core on CPU, 1 on GPU",
    "launcher": "where stages run (config group `launcher=`); never identity",
    "launcher.name": "`local` here; `submitit_local` one submitit job per chain here; `slurm` job arrays with dependencies",
    "launcher.partition": "sbatch `--partition`; null = the cluster's default",
    "launcher.account": "sbatch `--account`",
    "launcher.qos": "sbatch `--qos`",
    "launcher.constraint": "sbatch `--constraint`",
    "launcher.exclude": "nodes never to use",
    "launcher.comment": "sbatch `--comment`",
    "launcher.time_min": "time limit of one job in minutes; a job at its limit checkpoints and requeues",
    "launcher.nodes": "nodes per stage (DDP across nodes)",
    "launcher.tasks_per_node": "ranks per node (DDP: one per GPU)",
    "launcher.gpus_per_node": "GPUs per node",
    "launcher.cpus_per_task": "CPUs per rank",
    "launcher.mem_gb": "memory per node; null = the cluster's default",
    "launcher.array_parallelism": "tasks of one array running at once",
    "launcher.additional_parameters": "any other sbatch option, e.g. `{mail-type: END}`; any key",
    "launcher.setup": "shell lines every job runs after its environment (module load, conda activate)",
    "launcher.signal_delay_s": "SLURM sends USR2 this long before the time limit: checkpoint at once, requeue",
    "launcher.max_num_timeout": "requeues after reaching the time limit (preemptions do not count)",
    "launcher.max_requeues": "cap on all restarts of one job (preemption, time limit, crash retries)",
    "launcher.max_retries": "automatic requeues of a job that crashed (it resumes from its checkpoint)",
    "launcher.snapshot": "jobs run a copy of the code taken at submission (`<store>/code/<hash>`)",
    "launcher.pack": "one job runs the re-training starts and evaluations of one IMP level of one chain, paying start-up once",
    "launcher.folder": "submitit logs and pickles; null = `<store>/slurm`",
    "launcher.single": "resources of SVM and standardised-probe jobs (one task on one node, never DDP)",
    "launcher.single.gpus_per_node": "GPUs of such a job",
    "launcher.single.cpus_per_task": "CPUs of such a job; null = `launcher.cpus_per_task`",
    "wandb": "W&B mirroring of the store (config group `wandb=`); never identity",
    "wandb.mode": "`auto` = `WANDB_MODE` if set, else online when W&B credentials are configured, else disabled (one line says so)",
    "wandb.project": "W&B project",
    "wandb.entity": "W&B entity; null = the API key's default",
    "wandb.tags": "tags of every run",
    "wandb.group": "run group; null = the experiment name",
    "wandb.init_timeout": "seconds `wandb.init` may take before the stage continues with `fallback`",
    "wandb.service_wait": "seconds to wait for the local wandb-core service to start",
    "wandb.fallback": "what an online stage does when `wandb.init` fails",
    "wandb.stagger": "online start-up of SLURM array task i waits (i * stagger) % stagger_max seconds",
    "wandb.stagger_max": "see `wandb.stagger`",
    "wandb.system_metrics": "W&B's CPU/GPU/memory sampling (every 15 s)",
    "wandb.flush_seconds": "how often the run's .wandb file is written (what a kill -9 can lose)",
    "wandb.sync_workers": "parallel `wandb sync` processes in `sslprune-sync`",
    "wandb.sync_timeout": "seconds one `wandb sync` process may take before it is stopped",
    "wandb.check_timeout": "seconds `sslprune-sync` waits for the server to answer before syncing",
}

SCOPES = "`all`, or a cut point of the model (table at the end)"

# The values a key accepts, the tuples validation checks against (a list key: each entry's).
ALLOWED = {
    "scheme": schema.SCHEMES,
    "data.name": schema.DATASETS,
    "data.decode": schema.DECODES,
    "model.name": schema.MODELS,
    "model.init": schema.INITS,
    "prune.scope": SCOPES,
    "prune.scopes": SCOPES,
    "signals.<name>.task.name": schema.TASKS,
    "signals.<name>.task.label_subset": schema.LABEL_SUBSETS,
    "signals.<name>.optim.optimizer": schema.OPTIMIZERS,
    "signals.<name>.optim.schedule": schema.SCHEDULES,
    "signals.<name>.scope": SCOPES,
    "retrain.schemes": schema.SCHEMES,
    "probe.features": schema.PROBE_FEATURES,
    "svm.features": schema.SVM_FEATURES,
    "run.device": schema.DEVICES,
    "launcher.name": schema.LAUNCHERS,
    "wandb.mode": schema.WANDB_MODES,
    "wandb.fallback": schema.WANDB_FALLBACKS,
}


class Key(NamedTuple):
    path: str
    type: str
    default: str
    allowed: str
    section: str  # the top-level group it is listed under


def keys() -> Iterator[Key]:
    """Every dotted key of the schema, in schema order; a dataclass seen before is one row."""
    first: dict[type, str] = {}

    def walk(cls: type, at: str, section: str) -> Iterator[Key]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{at}.{f.name}" if at else f.name
            hint = hints[f.name]
            inner = [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
            here = section or (f.name if inner else "")
            kind = _type(hint, first)
            if inner and inner[0] not in first:
                first[inner[0]] = path + {list: ".<i>", dict: ".<name>"}.get(typing.get_origin(hint), "")
                yield Key(path, kind, _default(f), _allowed(path), here)
                yield from walk(inner[0], first[inner[0]], here)
            else:
                yield Key(path, kind, _default(f), _allowed(path), here)

    yield from walk(schema.Config, "", "")


def _type(hint: Any, first: dict) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join(_type(a, first) if a is not type(None) else "null" for a in args)
    if origin is list:
        return f"list of {_type(args[0], first)}"
    if origin is dict:
        return f"map of {_type(args[1], first)}"
    if dataclasses.is_dataclass(hint):
        return f"group (keys of `{first[hint]}`)" if hint in first else "group"
    return {typing.Any: "any"}.get(hint, getattr(hint, "__name__", str(hint)))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    else:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return ""
    return f"`{json.dumps(value)}`"


def _allowed(path: str) -> str:
    values = ALLOWED.get(path, "")
    return values if isinstance(values, str) else ", ".join(f"`{v}`" for v in values)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def text() -> str:
    """docs/config.md, exactly."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from the schema (the `Config` dataclasses) by",
        "     `python -m sslprune.control.reference > docs/config.md`; tests/test_docs.py fails when it is stale. -->",
        "",
        "Every key of the typed schema every app composes into. Set any of them on the command line",
        "(`sslprune-run prune.levels=20 signals.rotnet.optim.lr=0.05`); `sslprune-run --cfg job` prints",
        "the composed values. **Default** is the schema's; the config groups in `conf/` and the presets",
        "in `conf/experiment/` set many keys (the demo, for instance, uses `resnet_small` at width 8).",
        "`<name>` is a signal's name, `<i>` a list index (`probe.datasets.0.root=/data/imagenet`). A key",
        "whose type is a group takes the keys of the section named. An unknown key is refused with the",
        "closest one (`prune has no key 'rat'; did you mean prune.rate?`).",
    ]
    section = None
    for key in keys():
        if key.section != section:
            section = key.section
            out += ["", f"## {section or 'Top level'}", "",
                    "| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        cells = (f"`{key.path}`", key.type, key.default, key.allowed, DESCRIPTIONS.get(key.path, ""))
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    out += ["", "## Cut points", "",
            "`prune.scope`, `prune.scopes` and `signals.<name>.scope` name one of these, input to output, or `all`:",
            "", "| model | cut points |", "|---|---|"]
    out += [f"| `{model}` | {' '.join(f'`{c}`' for c in cuts)} |" for model, cuts in schema.CUT_POINTS.items()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(text(), end="")
