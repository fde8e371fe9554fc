"""Typed configuration: the schema Hydra composes into, as plain dataclasses, and its plain-data form.

Hydra/OmegaConf live in `launch/`. Fields whose metadata says `identity=False` (paths, worker
counts, logging cadence, launcher settings) never change the numbers a stage produces, so they are
left out of the hash that names its directory (sslprune.core.identity). Fields equal to their
default are left out too (as in open_lth), so adding a field with a no-op default keeps every
existing run directory valid. A field whose default changed what runs (`legacy(...)`) is left out
when it equals the value that ran before it existed instead: old directories keep their names,
runs of the new default get new ones.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .errors import ConfigError

DATASETS = ("digits", "fashion_mnist", "cifar10", "imagenet", "places205", "voc07")
MODELS = ("resnet_small", "resnet18_cifar", "resnet50", "alexnet", "alexnet_cifar", "vgg19")
TASKS = ("labels", "rotnet", "exemplar", "npid", "s4l", "simclr", "mocov2", "byol")
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
    # Your own data set (docs/extending.md): the import path of a function returning a data set, called with the node's
    # other keys as keyword arguments (`kwargs`, kept apart from the schema's own keys). null = built-in.
    _target_: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)


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
    # Your own network (docs/extending.md): the import path of a backbone class or function, called with the node's
    # other keys as keyword arguments (`kwargs`, kept apart from the schema's own keys). null = built-in.
    _target_: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # A pretrained start (docs/extending.md): a checkpoint file whose backbone weights are IMP's level 0
    # (no pretraining stage). The path is not identity, the file's sha256 is (sslprune.core.pretrained).
    weights: Optional[str] = runtime(None)
    # The entry of that file holding the network (DINO's `teacher` or `student`, `state_dict`, ...);
    # null = found from the file's layout (DINO: teacher). Identity when set (with the sha256).
    weights_key: Optional[str] = runtime(None)


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
    embedding: int = 128  # exemplar, npid (the head's size), simclr, mocov2, byol: the L2-normalised embedding
    margin: float = 0.5  # exemplar: triplet margin
    temperature: float = 0.07  # npid, simclr, mocov2: softmax temperature
    negatives: int = 16384  # npid: negatives drawn from the memory bank per image
    bank_momentum: float = 0.5  # npid: memory-bank update momentum
    rotation_weight: float = 1.0  # s4l: weight of the rotation loss next to the label loss
    # (the network's head outputs `hidden` units; the task's tail maps them to `embedding`)
    hidden: int = 2048  # simclr, mocov2, byol: hidden width of the projection MLP (and of BYOL's predictor)
    queue: int = 65536  # mocov2: keys in the queue
    target_momentum: float = 0.996  # mocov2: the key encoder's momentum; byol: the EMA rate's base (rises to 1)
    # Your own task (docs/extending.md): the import path of a task class or function, called with the node's
    # other keys as keyword arguments (`kwargs`, kept apart from the schema's own keys). null = built-in.
    _target_: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)


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



# Nodes a `_target_` can name: Hydra composes them as open maps (`composable`), so a target's
# keyword arguments sit beside it (`model: {_target_: my_lab.nets.build, depth: 26}`).
OPEN = (DataConfig, ModelConfig, TaskConfig)
_COMPOSABLE: dict = {}


def builtin(schema: type) -> tuple:
    """The built-in names of an OPEN node's kind."""
    return {DataConfig: DATASETS, ModelConfig: MODELS, TaskConfig: TASKS}[schema]


def _open_default(schema: type) -> dict:
    # `kwargs` stays (empty): `model.kwargs.depth=26` is another spelling of `+model.depth=26`, and
    # `--cfg job` prints what the typed config holds.
    return to_dict(schema())


