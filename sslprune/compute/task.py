"""Training objectives. A task turns a labelled batch into (inputs, targets) and owns the head size.

The training loop knows nothing about rotations or labels: a new objective is a new task.
A task's protocol (all but `prepare` and `loss` have defaults in `Labels`):

    num_outputs                  size of the head
    index_targets                True: training batches carry dataset indices instead of labels
    prepare(x, y, draws)         a training batch -> (inputs, targets); `draws` (seed.Draws) is where
                                 every random number a task needs comes from: seeded by the stage,
                                 the step and each image's global position, never the global RNG
    loss(outputs, targets)       scalar loss, computed in fp32 outside autocast; under DDP it is the
                                 local share of the global batch's loss (gradients are averaged over
                                 ranks), so 2 ranks train as 1 does
    score(outputs, targets)      (number correct as a tensor, count as an int or a tensor): the
                                 running training accuracy, no host sync
    eval_prepare(x, y, draws)    a test batch (always labels) -> (inputs, targets); default prepare
    metric()                     an accumulator over test batches: add(outputs, targets), result()
    state_dict() / load_state_dict(state)   state beyond the network (a memory bank), checkpointed
    bind(loader)                 called once the training loader exists (before any checkpoint is
                                 loaded): a task that needs the training set (its size, its labels
                                 `loader.train_labels`) takes it here
  optional (the two-view tasks of issue 24; the trainer does nothing for a task without them):
    modules()                    task-owned trainable modules (a projection tail, BYOL's predictor):
                                 optimised beside the network, never pruned, their gradients
                                 averaged over ranks as DDP does the network's; part of the state
    begin(model, mask, step, total)  once before a fit's first step, after any state was loaded:
                                 a momentum task makes its target from the (masked) network unless
                                 its state brought one, and learns the schedule's length
    after_step(model, mask, step)    after every optimizer step, once the mask is applied, with the
                                 number of updates done: the momentum / EMA target update, queue push

One module per family: classification (Labels, MultiLabel), rotation (RotNet, S4L), exemplar,
npid, contrastive (SimCLR), momentum (MoCoV2, BYOL); every collective they need is
sslprune.compute.distributed's. `make` builds one through the door every task goes through
(sslprune.compute.factory): a built-in by name, or a config's `_target_`.
The protocol as a `typing.Protocol`: sslprune.compute.protocol.Task (docs/extending.md).
"""
from __future__ import annotations

from .classification import Labels, MultiLabel
from .contrastive import SimCLR
from .exemplar import Exemplar
from .momentum import BYOL, MoCoV2
from .npid import NPID
from .rotation import RotNet, S4L
from . import factory

from ..core.errors import ConfigError
from ..core.schema import TaskConfig, TASKS


def labels(data):
    """The supervised task of a data set: its own labels (re-training, probes, fine-tuning)."""
    return make(TaskConfig("labels"), data)


# The built-in tasks: the first implementations of the Task protocol (sslprune.compute.protocol),
# built through the same door as a config's `_target_`, with the task config as their argument.
def labels_task(data, cfg: TaskConfig):
    if getattr(data, "multilabel", False):
        return MultiLabel(data.num_classes, getattr(data, "classes", ()))
    return Labels(data.num_classes)


def rotnet(data, cfg: TaskConfig):
    return RotNet()


def exemplar(data, cfg: TaskConfig):
    return Exemplar(cfg, data.mean, data.std)


def npid(data, cfg: TaskConfig):
    return NPID(cfg, data.num_classes)


def s4l(data, cfg: TaskConfig):
    return S4L(data.num_classes, cfg.rotation_weight)


def simclr(data, cfg: TaskConfig):
    return SimCLR(cfg, data)


def mocov2(data, cfg: TaskConfig):
    return MoCoV2(cfg, data)


def byol(data, cfg: TaskConfig):
    return BYOL(cfg, data)


# task.name -> the import path of its factory, called as factory(data=..., cfg=<TaskConfig>).
BUILTIN = {"labels": f"{__name__}.labels_task", "rotnet": f"{__name__}.rotnet", "exemplar": f"{__name__}.exemplar",
           "npid": f"{__name__}.npid", "s4l": f"{__name__}.s4l", "simclr": f"{__name__}.simclr",
           "mocov2": f"{__name__}.mocov2", "byol": f"{__name__}.byol"}


def make(cfg: TaskConfig, data):
    """The task of a config on a data set (`data` is a dataset.MemoryData / FolderData, or what a
    data set's `_target_` returned): `task._target_` called with `data` and the node's keyword
    arguments, or the built-in of `task.name` with the task config."""
    if cfg._target_ is not None:
        return factory.build("task._target_", cfg._target_, cfg.kwargs, data=data)
    if cfg.name not in BUILTIN:
        raise ConfigError(f"task.name={cfg.name!r} is not one of {', '.join(TASKS)}")
    return factory.build("task.name", BUILTIN[cfg.name], {"cfg": cfg}, data=data)
