"""Label subsets: which training images keep their labels (the paper's "10% of ImageNet labels").

`select` is a pure function from the training labels to sorted indices; `restrict` applies a
selection to a data set the way the task needs it; `saved` keeps the selection with the run,
so every level of a chain (and a resumed run) trains on exactly the images level 0 chose.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from ..core import store as files
from ..core.errors import ConfigError, SubsetMismatch
from ..core.schema import LABEL_SUBSETS, TaskConfig
from . import seed as seeds
from .dataset import FolderData, MemoryData, Split

FILE = "label_subset.json"


def _share(fraction: float, n: int) -> int:
    # 0.3 * 10 is 3.0000000000000004 in floating point: without the tolerance, ceil gives 4.
    return math.ceil(fraction * n - 1e-9)


def select(labels: torch.Tensor, num_classes: int, fraction: float, by: str, seed: int) -> torch.Tensor:
    """Sorted int64 indices of the training images whose labels are kept.

    `images`: ceil(fraction x n_c) of each class's n_c images (at least one from every class
    that has any). `classes`: all images of ceil(fraction x num_classes) classes. The draws are
    a function of (seed, by) alone, so the same spec on the same labels gives the same indices."""
    if by not in LABEL_SUBSETS:
        raise ConfigError(f"label_subset={by!r} is not one of {', '.join(LABEL_SUBSETS)}")
    if not 0 < fraction <= 1:
        raise ConfigError(f"label_fraction={fraction} must be in (0, 1]")
    if labels.dim() != 1:
        raise ConfigError("a label subset needs one label per image; this data set is multi-label")
    labels = labels.cpu()
    g = seeds.generator("label-subset", by, seed)
    if by == "classes":
        chosen = torch.randperm(num_classes, generator=g)[:max(1, _share(fraction, num_classes))]
        keep = torch.isin(labels, chosen).nonzero().flatten()
    else:
        parts = []
        for c in range(num_classes):  # class by class, so one class's draw never shifts another's
            members = (labels == c).nonzero().flatten()
            order = torch.randperm(len(members), generator=g)
            parts.append(members[order[:max(1, _share(fraction, len(members)))]] if len(members) else members)
        keep = torch.cat(parts)
    return keep.sort().values.to(torch.int64)


def spec(task: TaskConfig, labels: torch.Tensor, num_classes: int) -> dict:
    """What the selection is a function of; a saved selection is used only where this matches."""
    return {"label_fraction": task.label_fraction, "label_subset": task.label_subset,
            "subset_seed": task.subset_seed, "train_images": len(labels), "num_classes": num_classes}


def saved(path: Path, task: TaskConfig, labels: torch.Tensor, num_classes: int, write: bool,
          must_exist: bool = False) -> torch.Tensor:
    """The selection stored at `path`, checked against the config; drawn and written if absent.

    `write`: this process may create the file (rank 0); `must_exist`: the file should already
    be there (a later level of the chain), so its absence is an error, not a fresh draw."""
    want = spec(task, labels, num_classes)
    if path.exists():
        stored = files.read_json(path)
        differ = {k: (stored.get(k), v) for k, v in want.items() if stored.get(k) != v}
        if differ:
            shown = ", ".join(f"{k}: saved {a!r}, config {b!r}" for k, (a, b) in differ.items())
            raise SubsetMismatch(f"{path} was made for another label subset ({shown}); "
                                 "it belongs to a different run, remove it or fix the config")
        indices = torch.tensor(stored["indices"], dtype=torch.int64)
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(labels)):
            raise SubsetMismatch(f"{path} holds indices outside the {len(labels)} training images")
        return indices
    if must_exist:
        raise FileNotFoundError(f"{path} is missing: level 0 of this chain saves the label subset every "
                                "later level trains on; run level 0 first")
    indices = select(labels, num_classes, task.label_fraction, task.label_subset, task.subset_seed)
    if write:
        files.write_json({**want, "labelled": len(indices), "indices": indices.tolist()}, path)
    return indices


def restrict(data, task: TaskConfig, indices: torch.Tensor):
    """The data set a task trains on given the labelled indices (a new object; `data` is untouched).

    `labels` trains on the subset alone (supervised pruning on 10% of the labels); `s4l` keeps
    every image and gives those outside the subset label -1, which its label loss ignores."""
    keep_all = task.name == "s4l"
    if isinstance(data, FolderData):
        # The loader scans the tree; it applies the selection to the scanned list (FolderData.labelled).
        return dataclasses.replace(data, labelled=tuple(indices.tolist()), unlabelled_kept=keep_all)
    if not isinstance(data, MemoryData):
        raise TypeError(f"cannot take a label subset of {type(data).__name__}")
    train = data.train
    if keep_all:
        labels = torch.full_like(train.labels, -1)
        labels[indices] = train.labels[indices]
        return dataclasses.replace(data, train=Split(train.images, labels))
    return dataclasses.replace(data, train=Split(train.images[indices], train.labels[indices]))