def _composable_hint(hint: Any) -> Any:
    if hint in OPEN:
        return Dict[str, Any]
    if dataclasses.is_dataclass(hint):
        return composable(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return Optional[_composable_hint(next(a for a in args if a is not type(None)))]
    if origin in (list, List) and args:
        return List[_composable_hint(args[0])]
    if origin in (dict, Dict) and len(args) == 2:
        return Dict[args[0], _composable_hint(args[1])]
    return hint


def composable(schema: type = None) -> type:
    """The schema Hydra composes into (registered as `sslprune_schema`): `schema`'s dataclasses with
    every OPEN node a `Dict[str, Any]` holding its defaults, so it takes a target's keyword
    arguments as keys. `from_dict` turns the composed tree back into the typed schema."""
    schema = schema or Config
    if schema not in _COMPOSABLE:
        hints = typing.get_type_hints(schema)
        made = []
        for f in dataclasses.fields(schema):
            hint = hints[f.name]
            if hint in OPEN:
                spec = field(default_factory=functools.partial(_open_default, hint))
            elif dataclasses.is_dataclass(hint):
                spec = field(default_factory=composable(hint))
            elif f.default_factory is not dataclasses.MISSING:
                spec = field(default_factory=f.default_factory)
            else:
                spec = field(default=f.default)
            made.append((f.name, _composable_hint(hint), spec))
        made = dataclasses.make_dataclass(f"Composable{schema.__name__}", made)
        # Importable as sslprune.core.schema.Composable<name>, so it pickles by reference: a
        # submitit job of Hydra's launcher restores the ConfigStore (which holds these classes) from
        # a pickle, and a class pickled by value loses dataclasses.MISSING's identity, so the job's
        # composition failed with "Cannot assign _MISSING_TYPE to Dict[str, Any]".
        made.__module__ = __name__
        globals()[made.__name__] = made
        _COMPOSABLE[schema] = made
    return _COMPOSABLE[schema]


def _typed(value: Any, hint: Any, at: str) -> Any:
    """A scalar of an OPEN node (Hydra no longer types those): ints where floats go, else refused."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    kinds = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint in kinds and (not isinstance(value, hint) or hint is int and isinstance(value, bool)):
        raise ConfigError(f"{at}={value!r} must be {kinds[hint]}")
    return value


def to_dict(cfg: Any) -> Any:
    """A config as plain JSON data (every field, defaults included): what a job record carries."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def from_dict(data: Any, schema: Any = None, at: str = "") -> Any:
    """The inverse of to_dict: a typed Config (or any schema dataclass) from plain data; also the
    composed tree of the `composable` schema, whose OPEN nodes' other keys become `kwargs`."""
    schema = schema or Config
    if dataclasses.is_dataclass(schema):
        hints = typing.get_type_hints(schema)
        names = {f.name for f in dataclasses.fields(schema)}
        out = schema(**{f.name: from_dict(data[f.name], hints[f.name], f"{at}.{f.name}" if at else f.name)
                        for f in dataclasses.fields(schema) if f.name in data})
        if schema in OPEN:
            for f in dataclasses.fields(schema):
                if f.name in data and f.name != "kwargs":
                    setattr(out, f.name, _typed(getattr(out, f.name), hints[f.name], f"{at}.{f.name}"))
            out.kwargs = {**out.kwargs, **{k: v for k, v in data.items() if k not in names}}
            if out._target_ is not None and out.name in builtin(schema):
                # A target left with the preset's built-in name would be reported as that network
                # or task: it is named after its own last part instead (model.name sets another).
                out.name = out._target_.rsplit(".", 1)[-1]
        return out
    origin, args = typing.get_origin(schema), typing.get_args(schema)
    if data is None:
        return None
    if origin is typing.Union:  # Optional[X]
        return from_dict(data, next(a for a in args if a is not type(None)), at)
    if origin in (list, List):
        return [from_dict(v, args[0] if args else Any, f"{at}[{i}]") for i, v in enumerate(data)]
    if origin in (dict, Dict):
        return {k: from_dict(v, args[1] if args else Any, f"{at}.{k}") for k, v in data.items()}
    return data


composable()  # made at import, so that a process unpickling them finds them here
