"""Typed configuration: the schema Hydra composes into, its validation, and run identity.

Plain dataclasses only; Hydra/OmegaConf live in `launch/`. Fields whose metadata says
`identity=False` (paths, worker counts, logging cadence, launcher settings) never change
the numbers a stage produces, so they are left out of the hash that names its directory.
Fields equal to their default are left out too (as in open_lth), so adding a field with a
no-op default keeps every existing run directory valid. A field whose default changed what runs
(`legacy(...)`) is left out when it equals the value that ran before it existed instead: old
directories keep their names, runs of the new default get new ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

DATASETS = ("digits", "fashion_mnist", "cifar10", "imagenet", "places205", "voc07")
MODELS = ("resnet_small", "resnet18_cifar", "resnet50", "alexnet", "alexnet_cifar", "vgg19")
TASKS = ("labels", "rotnet", "exemplar", "npid", "s4l")
LABEL_SUBSETS = ("images", "classes")
# Named cut points of each model, input to output: prune.scope=<cut> prunes the layers up to and
# including that one (sslprune.model.cut_points maps each name to its parameters). Kept here,
# torch-free, so a bad scope is refused before anything is imported or submitted.
CUT_POINTS = {
    "resnet_small": ("stem", "stage1", "stage2", "stage3"),
    "resnet18_cifar": ("stem", "stage1", "stage2", "stage3", "stage4"),
    "resnet50": ("conv1", "layer1", "layer2", "layer3", "layer4"),
    "alexnet": ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"),
    "alexnet_cifar": ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"),
    "vgg19": ("block1", "block2", "block3", "block4", "block5"),
}
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "cosine")
SCHEMES = ("winning_ticket", "random_reinit", "random", "random_adjusted")
DEFAULT_SCHEMES = ("winning_ticket", "random_reinit", "random")  # the paper's three starts
DEVICES = ("auto", "cpu", "cuda")
INITS = ("per_signal", "shared")  # ModelConfig.init
PROBE_FEATURES = ("augmented", "standardised")  # ProbeConfig.features
SVM_FEATURES = ("normalised", "standardised")  # SvmConfig.features
DECODES = ("auto", "device", "workers")  # DataConfig.decode
REWIND = re.compile(r"^(\d+(?:\.\d+)?)(it|ep|sa|%)$")


def runtime(default: Any = dataclasses.MISSING, **kw) -> Any:
    """A field that does not change results: excluded from run identity."""
    if "default_factory" in kw:
        return field(metadata={"identity": False}, **kw)
    return field(default=default, metadata={"identity": False})


def legacy(default: Any, before: Any) -> Any:
    """A field added with a default that changes the numbers: `before` is what every run did before
    the field existed. Identity leaves the field out when it equals `before` (not the default), so
    existing run directories keep their names and runs of the new default get new ones."""
    return field(default=default, metadata={"legacy": before})


class ConfigError(ValueError):
    """Bad user input, raised before any work starts."""


class DataMissing(FileNotFoundError):
    """A data root that does not hold the expected files; says where and how to get them."""


class DataCorrupt(ValueError):
    """A data file that is there but not whole (truncated, wrong counts, not the format)."""


@dataclass
class DataConfig:
    name: str = "digits"
    root: Optional[str] = runtime(None)  # where the files are; not identity
    image_size: int = 224  # crop size for ImageFolder data sets (ignored by fixed-size ones)
    train_limit: Optional[int] = None  # keep only N training images (quick runs; ImageFolder data takes classes in turn)
    test_limit: Optional[int] = None
    workers: int = runtime(4)  # DataLoader workers for ImageFolder data
    # Where ImageFolder images are decoded and augmented: `device` a batch at a time on the run's
    # device (nvjpeg on a GPU), the workers only reading files; `workers` in the DataLoader workers
    # (PIL, the CPU path); `auto` = device on a GPU, workers on CPU. The same crops either way.
    decode: str = runtime("auto")


@dataclass
class ModelConfig:
    name: str = "resnet_small"
    # ResNets: channels of the first stage, later stages double it (resnet50: width_per_group).
    # alexnet, alexnet_cifar, vgg19: 64 is the published network; other widths scale every layer by width/64.
    width: int = 16
    # Initial weights of the dense network (IMP level 0): `per_signal` draws them from the seed and
    # the signal's base name (the part before any @), so labels and RotNet networks are trained from
    # independent starts as in the paper, and the scope and rewind sweeps of one signal share theirs;
    # `shared` gives every signal of a seed the same start (what ran before this field existed; an
    # ablation). Fresh weights of re-training (random re-init, random) are shared either way.
    init: str = legacy("per_signal", before="shared")


@dataclass
class TaskConfig:
    name: str = "rotnet"
    # Label subset (tasks labels and s4l): keep `label_fraction` of the labels, either that fraction
    # of every class's images (`images`) or that fraction of the classes with all their images
    # (`classes`), drawn from `subset_seed`. `labels` trains on the subset alone ("10% labels");
    # `s4l` keeps every image and uses the labels of the subset only. 1.0 = every label.
    label_fraction: float = 1.0
    label_subset: str = "images"
    subset_seed: int = 0
    embedding: int = 128  # exemplar and npid: size of the (L2-normalised) embedding the head outputs
    margin: float = 0.5  # exemplar: triplet margin
    temperature: float = 0.07  # npid: softmax temperature
    negatives: int = 16384  # npid: negatives drawn from the memory bank per image
    bank_momentum: float = 0.5  # npid: memory-bank update momentum
    rotation_weight: float = 1.0  # s4l: weight of the rotation loss next to the label loss


@dataclass
class OptimConfig:
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    epochs: int = 10
    warmup_epochs: int = 0
    schedule: str = "step"
    milestones: List[int] = field(default_factory=list)  # epochs at which lr is multiplied by gamma
    gamma: float = 0.1


@dataclass
class SignalConfig:
    """One pruning signal: the task whose loss drives IMP, and how it is optimised.

    The optional fields override the experiment-wide value for this signal's chains only."""

    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scope: Optional[str] = None  # prune.scope for this signal
    rewind: Optional[str] = None  # prune.rewind for this signal
    data: Optional[DataConfig] = None  # train (and prune) on this data set instead of `data`
    # Pruning during transfer: level 0 starts from the trained dense weights (level 0) of this
    # other signal, with a fresh head, and IMP then runs on this signal's task and data.
    init_from: Optional[str] = None


