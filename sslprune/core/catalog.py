"""What the control plane knows about a data set without loading it (torch-free): where its files
must be, whether they are whole, and the facts that plans need (channels, classes, training
images). A login node checks a sweep's data with this before submitting anything; the compute
plane (sslprune.compute.dataset) reads the same files into tensors.

Checks are cheap and name the file: a missing root or file, an IDX file shorter than its header
says or with another count than its labels, a CIFAR-10 batch of the wrong size, a label outside
the data set's classes.
"""
from __future__ import annotations

import functools
import gzip
import numbers
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import voc
from .errors import ConfigError, DataCorrupt, DataMissing
from .schema import DATASETS, DataConfig

FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar10": 10}
CHANNELS = {"digits": 1, "fashion_mnist": 1, "cifar10": 3}
# scikit-learn's digits: 1797 images, split 80/20 by a fixed permutation (compute.dataset.digits).
DIGITS_TRAIN, DIGITS_TEST = 1438, 359
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
DEFAULT_ROOTS = {"fashion_mnist": FASHION_MNIST_DEBIAN}
HOW_TO_GET = {
    "imagenet": "ImageNet (ILSVRC-2012) from image-net.org, arranged as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
    "places205": "Places205 from places.csail.mit.edu, either as released (trainvalsplit_places205/"
                 "{train,val}_places205.csv with the images under images256/ or "
                 "data/vision/torralba/deeplearning/images256/) or arranged as train/<category>/*.jpg "
                 "and val/<category>/*.jpg",
}
PLACES205_SPLITS = "trainvalsplit_places205"
PLACES205_IMAGES = ("images256", "data/vision/torralba/deeplearning/images256")
FASHION_MNIST_FILES = [f"{p}-{k}-idx{d}-ubyte" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]


@dataclass(frozen=True)
class Facts:
    name: str
    channels: int
    num_classes: int
    train_count: Optional[int]  # None: an ImageFolder tree (counted when its loader is built)
    multilabel: bool = False

    @property
    def in_memory(self) -> bool:
        return self.train_count is not None


def root_of(cfg: DataConfig) -> Optional[Path]:
    root = cfg.root or DEFAULT_ROOTS.get(cfg.name)
    return Path(os.path.expanduser(root)) if root else None


def _how(name: str) -> str:
    return {
        "fashion_mnist": f"Install Debian's dataset-fashion-mnist ({FASHION_MNIST_DEBIAN}) or torchvision's layout.",
        "cifar10": "Download cifar-10-python.tar.gz and set data.root to the folder holding cifar-10-batches-py/.",
        "voc07": voc.HOW,
    }.get(name, "Obtain " + HOW_TO_GET.get(name, name) + ".")


# ---------------------------------------------------------------- IDX (MNIST family)


def find_idx(root: Path, stem: str) -> Optional[Path]:
    for d in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _fashion_mnist_missing(root: Path) -> None:
    missing = [n for n in FASHION_MNIST_FILES if find_idx(root, n) is None]
    if missing:
        raise DataMissing(
            f"Fashion-MNIST IDX files {', '.join(n + '[.gz]' for n in missing)} "
            f"not found under {root} (nor {root}/FashionMNIST/raw). Install Debian's package "
            f"dataset-fashion-mnist (files in {FASHION_MNIST_DEBIAN}) or use torchvision's "
            "FashionMNIST(root, download=True) on a machine with internet, then set data.root.")


def idx_bytes(path: Path) -> bytes:
    """An IDX file's bytes, gunzipped; a damaged gzip stream is named."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataCorrupt(f"{path} cannot be read: {e} (a truncated or damaged download? fetch it again)") from None


def idx_shape(path: Path, data: bytes) -> tuple[int, ...]:
    """The shape an IDX file's header declares, checked against the bytes that follow it."""
    if len(data) < 4:
        raise DataCorrupt(f"{path} has {len(data)} bytes: not an IDX file")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise DataCorrupt(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r})")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = 1
    for n in shape:
        body *= n
    if len(data) != 4 + 4 * ndim + body:
        raise DataCorrupt(f"{path} holds {len(data) - 4 - 4 * ndim} bytes of data where its header "
                          f"({' x '.join(map(str, shape))}) says {body}: truncated or damaged, fetch it again")
    return shape


