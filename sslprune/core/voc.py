"""PASCAL VOC 2007 classification, as the VOCdevkit ships it, and the devkit's AP.

Layout (VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar both extract into it):

    VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt   one image id a line ("000005")
    VOCdevkit/VOC2007/Annotations/<id>.xml                 <object><name>chair</name><difficult>0</difficult>
    VOCdevkit/VOC2007/JPEGImages/<id>.jpg

The target of an image for a class follows the devkit's classification ground truth: 1 when a
non-difficult instance is present, -1 when only difficult instances are (the devkit's "0",
ignored by the evaluation), 0 when absent. (The devkit writes absent as -1 and difficult as 0;
here 0/1 read as the usual multi-hot vector and -1 marks what every consumer skips.)
"""
from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import DataCorrupt, DataMissing

# The 20 classes in the devkit's order (VOCinit.m); a class's index is its output unit.
CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
SPLITS = {"train": "trainval", "test": "test"}
POSITIVE, ABSENT, DIFFICULT = 1, 0, -1
HOW = ("Download VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar (host.robots.ox.ac.uk/pascal/VOC/voc2007), "
       "extract both in the same folder and set data.root to the folder holding VOCdevkit/ (or VOCdevkit/, "
       "or VOCdevkit/VOC2007/).")


def _missing(text: str) -> Exception:
    return DataMissing(f"voc07: {text}. {HOW}")


def base(root: Path) -> Path:
    """The VOC2007 folder: data.root may be the folder holding VOCdevkit/, VOCdevkit/ or VOC2007/ itself."""
    if not root.is_dir():
        raise _missing(f"data root {root} does not exist")
    for candidate in (root / "VOCdevkit" / "VOC2007", root / "VOC2007", root):
        if (candidate / "ImageSets" / "Main").is_dir() or (candidate / "Annotations").is_dir():
            return candidate
    raise _missing(f"{root} holds neither VOCdevkit/VOC2007/, VOC2007/ nor ImageSets/Main and Annotations")


def check(root: Path) -> Path:
    """The cheap part of the layout (lists and folders), before any work; returns the VOC2007 folder."""
    b = base(root)
    for p in [b / "ImageSets" / "Main" / f"{s}.txt" for s in SPLITS.values()] + [b / "Annotations", b / "JPEGImages"]:
        if not p.exists():
            raise _missing(f"{p} does not exist")
    return b


def ids(b: Path, split: str) -> list[str]:
    path = b / "ImageSets" / "Main" / f"{SPLITS[split]}.txt"
    if not path.is_file():
        raise _missing(f"{path} does not exist")
    out = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not out:
        raise _missing(f"{path} lists no image ids")
    return out


def target(xml_path: Path) -> tuple:
    """One image's target over CLASSES (1 / 0 / -1 as in the module docstring) from its annotation."""
    if not xml_path.is_file():
        raise _missing(f"annotation {xml_path} does not exist")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise DataCorrupt(f"voc07: {xml_path} is not valid XML: {e}") from None
    out = [ABSENT] * len(CLASSES)
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASSES:
            raise DataCorrupt(f"voc07: {xml_path} has an object of unknown class {name!r} "
                             f"(expected one of {', '.join(CLASSES)})")
        i = CLASSES.index(name)
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        if not difficult:
            out[i] = POSITIVE
        elif out[i] == ABSENT:
            out[i] = DIFFICULT
    return tuple(out)


@functools.lru_cache(maxsize=8)
def samples(b: Path, split: str) -> tuple:
    """(image path, target) of every image of a split, in the order of its ImageSets list.

    Every annotation and image is checked here, so a missing file is named before any work
    (a few seconds for the 9963 images; cached per process since every stage loads its data)."""
    out = []
    for i in ids(b, split):
        image = b / "JPEGImages" / f"{i}.jpg"
        t = target(b / "Annotations" / f"{i}.xml")
        if not image.is_file():
            raise _missing(f"image {image} does not exist")
        out.append((str(image), t))
    return tuple(out)


# ---------------------------------------------------------------- the devkit's metric


def average_precision(scores: Sequence[float], targets: Sequence[int]) -> Optional[float]:
    """VOC2007 devkit AP (VOCevalcls.m): 11-point interpolated, difficult (-1) entries ignored.

    Images are ranked by decreasing score (ties keep their order, as Matlab's sort does);
    the interpolated precision at each recall level t in 0, 0.1, ..., 1 is the best precision at recall >= t
    (0 when that recall is never reached), and AP is their mean. None when there is no positive:
    recall is undefined and the class is left out of the mean."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    keep = targets != DIFFICULT  # the devkit counts them neither as true nor as false positives
    scores, positive = scores[keep], targets[keep] == POSITIVE
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order])
    precision = tp / np.arange(1, len(order) + 1)
    total = 0.0
    for k in range(11):
        # recall >= k/10 compared in integers: a float grid (the devkit's 0:0.1:1, ports' arange) can
        # hold 0.30000000000000004, so a recall of exactly 3/10 would miss its own level.
        reached = precision[10 * tp >= k * n_pos]
        total += reached.max() if reached.size else 0.0
    return float(total / 11)  # one division: a perfect ranking is exactly 1.0


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, list]:
    """(mean over classes with a positive, per-class AP or None): scores and targets are N x C."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(targets.shape[1])]
    defined = [a for a in aps if a is not None]
    if not defined:
        raise ValueError("no class has a positive example: mean average precision is undefined")
    return float(sum(defined) / len(defined)), aps