@dataclass
class PruneConfig:
    rate: float = 0.2  # fraction of the remaining prunable weights removed per level
    levels: int = runtime(14)  # last level of the chain; a path part, not identity (levels can be added later)
    rewind: str = "1ep"  # late-resetting point: <n>it (updates), <n>ep (epochs), <n>sa (samples), <n>% (of training)
    ignore: List[str] = field(default_factory=list)  # parameter-name prefixes never pruned (the head never is)
    # Layerwise pruning: prune only the layers up to and including this named cut point of the
    # model (sslprune.model.cut_points), or `all` for the whole network.
    scope: str = "all"
    # Sweeps: one chain per scope / per rewind point for every signal, named <signal>@<scope>,
    # <signal>@<rewind> (config.expand). Empty = the single prune.scope / prune.rewind.
    scopes: List[str] = field(default_factory=list)
    rewinds: List[str] = field(default_factory=list)


@dataclass
class RetrainConfig:
    signals: List[str] = field(default_factory=list)  # whose masks to re-train; empty = every signal
    schemes: List[str] = field(default_factory=lambda: list(DEFAULT_SCHEMES))
    levels: Optional[List[int]] = None  # None = every level
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class ProbeConfig:
    signals: List[str] = field(default_factory=list)  # whose weights to probe; empty = none
    datasets: List[DataConfig] = field(default_factory=list)
    levels: Optional[List[int]] = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    # What the linear classifier is trained on. `augmented`: the frozen backbone's features of
    # augmented training images, recomputed every step (the paper-scale protocol, Goyal et al.
    # 2019). `standardised`: the features of the un-augmented images computed once, each dimension
    # standardised with the training split's mean and standard deviation, then the same SGD on
    # them: a convex problem an SGD schedule converges on (the reduced twins), checked against a
    # full-batch L-BFGS logistic regression on the same features (result.json `lbfgs_accuracy`).
    features: str = "augmented"


@dataclass
class SvmConfig:
    """Linear SVMs on frozen penultimate features, one per class (VOC07 protocol), test mAP."""

    signals: List[str] = field(default_factory=list)  # whose weights to evaluate; empty = none
    datasets: List[DataConfig] = field(default_factory=list)
    levels: Optional[List[int]] = None
    costs: List[float] = field(default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0])
    folds: int = 3  # cross-validation folds on the training split to choose each class's cost
    # `normalised`: each image's features L2-normalised (Goyal et al. 2019, the VOC07 protocol).
    # `standardised`: each dimension standardised with the training split's statistics, as the
    # standardised probe; on a small backbone's few dimensions (32 for the twins) normalised
    # features put every class's best cost above any grid LinearSVC converges on (issue 13).
    features: str = "normalised"