@functools.lru_cache(maxsize=8)
def _fashion_mnist_counts(root: str, stamp: tuple) -> tuple[int, int]:
    """(train, test) image counts, with every file checked against its header and its partner."""
    counts = []
    for prefix in ("train", "t10k"):
        img, lab = find_idx(Path(root), f"{prefix}-images-idx3-ubyte"), find_idx(Path(root), f"{prefix}-labels-idx1-ubyte")
        label_bytes = idx_bytes(lab)
        images, labels = idx_shape(img, idx_bytes(img)), idx_shape(lab, label_bytes)
        if len(images) != 3 or len(labels) != 1:
            raise DataCorrupt(f"{img} must hold N x H x W images and {lab} N labels "
                              f"(they declare {images} and {labels})")
        if images[0] != labels[0]:
            raise DataCorrupt(f"{img} holds {images[0]} images but {lab} holds {labels[0]} labels: "
                              "the files do not belong together")
        _labels_in_range(lab, max(label_bytes[4 + 4 * len(labels):], default=0), NUM_CLASSES["fashion_mnist"])
        counts.append(images[0])
    return counts[0], counts[1]


def _labels_in_range(path: Path, top: int, num_classes: int) -> None:
    if top >= num_classes:  # a label the model has no output for: an index error deep in training
        raise DataCorrupt(f"{path} holds label {top}, outside 0..{num_classes - 1}: not this data set's labels")


def fashion_mnist_counts(root: Path) -> tuple[int, int]:
    _fashion_mnist_missing(root)
    paths = [find_idx(root, n) for n in FASHION_MNIST_FILES]
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)  # re-check a replaced file
    return _fashion_mnist_counts(str(root), stamp)


# ---------------------------------------------------------------- CIFAR-10


def cifar10_base(root: Path) -> Path:
    """The folder holding the batches: data.root may name it or the folder above it."""
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    missing = [n for n in CIFAR10_FILES if not (base / n).is_file()]
    if missing:
        raise DataMissing(
            f"CIFAR-10 python batches {', '.join(missing)} not found under {base}. Download "
            "cifar-10-python.tar.gz (torchvision.datasets.CIFAR10(root, download=True) does it) and "
            "set data.root to the folder holding cifar-10-batches-py/.")
    return base