@dataclass
class FinetuneConfig:
    """Full fine-tuning of a pruned network on a target data set (mask kept), e.g. VOC07."""

    signals: List[str] = field(default_factory=list)
    datasets: List[DataConfig] = field(default_factory=list)
    levels: Optional[List[int]] = None
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class RunConfig:
    """How a stage runs, not what it computes: never part of identity."""

    device: str = "auto"
    # torch intra-op threads a stage computes with, recorded in its checkpoint and result.json and
    # kept on resume (the thread count changes CPU results). 0 = from the launcher's resources:
    # sslprune-run: cores // workers; a SLURM job: launcher.cpus_per_task.
    threads: int = 0
    amp: bool = True  # bf16 autocast on CUDA (CPU always runs fp32)
    log_every: int = 50  # steps between progress lines (and the finite-loss check)
    checkpoint_steps: int = 0  # 0 = only by time
    checkpoint_minutes: float = 10.0
    eval_batch_size: int = 1024
    quiet: bool = False
    # sslprune-run's progress when its output is not a terminal (a log, CI): a status line this often.
    progress_seconds: float = 30.0
    # DDP: steps between the ranks' agreement on stopping (one collective on a CPU group), so every
    # rank stops at the same step when any of them is interrupted; a stop waits at most this long.
    interrupt_every: int = 10
    workers: int = 0  # local parallel processes for independent chains; 0 = one per core (CPU), 1 on GPU


LAUNCHERS = ("local", "submitit_local", "slurm")


@dataclass
class SingleConfig:
    """SLURM resources of the stages whose fit runs once in one process, never under DDP: SVMs and
    probes on standardised features (their features are computed once, then a small fit). Such a
    job is one task on one node; on a GPU cluster it needs no GPU unless a preset says so."""

    gpus_per_node: int = 0
    cpus_per_task: Optional[int] = None  # None: launcher.cpus_per_task


@dataclass
class LauncherConfig:
    """Where stages run: `local` (this process), or submitted through submitit. Never identity.

    `slurm`: every missing stage becomes a task of a SLURM job array (one array per stage kind,
    signal and level, over seeds) with dependencies between arrays; `sslprune-run` returns at once.
    `submitit_local`: each chain runs as one submitit job on this machine; `sslprune-run` waits."""

    name: str = "local"
    # --- SLURM resources (sbatch options); None = the cluster's default
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None  # nodes never to use
    comment: Optional[str] = None
    time_min: int = 1440  # time limit of one job (minutes); a job that reaches it requeues (max_num_timeout)
    nodes: int = 1
    tasks_per_node: int = 1  # ranks per node (DDP: one per GPU)
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: Optional[float] = None
    array_parallelism: int = 256  # tasks of one array running at once
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # any other sbatch option, e.g. {mail-type: END}
    setup: List[str] = field(default_factory=list)  # shell lines run by every job after its environment (submission.JOB_ENV)
    # --- preemption, time limit, crashes
    signal_delay_s: int = 120  # SLURM sends USR2 this long before the time limit: checkpoint at once, requeue
    max_num_timeout: int = 3  # requeues after reaching the time limit (preemptions do not count)
    max_requeues: int = 20  # cap on all restarts of one job (preemption, time limit, crash retries)
    max_retries: int = 1  # automatic requeues of a job that crashed (it resumes from its checkpoint)
    # --- where and what
    snapshot: bool = True  # jobs run a copy of the code taken at submission (<store>/code/<hash>)
    # One job for the re-training starts and evaluations of one IMP level of one chain, run one after
    # the other: Python, imports, CUDA and the data are paid once, not once per stage (worth it when
    # stages last minutes, e.g. CIFAR-size). Each stage keeps its checkpoint, result and W&B run.
    pack: bool = False
    folder: Optional[str] = None  # submitit logs and pickles; default <store>/slurm
    single: SingleConfig = field(default_factory=SingleConfig)  # SVM and standardised-probe jobs: one task


WANDB_MODES = ("auto", "online", "offline", "disabled")
WANDB_FALLBACKS = ("offline", "disabled")


@dataclass
class WandbConfig:
    """W&B mirroring of the store (sslprune/dashboard.py). Never identity.

    mode: auto = the WANDB_MODE environment variable if set, else online when W&B credentials are
    configured (WANDB_API_KEY, ~/.netrc, `wandb login`), else disabled (one line says so)."""

    mode: str = "auto"
    project: str = "sslprune"
    entity: Optional[str] = None  # None = the API key's default entity
    tags: List[str] = field(default_factory=list)
    group: Optional[str] = None  # None = the experiment name
    init_timeout: float = 90.0  # seconds wandb.init may take (online: reaching the server)
    service_wait: float = 30.0  # seconds to wait for the wandb-core service process to start
    fallback: str = "offline"  # what an online stage does when wandb.init fails: offline | disabled
    # Online start-up of SLURM array task i waits (i * stagger) % stagger_max seconds, so a large
    # array does not open all its W&B connections at the same instant.
    stagger: float = 0.2
    stagger_max: float = 120.0
    system_metrics: bool = True  # W&B's CPU/GPU/memory sampling (every 15 s)
    flush_seconds: float = 5.0  # how often wandb-core writes the run's .wandb file (what a kill -9 can lose)
    sync_workers: int = 4  # parallel `wandb sync` processes in sslprune-sync
    sync_timeout: float = 600.0  # seconds one `wandb sync` process may take before it is stopped
    check_timeout: float = 10.0  # seconds sslprune-sync waits for the server to answer before syncing


@dataclass
class Config:
    experiment: str = "demo"
    store: str = "./runs"
    seeds: List[int] = field(default_factory=lambda: [0, 1])
    # Stage apps run one stage; these select it.
    seed: int = 0
    signal: Optional[str] = None  # required by the stage apps; with sweeps, a full name like rotnet@layer2
    level: Optional[int] = None
    scheme: str = "winning_ticket"
    probe_dataset: int = 0  # index into probe.datasets (svm.datasets, finetune.datasets for those apps)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    signals: Dict[str, SignalConfig] = field(default_factory=dict)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    svm: SvmConfig = field(default_factory=SvmConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    run: RunConfig = field(default_factory=RunConfig)
    launcher: LauncherConfig = runtime(default_factory=LauncherConfig)
    wandb: WandbConfig = runtime(default_factory=WandbConfig)


# ---------------------------------------------------------------- keys the schema has


def check_keys(tree: Mapping, schema: type = None) -> None:
    """Raise ConfigError naming the first key of `tree` (a composed config as plain dicts and lists)
    that `schema` does not have, with the closest schema key when there is one.

    Hydra's `+key=value` adds keys to a typed config without complaint and OmegaConf.to_object then
    drops them, so a typo (`+prune.rat=0.5`) would run with the default silently. Free-form maps
    (`Dict[str, Any]`, e.g. launcher.additional_parameters) take any key; maps and lists of schema
    objects (signals, probe.datasets) have each entry checked."""
    _walk(tree, schema or Config, "")


def _walk(tree: Mapping, schema: type, at: str) -> None:
    hints = typing.get_type_hints(schema)
    for key, value in tree.items():
        path = f"{at}.{key}" if at else str(key)
        if key not in hints:
            shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
            near = difflib.get_close_matches(str(key), list(hints), n=1)
            if near:
                hint = f"; did you mean {at + '.' if at else ''}{near[0]}?"
            else:
                others = _paths_ending(str(key))
                hint = f"; did you mean {' or '.join(others)}?" if others else ""
            raise ConfigError(f"{path}={shown}: {at or 'the config'} has no key {key!r}{hint}")
        _walk_value(value, hints[key], path)


def _walk_value(value: Any, hint: Any, path: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        for a in args:
            if a is not type(None):
                _walk_value(value, a, path)
        return
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        _walk(value, hint, path)
    elif origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
        for i, v in enumerate(value):
            _walk_value(v, args[0], f"{path}[{i}]")
    elif origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]) and isinstance(value, Mapping):
        for k, v in value.items():
            _walk_value(v, args[1], f"{path}.{k}")
    # anything else (Dict[str, Any], scalars, lists of scalars) is not a schema object: any key goes