class ArraysOnly(pickle.Unpickler):
    """CIFAR-10's own format is a pickle of plain data and numpy arrays: unpickled with only numpy's
    array reconstructors allowed, so a crafted batch file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def cifar10_batch(path: Path) -> dict:
    """One python batch as {b"data": N x 3072 uint8 array, b"labels": N labels}, checked."""
    import numpy as np

    try:
        with open(path, "rb") as f:
            d = ArraysOnly(f, encoding="bytes").load()
        data, labels = np.asarray(d[b"data"]), d[b"labels"]
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise DataCorrupt(f"{path} is not a whole CIFAR-10 python batch ({type(e).__name__}: {e}): "
                          "truncated or damaged, fetch it again") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataCorrupt(f"{path} holds data of shape {data.shape} and {len(labels)} labels, not "
                          "N x 3072 images with N labels")
    if not all(isinstance(v, numbers.Integral) and v >= 0 for v in labels):
        raise DataCorrupt(f"{path} holds labels that are not integers >= 0")
    _labels_in_range(path, max(labels, default=0), NUM_CLASSES["cifar10"])
    return d


@functools.lru_cache(maxsize=4)
def _cifar10_counts(base: str, stamp: tuple) -> tuple[int, int]:
    counts = [len(cifar10_batch(Path(base) / n)[b"labels"]) for n in CIFAR10_FILES]
    return sum(counts[:5]), counts[5]


def cifar10_counts(root: Path) -> tuple[int, int]:
    """(train, test) image counts, every batch file read and checked (cached while the files stay the same)."""
    base = cifar10_base(root)
    stamp = tuple(((base / n).stat().st_size, (base / n).stat().st_mtime_ns) for n in CIFAR10_FILES)
    return _cifar10_counts(str(base), stamp)


# ---------------------------------------------------------------- ImageFolder trees, Places205


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


def folder_classes(name: str, root: Path) -> list[str]:
    """The class folders of an ImageFolder data set (those of train/); val/ may hold a subset.

    Only folder names are read (cheap even for ImageNet). The class index is the position in
    train/'s sorted list, for both splits, so a val/ lacking a class keeps the labels aligned."""
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataMissing(f"{name}: {root / split} does not exist. " + _how(name))
    classes = _subdirs(root / "train")
    if not classes:
        raise DataMissing(f"{name}: {root / 'train'} holds no class folders (train/<class>/<image>). " + _how(name))
    unknown = sorted(set(_subdirs(root / "val")) - set(classes))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DataMissing(f"{name}: {root / 'val'} has class folders that {root / 'train'} lacks: {shown}. "
                          "Both splits must use the same class folder names.")
    return classes


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def folder_images(cfg: DataConfig, enough: int) -> Optional[int]:
    """The training images of an ImageFolder tree (train/<class>/..., found as torchvision's
    ImageFolder finds them, cut to train_limit), counted only up to `enough`: ImageNet reaches
    any batch size within its first class folder. None for data sets listed by split files."""
    if cfg.name in ("digits", "fashion_mnist", "cifar10", "voc07"):
        return None
    root = root_of(cfg)
    if cfg.name == "places205" and places205_released(root):
        return None
    if cfg.train_limit is not None:
        enough = min(enough, cfg.train_limit)
    n = 0
    for c in folder_classes(cfg.name, root):
        for _, _, names in os.walk(root / "train" / c, followlinks=True):
            n += sum(1 for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
            if n >= enough:
                return enough
    return n


def places205_files(root: Path) -> tuple[Path, Path, Path]:
    """(train list, val list, image folder) of the official Places205 release."""
    lists = [root / PLACES205_SPLITS / f"{s}_places205.csv" for s in ("train", "val")]
    for p in lists:
        if not p.is_file():
            raise DataMissing(f"places205: {p} does not exist. " + _how("places205"))
    for images in PLACES205_IMAGES:
        if (root / images).is_dir():
            return lists[0], lists[1], root / images
    raise DataMissing(f"places205: no image folder under {root}: expected "
                      + " or ".join(str(root / i) for i in PLACES205_IMAGES) + ". " + _how("places205"))


def _places205_list(path: Path, images: Path) -> tuple:
    """(image path, label) of every line "a/abbey/00000001.jpg 0" of an official split list."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataCorrupt(f"places205: {path} line {n} is {line.strip()!r}, not '<relative path> <label>'")
            out.append((str(images / parts[0]), int(parts[1])))
    if not out:
        raise DataMissing(f"places205: {path} lists no images. " + _how("places205"))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def places205_samples(train_list: Path, val_list: Path, images: Path) -> tuple:
    """(train, val, class names) of the official lists; cached per process (2.5 million lines, and
    every stage loads its data)."""
    train, test = _places205_list(train_list, images), _places205_list(val_list, images)
    # 205 classes in the release; a subset (or a test fixture) may hold fewer.
    num_classes = 1 + max(max(label for _, label in train), max(label for _, label in test))
    names = {}
    for path, label in train:
        names.setdefault(label, os.path.relpath(os.path.dirname(path), images))  # "a/abbey"
    return train, test, tuple(names.get(i, str(i)) for i in range(num_classes))


def places205_released(root: Path) -> bool:
    return (root / PLACES205_SPLITS).exists()


# ---------------------------------------------------------------- checks and facts


def check(cfg: DataConfig) -> None:
    """Fail fast, before any work, when a data set's files are not where the config says or not whole."""
    facts(cfg)


def facts(cfg: DataConfig) -> Facts:
    """A data set's facts, its files checked on the way (DataMissing / DataCorrupt naming the file).

    A data set of a `_target_` is the user's code: nothing is known before it runs (None)."""
    if cfg._target_ is not None:
        return Facts(cfg.name, None, None, None)
    if cfg.name not in DATASETS:
        raise ConfigError(f"data.name={cfg.name!r} is not one of {', '.join(DATASETS)}")
    if cfg.name == "digits":
        return Facts("digits", 1, 10, _limited(DIGITS_TRAIN, cfg.train_limit))
    root = root_of(cfg)
    if root is None:
        raise DataMissing(f"{cfg.name} needs data.root (the folder holding the data set); none given")
    if not root.is_dir():
        if root.exists():
            raise DataMissing(f"{cfg.name} data root {root} is a file, not a folder. " + _how(cfg.name))
        raise DataMissing(f"{cfg.name} data root {root} does not exist. " + _how(cfg.name))
    if cfg.name == "fashion_mnist":
        return Facts("fashion_mnist", 1, 10, _limited(fashion_mnist_counts(root)[0], cfg.train_limit))
    if cfg.name == "cifar10":
        return Facts("cifar10", 3, 10, _limited(cifar10_counts(root)[0], cfg.train_limit))
    if cfg.name == "voc07":
        b = voc.check(root)
        for split in ("train", "test"):
            voc.samples(b, split)  # every annotation and image named in the lists exists and parses
        return Facts("voc07", 3, len(voc.CLASSES), None, multilabel=True)
    if cfg.name == "places205" and places205_released(root):
        train_list, val_list, images = places205_files(root)
        train, test, classes = places205_samples(train_list, val_list, images)
        # Listing 2.5 million images is the loader's business; the first of each list shows the
        # image folder is the right one before any work.
        for path, _ in (train[0], test[0]):
            if not os.path.isfile(path):
                raise DataMissing(f"places205: image {path} listed in {PLACES205_SPLITS}/ does not exist. "
                                  + _how("places205"))
        return Facts("places205", 3, len(classes), None)
    return Facts(cfg.name, 3, len(folder_classes(cfg.name, root)), None)


def _limited(n: int, limit: Optional[int]) -> int:
    return n if limit is None else min(n, limit)