def _paths_ending(key: str, schema: type = None, at: str = "", depth: int = 0) -> list[str]:
    """Schema keys elsewhere whose last part is close to `key` (`+rate=0.5` means prune.rate), at most 3."""
    out = []
    for name, hint in typing.get_type_hints(schema or Config).items():
        path = f"{at}.{name}" if at else name
        if difflib.get_close_matches(key, [name], n=1, cutoff=0.8):
            out.append(path)
        inner = [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
        if inner and depth < 3:
            entry = {list: "[<i>]", dict: ".<name>"}.get(typing.get_origin(hint), "")
            out += _paths_ending(key, inner[0], path + entry, depth + 1)
    return out[:3]


# ---------------------------------------------------------------- validation


def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _positive(key: str, value) -> None:
    if not (isinstance(value, (int, float)) and value > 0):
        raise ConfigError(f"{key}={value!r} must be > 0")


def _count(key: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ConfigError(f"{key}={value!r} must be an integer >= 0")


def validate_data(key: str, d: DataConfig) -> None:
    _choice(f"{key}.name", d.name, DATASETS)
    _choice(f"{key}.decode", d.decode, DECODES)
    _positive(f"{key}.image_size", d.image_size)
    _count(f"{key}.workers", d.workers)
    for k in ("train_limit", "test_limit"):
        v = getattr(d, k)
        if v is not None and v <= 0:
            raise ConfigError(f"{key}.{k}={v} must be > 0 or null")


def validate_optim(key: str, o: OptimConfig) -> None:
    _choice(f"{key}.optimizer", o.optimizer, OPTIMIZERS)
    _choice(f"{key}.schedule", o.schedule, SCHEDULES)
    _positive(f"{key}.lr", o.lr)
    _positive(f"{key}.batch_size", o.batch_size)
    _positive(f"{key}.epochs", o.epochs)
    if o.weight_decay < 0:
        raise ConfigError(f"{key}.weight_decay={o.weight_decay} must be >= 0")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"{key}.momentum={o.momentum} must be in [0, 1)")
    if not 0 <= o.warmup_epochs < o.epochs:
        raise ConfigError(f"{key}.warmup_epochs={o.warmup_epochs} must be in [0, epochs={o.epochs})")
    if not (isinstance(o.gamma, (int, float)) and 0 < o.gamma <= 1):
        # -1 flipped the learning rate's sign at the first milestone and trained on, silently worse.
        raise ConfigError(f"{key}.gamma={o.gamma!r} must be in (0, 1]: the learning rate is multiplied by it "
                          "at each milestone")
    for m in o.milestones:
        if not 0 < m < o.epochs:
            raise ConfigError(f"{key}.milestones contains {m}, outside (0, epochs={o.epochs})")


def validate_levels(key: str, levels: Optional[List[int]], last: int) -> None:
    for lv in levels or []:
        if lv < 0:
            raise ConfigError(f"{key} contains {lv}: levels are >= 0")
        if lv > last:
            raise ConfigError(f"{key} contains {lv}, beyond prune.levels={last}")


def _rewind(key: str, value) -> tuple[float, str]:
    m = REWIND.match(str(value))
    if not m:
        raise ConfigError(
            f"{key}={value!r} must be <number><unit> with unit it (updates), ep (epochs), "
            "sa (samples) or % (of training), e.g. 1ep, 2500it, 3840000sa, 3.3%")
    amount, unit = float(m.group(1)), m.group(2)
    if unit == "%" and amount > 100:
        raise ConfigError(f"{key}={value} is beyond 100% of training")
    return amount, unit


def validate_task(key: str, t: TaskConfig) -> None:
    _choice(f"{key}.name", t.name, TASKS)
    if not (isinstance(t.label_fraction, (int, float)) and 0 < t.label_fraction <= 1):
        raise ConfigError(f"{key}.label_fraction={t.label_fraction!r} must be in (0, 1]")
    if t.label_fraction < 1 and t.name not in ("labels", "s4l"):
        raise ConfigError(f"{key}.label_fraction={t.label_fraction} needs labels: only tasks labels and s4l use it "
                          f"(task {t.name!r} uses no labels)")
    _choice(f"{key}.label_subset", t.label_subset, LABEL_SUBSETS)
    for k in ("embedding", "margin", "temperature", "negatives"):
        _positive(f"{key}.{k}", getattr(t, k))
    if not 0 <= t.bank_momentum < 1:
        raise ConfigError(f"{key}.bank_momentum={t.bank_momentum} must be in [0, 1)")
    if t.rotation_weight < 0:
        raise ConfigError(f"{key}.rotation_weight={t.rotation_weight} must be >= 0")


def _evaluation(key: str, signals: List[str], datasets: List[DataConfig], levels, cfg: "Config") -> None:
    for s in signals:
        _choice(f"{key}.signals", s, tuple(cfg.signals))
    for i, d in enumerate(datasets):
        validate_data(f"{key}.datasets[{i}]", d)
    if signals and not datasets:
        raise ConfigError(f"{key}.signals is set but {key}.datasets is empty")
    validate_levels(f"{key}.levels", levels, cfg.prune.levels)


# Experiment and signal names become file and folder names (reports/<experiment>/,
# jobs/<experiment>.jsonl, W&B runs) and SLURM job names: one plain path component each. Sweeps
# add `@<scope>` and `@<rewind>` (rotnet@layer2, rotnet@3.3%), hence @ and %.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@%+-]{0,99}")
NAME_RULE = "1-100 of the characters A-Z a-z 0-9 _ . @ % + -, starting with a letter, digit or _"


def _name(what: str, value) -> None:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ConfigError(f"{what} {value!r} is not a single safe file name: use {NAME_RULE}")


def validate_store(cfg: Config) -> None:
    """What a store path may hold, for the launchers whose log paths are patterns."""
    L = cfg.launcher
    if L.name not in ("slurm", "submitit_local"):
        return
    for key, path in (("store", cfg.store), ("launcher.folder", L.folder)):
        if path is None:
            continue
        # submitit and SLURM expand %j, %A, %a ... in log paths (a literal % cannot be written), SLURM
        # writes no pattern at all into a path holding a backslash, and a newline ends an #SBATCH line.
        bad = [c for c in ("%", "\\", "\n") if c in path and (c != "\\" or L.name == "slurm")]
        if bad:
            raise ConfigError(f"{key}={path!r} contains {bad[0]!r}, which launcher={L.name} cannot pass to "
                              "its log paths: choose a path without % \\ or newlines")


def validate(cfg: Config) -> None:
    """Everything that can be checked before work starts; raises ConfigError naming the key."""
    _name("experiment", cfg.experiment)
    validate_data("data", cfg.data)
    _choice("model.name", cfg.model.name, MODELS)
    _positive("model.width", cfg.model.width)
    _choice("model.init", cfg.model.init, INITS)
    p = cfg.prune
    if not (isinstance(p.rate, (int, float)) and 0 < p.rate < 1):
        raise ConfigError(f"prune.rate={p.rate} must be in the open interval (0, 1)")
    if p.levels < 0:
        raise ConfigError(f"prune.levels={p.levels} must be >= 0")
    _rewind("prune.rewind", p.rewind)
    if not cfg.signals:
        raise ConfigError("signals is empty: an experiment needs at least one pruning signal")
    if p.scopes or p.rewinds:
        raise ConfigError("prune.scopes / prune.rewinds must be expanded into signals first (config.expand)")
    cuts = ("all",) + CUT_POINTS.get(cfg.model.name, ())
    _choice("prune.scope", p.scope, cuts)
    for name, s in cfg.signals.items():
        validate_task(f"signals.{name}.task", s.task)
        validate_optim(f"signals.{name}.optim", s.optim)
        if s.scope is not None:
            _choice(f"signals.{name}.scope", s.scope, cuts)
        if s.data is not None:
            validate_data(f"signals.{name}.data", s.data)
        key, rewind_ = (f"signals.{name}.rewind", s.rewind) if s.rewind is not None else ("prune.rewind", p.rewind)
        amount, unit = _rewind(key, rewind_)
        if unit == "ep" and amount > s.optim.epochs:
            raise ConfigError(f"{key}={rewind_} is beyond the {s.optim.epochs} epochs of "
                              f"signals.{name}.optim.epochs")
        if s.init_from is not None:
            _choice(f"signals.{name}.init_from", s.init_from, tuple(n for n in cfg.signals if n != name))
            seen, at = {name}, s.init_from
            while at is not None:
                if at in seen:
                    raise ConfigError(f"signals.{name}.init_from makes a cycle through {at}")
                seen.add(at)
                at = cfg.signals[at].init_from
    for name in cfg.signals:  # after their own checks: a bad sweep value is named there first
        _name("signal name", name)
    if cfg.level is not None and cfg.level < 0:
        raise ConfigError(f"level={cfg.level} must be >= 0")
    if cfg.level is not None and cfg.level > p.levels:
        raise ConfigError(f"level={cfg.level} is beyond prune.levels={p.levels}")
    if cfg.signal is not None:
        _choice("signal", cfg.signal, tuple(cfg.signals))
    _choice("scheme", cfg.scheme, SCHEMES)
    if not cfg.seeds:
        raise ConfigError("seeds is empty")
    for s in list(cfg.seeds) + [cfg.seed]:
        if s < 0:
            raise ConfigError(f"seed {s} must be >= 0")
    twice = sorted({s for s in cfg.seeds if list(cfg.seeds).count(s) > 1})
    if twice:  # one replicate counted twice would report n=2 with a standard error of 0
        raise ConfigError(f"seeds={list(cfg.seeds)} repeats seed {', '.join(map(str, twice))}: "
                          "each seed is one replicate, list it once")
    r = cfg.retrain
    for s in r.signals:
        _choice("retrain.signals", s, tuple(cfg.signals))
    for s in r.schemes:
        _choice("retrain.schemes", s, SCHEMES)
    validate_levels("retrain.levels", r.levels, p.levels)
    validate_data("retrain.data", r.data)
    validate_optim("retrain.optim", r.optim)
    pr = cfg.probe
    _evaluation("probe", pr.signals, pr.datasets, pr.levels, cfg)
    if cfg.probe_dataset < 0:  # which list it indexes depends on the app (launch/stages.py checks the range)
        raise ConfigError(f"probe_dataset={cfg.probe_dataset} must be >= 0")
    validate_optim("probe.optim", pr.optim)
    _choice("probe.features", pr.features, PROBE_FEATURES)
    sv = cfg.svm
    _evaluation("svm", sv.signals, sv.datasets, sv.levels, cfg)
    if not sv.costs or any(not (isinstance(c, (int, float)) and c > 0) for c in sv.costs):
        raise ConfigError(f"svm.costs={sv.costs} must be a non-empty list of costs > 0")
    _choice("svm.features", sv.features, SVM_FEATURES)
    if not (isinstance(sv.folds, int) and sv.folds >= 2):
        raise ConfigError(f"svm.folds={sv.folds!r} must be an integer >= 2")
    ft = cfg.finetune
    _evaluation("finetune", ft.signals, ft.datasets, ft.levels, cfg)
    validate_optim("finetune.optim", ft.optim)
    _choice("run.device", cfg.run.device, DEVICES)
    _positive("run.log_every", cfg.run.log_every)
    _positive("run.interrupt_every", cfg.run.interrupt_every)
    if not (isinstance(cfg.run.eval_batch_size, int) and cfg.run.eval_batch_size > 0):
        raise ConfigError(f"run.eval_batch_size={cfg.run.eval_batch_size!r} must be an integer > 0")
    if not (isinstance(cfg.run.workers, int) and cfg.run.workers >= 0):
        raise ConfigError(f"run.workers={cfg.run.workers!r} must be an integer >= 0 (0: one per core on CPU)")
    if not (isinstance(cfg.run.threads, int) and cfg.run.threads >= 0):
        raise ConfigError(f"run.threads={cfg.run.threads!r} must be an integer >= 0 (0: from the launcher)")
    if cfg.run.checkpoint_steps < 0 or cfg.run.checkpoint_minutes < 0:
        raise ConfigError("run.checkpoint_steps and run.checkpoint_minutes must be >= 0")
    validate_launcher("launcher", cfg.launcher)
    # SVM and standardised-probe stages run as one-task jobs with launcher.single's resources (no
    # GPU by default): run.device=cuda made every one of them fail with NoDevice on the cluster.
    single = cfg.svm.signals or (cfg.probe.features == "standardised" and cfg.probe.signals)
    if cfg.launcher.name == "slurm" and cfg.run.device == "cuda" and cfg.launcher.single.gpus_per_node == 0 and single:
        raise ConfigError("run.device=cuda with launcher.single.gpus_per_node=0: the SVM and standardised-probe "
                          "jobs (one task, launcher.single) would have no GPU; set launcher.single.gpus_per_node=1 "
                          "or run.device=auto")
    validate_store(cfg)
    validate_wandb(cfg.wandb)


def validate_wandb(w: WandbConfig) -> None:
    _choice("wandb.mode", w.mode, WANDB_MODES)
    _choice("wandb.fallback", w.fallback, WANDB_FALLBACKS)
    if not w.project or not re.fullmatch(r"[^/\\#?%:]{1,128}", w.project):
        raise ConfigError(f"wandb.project={w.project!r} must be 1-128 characters without / \\ # ? % :")
    for k in ("init_timeout", "service_wait", "sync_timeout", "check_timeout", "sync_workers"):
        _positive(f"wandb.{k}", getattr(w, k))
    for k in ("stagger", "stagger_max", "flush_seconds"):
        v = getattr(w, k)
        if not (isinstance(v, (int, float)) and v >= 0):
            raise ConfigError(f"wandb.{k}={v!r} must be >= 0")
    for t in w.tags:
        if not isinstance(t, str) or not 0 < len(t) <= 64:
            raise ConfigError(f"wandb.tags contains {t!r}: tags are 1-64 characters")


def validate_launcher(key: str, L: LauncherConfig) -> None:
    _choice(f"{key}.name", L.name, LAUNCHERS)
    for k in ("time_min", "nodes", "tasks_per_node", "cpus_per_task", "array_parallelism"):
        v = getattr(L, k)
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ConfigError(f"{key}.{k}={v!r} must be an integer > 0")
    for k in ("gpus_per_node", "signal_delay_s", "max_num_timeout", "max_requeues", "max_retries"):
        v = getattr(L, k)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise ConfigError(f"{key}.{k}={v!r} must be an integer >= 0")
    g, c = L.single.gpus_per_node, L.single.cpus_per_task
    if not (isinstance(g, int) and not isinstance(g, bool) and g >= 0):
        raise ConfigError(f"{key}.single.gpus_per_node={g!r} must be an integer >= 0")
    if c is not None and not (isinstance(c, int) and not isinstance(c, bool) and c > 0):
        raise ConfigError(f"{key}.single.cpus_per_task={c!r} must be an integer > 0 or null")
    if L.mem_gb is not None and not (isinstance(L.mem_gb, (int, float)) and L.mem_gb > 0):
        raise ConfigError(f"{key}.mem_gb={L.mem_gb!r} must be > 0 or null")
    if L.signal_delay_s >= 60 * L.time_min:
        raise ConfigError(f"{key}.signal_delay_s={L.signal_delay_s} must be shorter than "
                          f"{key}.time_min={L.time_min} minutes ({60 * L.time_min} s)")
    for k in ("partition", "account", "qos", "constraint", "exclude", "comment", "folder"):
        v = getattr(L, k)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ConfigError(f"{key}.{k}={v!r} must be a non-empty string or null")
    if not all(isinstance(line, str) for line in L.setup):
        raise ConfigError(f"{key}.setup must be a list of shell lines (strings)")
    reserved = {"array", "dependency", "output", "error", "signal", "job-name", "job_name", "chdir", "open-mode"}
    for k in L.additional_parameters:
        if str(k) in reserved:
            raise ConfigError(f"{key}.additional_parameters.{k} is set by sslprune itself; remove it")


# ---------------------------------------------------------------- sweeps and per-signal values


def expand(cfg: Config) -> Config:
    """Turn prune.scopes / prune.rewinds into one signal per (signal, scope, rewind).

    `rotnet` with scopes [stage1, all] becomes `rotnet@stage1` and `rotnet@all`; with rewinds
    [0it, 1ep] as well, `rotnet@stage1@0it`, ... Lists of signal names elsewhere (retrain, probe,
    svm, finetune, init_from) are expanded the same way. Idempotent: the result has no sweeps left."""
    p = cfg.prune
    if not p.scopes and not p.rewinds:
        return cfg
    variants = [(sc, rw) for sc in (p.scopes or [None]) for rw in (p.rewinds or [None])]

    def names(base: str) -> list[str]:
        return [base + (f"@{sc}" if sc is not None else "") + (f"@{rw}" if rw is not None else "")
                for sc, rw in variants]

    signals = {}
    for name, s in cfg.signals.items():
        for new, (sc, rw) in zip(names(name), variants):
            init = None
            if s.init_from is not None:
                init = s.init_from + new[len(name):]
            signals[new] = dataclasses.replace(s, scope=sc if sc is not None else s.scope,
                                               rewind=rw if rw is not None else s.rewind, init_from=init)

    def many(lst: List[str]) -> List[str]:
        return [n for base in lst for n in (names(base) if base in cfg.signals else [base])]

    return dataclasses.replace(
        cfg, signals=signals, prune=dataclasses.replace(p, scopes=[], rewinds=[]),
        retrain=dataclasses.replace(cfg.retrain, signals=many(cfg.retrain.signals)),
        probe=dataclasses.replace(cfg.probe, signals=many(cfg.probe.signals)),
        svm=dataclasses.replace(cfg.svm, signals=many(cfg.svm.signals)),
        finetune=dataclasses.replace(cfg.finetune, signals=many(cfg.finetune.signals)))


def signal_prune(cfg: Config, signal: str) -> PruneConfig:
    """The pruning settings of one signal's chains (its scope and rewind overrides applied)."""
    s = cfg.signals[signal]
    return dataclasses.replace(cfg.prune, scope=s.scope if s.scope is not None else cfg.prune.scope,
                               rewind=s.rewind if s.rewind is not None else cfg.prune.rewind)


def signal_data(cfg: Config, signal: str) -> DataConfig:
    """The data set one signal trains and prunes on."""
    s = cfg.signals[signal]
    return s.data if s.data is not None else cfg.data


# ---------------------------------------------------------------- plain data


def to_dict(cfg: Any) -> Any:
    """A config as plain JSON data (every field, defaults included): what a job record carries."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def from_dict(data: Any, schema: Any = None) -> Any:
    """The inverse of to_dict: a typed Config (or any schema dataclass) from plain data."""
    schema = schema or Config
    if dataclasses.is_dataclass(schema):
        hints = typing.get_type_hints(schema)
        return schema(**{f.name: from_dict(data[f.name], hints[f.name]) for f in dataclasses.fields(schema)
                         if f.name in data})
    origin, args = typing.get_origin(schema), typing.get_args(schema)
    if data is None:
        return None
    if origin is typing.Union:  # Optional[X]
        return from_dict(data, next(a for a in args if a is not type(None)))
    if origin in (list, List):
        return [from_dict(v, args[0] if args else Any) for v in data]
    if origin in (dict, Dict):
        return {k: from_dict(v, args[1] if args else Any) for k, v in data.items()}
    return data


# ---------------------------------------------------------------- identity


def identity(obj: Any) -> Any:
    """The part of a config that changes numbers, as plain JSON data, defaults left out."""
    if dataclasses.is_dataclass(obj):
        out = {}
        default = type(obj)()
        for f in dataclasses.fields(obj):
            if not f.metadata.get("identity", True):
                continue
            value = identity(getattr(obj, f.name))
            left_out = f.metadata["legacy"] if "legacy" in f.metadata else getattr(default, f.name)
            if value == identity(left_out):
                continue
            out[f.name] = value
        return out
    if isinstance(obj, dict):
        return {str(k): identity(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [identity(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # 1.0 and 1 name the same run
    return obj


def digest(*parts: Any) -> str:
    text = json.dumps([identity(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rewind_steps(rewind: str, steps_per_epoch: int, batch_size: int, total_steps: int) -> int:
    """Convert the rewind point to optimizer updates (k of late resetting)."""
    m = REWIND.match(rewind)
    if not m:
        raise ConfigError(f"prune.rewind={rewind!r} is malformed")
    amount, unit = float(m.group(1)), m.group(2)
    steps = {
        "it": amount,
        "ep": amount * steps_per_epoch,
        "sa": amount / batch_size,
        "%": amount / 100 * total_steps,
    }[unit]
    k = int(math.floor(steps + 1e-9))
    if k > total_steps:
        raise ConfigError(f"prune.rewind={rewind} is {k} updates, beyond the {total_steps} updates of training")
    return k
