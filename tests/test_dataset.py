"""Data sets in their real on-disk layouts, and the loaders' promise: a batch is a pure function
of (seed, epoch, index), independent of resuming and of the number of ranks.

Fixtures are written here in the exact formats the public data sets ship in (IDX with its
big-endian header, CIFAR-10's pickled python batches, ImageFolder trees of JPEGs), so a reader
that gets a layout wrong fails here rather than on a cluster.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslprune.core import catalog
from sslprune.core.errors import DataMissing
from sslprune.core.schema import DataConfig


# ---------------------------------------------------------------- fixture writers


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """An IDX file as LeCun's format defines it: 0x0000, type 0x08 (ubyte), ndim, big-endian dims."""
    assert array.dtype == np.uint8
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload += array.tobytes(order="C")
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_fashion_mnist(raw: Path, rng: np.random.RandomState, n_train=20, n_test=10, compress=False) -> dict:
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = rng.randint(0, 10, n).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


def write_cifar10(root: Path, per_batch: int, n_test: int, seed: int = 0) -> dict:
    """torchvision's cifar-10-batches-py layout: pickled dicts, b'data' N x 3072 uint8 rows holding
    the R, G and B 32x32 planes one after another (row-major), b'labels' a list of ints."""
    rng = np.random.RandomState(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        planes = rng.randint(0, 256, (n, 3, 32, 32)).astype(np.uint8)
        labels = [int(v) for v in rng.randint(0, 10, n)]
        labels[: min(n, 10)] = list(range(min(n, 10)))  # every class present when n >= 10
        if name == "data_batch_1" and n >= 3:
            planes[0] = 0
            planes[0, 0] = 255  # pure red
            planes[1] = 0
            planes[1, 1] = 255  # pure green
            planes[2, 2] = np.arange(32 * 32).reshape(32, 32) % 251  # blue plane: position-coded
        data = planes.reshape(n, 3072)
        if name == "data_batch_1" and n >= 3:
            assert (data[0, :1024] == 255).all() and (data[0, 1024:] == 0).all()  # R plane first
        with open(base / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"{i}.png".encode() for i in range(n)]}, f)
        out[name] = (planes, np.asarray(labels, dtype=np.int64))
    return out


def write_image_folder(root: Path, train: dict, val: dict, size=(40, 48), seed: int = 0) -> None:
    """<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG (ImageNet, Places205)."""
    rng = np.random.RandomState(seed)
    for split, counts in (("train", train), ("val", val)):
        for cls, n in counts.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.randint(0, 256, (*size, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{cls}_{i:04d}.JPEG", quality=90)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar10(root, per_batch=20, n_test=12)


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    write_image_folder(root, train={"n01": 8, "n02": 8, "n03": 8}, val={"n01": 3, "n02": 2, "n03": 2})
    return root


def _all(it) -> list:
    return [tuple(t.clone() for t in b) for b in it]


def _equal_batches(a: list, b: list) -> bool:
    import torch

    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


# ---------------------------------------------------------------- digits


def test_digits_shapes_split_and_determinism():
    import torch
    from sslprune.compute import dataset
    from sslprune.compute.dataset import MemoryData

    train, test = dataset.digits()
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert len(train.labels) == 1438 and len(test.labels) == 359
    assert sorted(train.labels.unique().tolist()) == list(range(10)) == sorted(test.labels.unique().tolist())
    # 17 grey levels 0..16 scaled to the full byte range
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    assert len(train.images.unique()) == 17
    again_train, again_test = dataset.digits()
    assert torch.equal(train.images, again_train.images) and torch.equal(train.labels, again_train.labels)
    assert torch.equal(test.images, again_test.images) and torch.equal(test.labels, again_test.labels)
    # the split is a partition of scikit-learn's 1797 images
    from sklearn.datasets import load_digits

    d = load_digits()
    full = np.round(d.images * (255 / 16)).astype(np.uint8).reshape(len(d.images), -1)
    ours = torch.cat([train.images, test.images]).reshape(1797, -1).numpy()
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert key(ours) == key(full)
    data = dataset.load(DataConfig(name="digits"))
    assert isinstance(data, MemoryData) and data.num_classes == 10 and data.channels == 1


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_real_files(fashion_mnist):
    import torch
    from sslprune.compute import dataset
    from sslprune.compute.dataset import MemoryData

    data = dataset.load(DataConfig(name="fashion_mnist", root=str(fashion_mnist)))  # the Debian package
    assert isinstance(data, MemoryData) and data.num_classes == 10 and data.channels == 1
    tr, te = data.train, data.test
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert tr.images.dtype == torch.uint8 and tr.labels.dtype == torch.int64
    assert tr.labels.bincount().tolist() == [6000] * 10 and te.labels.bincount().tolist() == [1000] * 10
    # Published facts about the files: the first training labels (ankle boot, T-shirt, T-shirt, dress, ...)
    # and the pixel statistics everyone normalizes with.
    assert tr.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    x = tr.images.float() / 255
    assert abs(x.mean().item() - 0.286) < 0.01 and abs(x.std().item() - 0.353) < 0.01
    assert abs(te.images.float().mean().item() / 255 - 0.287) < 0.01
    # the normalization the loader uses is that of the data
    assert abs(data.mean[0] - x.mean().item()) < 0.01 and abs(data.std[0] - x.std().item()) < 0.01


@pytest.mark.parametrize("compress", [False, True], ids=["idx", "idx.gz"])
def test_fashion_mnist_torchvision_layout_reads_back_exactly(tmp_path, compress):
    import torch
    from sslprune.compute import dataset

    arrays = write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", np.random.RandomState(1), compress=compress)
    raw = tmp_path / "FashionMNIST" / "raw"
    assert (raw / ("train-images-idx3-ubyte" + (".gz" if compress else ""))).is_file()
    train, test = dataset.fashion_mnist(tmp_path)
    for split, prefix in ((train, "train"), (test, "t10k")):
        images, labels = arrays[prefix]
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(split.images[:, 0], torch.from_numpy(images))
        assert torch.equal(split.labels, torch.from_numpy(labels.astype(np.int64)))
    data = dataset.load(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert torch.equal(data.train.images, train.images) and data.num_classes == 10


def test_read_idx_header_and_rejects_other_types(tmp_path):
    from sslprune.compute import dataset

    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", a)
    assert (tmp_path / "a-idx3-ubyte").read_bytes()[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
    assert np.array_equal(dataset.read_idx(tmp_path / "a-idx3-ubyte"), a)
    (tmp_path / "f-idx1").write_bytes(struct.pack(">HBBI", 0, 0x0D, 1, 1) + struct.pack(">f", 1.0))  # float IDX
    with pytest.raises(ValueError, match="unsigned-byte"):
        dataset.read_idx(tmp_path / "f-idx1")


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_python_batches_read_back_exactly(cifar_root):
    import torch
    from sslprune.compute import dataset
    from sslprune.compute.dataset import MemoryData

    root, written = cifar_root
    train, test = dataset.cifar10(root)
    expect_x = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    expect_y = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, torch.from_numpy(expect_x))
    assert torch.equal(train.labels, torch.from_numpy(expect_y)) and train.labels.dtype == torch.int64
    assert torch.equal(test.images, torch.from_numpy(written["test_batch"][0]))
    assert torch.equal(test.labels, torch.from_numpy(written["test_batch"][1]))
    # channel order: R plane first, then G, then B; rows then columns within a plane
    red, green, coded = train.images[0], train.images[1], train.images[2]
    assert (red[0] == 255).all() and (red[1:] == 0).all()
    assert (green[1] == 255).all() and (green[0] == 0).all() and (green[2] == 0).all()
    assert int(coded[2, 0, 5]) == 5 and int(coded[2, 1, 0]) == 32 and int(coded[2, 3, 7]) == (3 * 32 + 7) % 251
    data = dataset.load(DataConfig(name="cifar10", root=str(root)))
    assert isinstance(data, MemoryData) and data.num_classes == 10 and data.channels == 3
    assert data.pad and data.flip
    # the folder holding cifar-10-batches-py and that folder itself both work as data.root
    again, _ = dataset.cifar10(root / "cifar-10-batches-py")
    assert torch.equal(again.images, train.images)


# ---------------------------------------------------------------- ImageFolder (ImageNet, Places205)


@pytest.mark.parametrize("name", ["imagenet", "places205"])
def test_image_folder_load(folder_root, name):
    from sslprune.compute import dataset
    from sslprune.compute.dataset import FolderData

    data = dataset.load(DataConfig(name=name, root=str(folder_root), image_size=24, workers=0))
    assert isinstance(data, FolderData)
    assert data.num_classes == 3 and data.channels == 3 and data.image_size == 24
    assert data.train_dir == folder_root / "train" and data.test_dir == folder_root / "val"


def _folder(folder_root, size=24, batch=4, seed=0, rank=0, world=1, **kw):
    import torch
    from sslprune.compute import dataset, loader
    CPU = torch.device("cpu")

    data = dataset.load(DataConfig(name="imagenet", root=str(folder_root), image_size=size, workers=0, **kw))
    return loader.make(data, batch, seed, CPU, rank, world)


def test_folder_loader_batches_normalized_and_deterministic(folder_root):
    import torch
    from sslprune.compute import loader

    ld = _folder(folder_root)
    assert isinstance(ld, loader.FolderLoader) and ld.steps_per_epoch == 24 // 4
    epoch0 = _all(ld.batches(0))
    assert len(epoch0) == 6
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    lo, hi = (-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
    for x, y in epoch0:
        assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and ((0 <= y) & (y < 3)).all()
        assert (x >= lo - 1e-5).all() and (x <= hi + 1e-5).all()
    x = torch.cat([b[0] for b in epoch0])
    assert x.min() < -1 and x.max() > 1  # normalized, not raw [0, 1] tensors
    ys = torch.cat([b[1] for b in epoch0])
    assert ys.bincount().tolist() == [8, 8, 8]  # one epoch sees every training image once
    assert _equal_batches(epoch0, _all(_folder(folder_root).batches(0)))  # a fresh loader, same numbers
    assert not _equal_batches(epoch0, _all(ld.batches(1)))
    assert not _equal_batches(epoch0, _all(_folder(folder_root, seed=1).batches(0)))


def test_folder_loader_ignores_and_keeps_the_global_rng(folder_root):
    import torch

    torch.manual_seed(123)
    a = _all(_folder(folder_root).batches(0))
    torch.manual_seed(456)
    state = torch.get_rng_state()
    b = _all(_folder(folder_root).batches(0))
    assert _equal_batches(a, b)  # augmentation draws come from the per-sample seeds only
    assert torch.equal(torch.get_rng_state(), state)  # and the caller's generator is left as it was


def test_folder_class_without_images_is_data_missing(tmp_path):
    import torch
    from sslprune.compute import dataset, loader
    CPU = torch.device("cpu")

    write_image_folder(tmp_path, train={"a": 2, "b": 2}, val={"a": 1, "b": 1})
    (tmp_path / "train" / "c").mkdir()
    data = dataset.load(DataConfig(name="imagenet", root=str(tmp_path), workers=0))
    with pytest.raises(DataMissing, match="c"):
        loader.make(data, 2, 0, CPU)


def test_folder_loader_resume_equals_uninterrupted(folder_root):
    ld = _folder(folder_root)
    full = _all(ld.batches(3))
    for start in (1, 4, 5):
        assert _equal_batches(_all(_folder(folder_root).batches(3, start)), full[start:])
    assert _all(ld.batches(3, 6)) == []


def test_folder_loader_ranks_split_the_global_batch(folder_root):
    import torch

    one = _all(_folder(folder_root, batch=4).batches(2))
    r0 = _all(_folder(folder_root, batch=4, rank=0, world=2).batches(2))
    r1 = _all(_folder(folder_root, batch=4, rank=1, world=2).batches(2))
    assert len(r0) == len(r1) == len(one)
    for (x, y), (x0, y0), (x1, y1) in zip(one, r0, r1):
        assert x0.shape[0] == 2
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_folder_loader_workers_give_the_same_batches(folder_root):
    import torch
    from sslprune.compute import dataset, loader
    CPU = torch.device("cpu")

    data = dataset.load(DataConfig(name="imagenet", root=str(folder_root), image_size=24, workers=2))
    with_workers = loader.make(data, 4, 0, CPU)
    assert _equal_batches(_all(with_workers.batches(0)), _all(_folder(folder_root).batches(0)))


def test_folder_eval_counts_every_val_image_once(folder_root):
    import torch

    whole = _all(_folder(folder_root).eval_batches(3))
    x_all, y_all = torch.cat([b[0] for b in whole]), torch.cat([b[1] for b in whole])
    assert len(y_all) == 7 and y_all.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert x_all.shape == (7, 3, 24, 24)
    parts = [_all(_folder(folder_root, rank=r, world=2).eval_batches(3)) for r in (0, 1)]
    counts = [sum(len(y) for _, y in p) for p in parts]
    assert counts == [4, 3] and sum(counts) == 7  # no padding, no duplicate
    for r, p in enumerate(parts):
        assert torch.equal(torch.cat([b[0] for b in p]), x_all[r::2])
        assert torch.equal(torch.cat([b[1] for b in p]), y_all[r::2])
    # evaluation is deterministic (center crop, no augmentation)
    assert _equal_batches(whole, _all(_folder(folder_root, seed=5).eval_batches(3)))


def test_folder_val_labels_follow_the_train_classes(tmp_path):
    """A val tree lacking a class must not shift the labels of the classes after it."""
    import torch
    from sslprune.compute import dataset, loader
    CPU = torch.device("cpu")

    write_image_folder(tmp_path, train={"a": 4, "b": 4, "c": 4}, val={"a": 2, "c": 2})
    data = dataset.load(DataConfig(name="imagenet", root=str(tmp_path), image_size=16, workers=0))
    assert data.num_classes == 3
    ld = loader.make(data, 4, 0, CPU)
    labels = torch.cat([y for _, y in ld.eval_batches(8)])
    assert labels.tolist() == [0, 0, 2, 2]


def test_folder_val_class_unknown_to_train_is_refused(tmp_path):
    from sslprune.compute import dataset

    write_image_folder(tmp_path, train={"a": 2, "b": 2}, val={"a": 1, "zzz": 1})
    with pytest.raises(DataMissing, match="zzz"):
        dataset.load(DataConfig(name="imagenet", root=str(tmp_path), workers=0))


def test_folder_train_limit_keeps_every_class(folder_root):
    """A quick run with data.train_limit must still see all classes, not the first one only."""
    import torch

    ld = _folder(folder_root, batch=3, train_limit=6, test_limit=3)
    assert ld.steps_per_epoch == 2
    ys = torch.cat([y for _, y in ld.batches(0)])
    assert sorted(ys.tolist()) == [0, 0, 1, 1, 2, 2]
    assert sorted(torch.cat([y for _, y in ld.eval_batches(8)]).tolist()) == [0, 1, 2]


# ---------------------------------------------------------------- MemoryLoader


def _memory(kind: str, cifar_root):
    from sslprune.compute import dataset

    if kind == "digits":
        return dataset.load(DataConfig(name="digits"))
    return dataset.load(DataConfig(name="cifar10", root=str(cifar_root[0])))


@pytest.mark.parametrize("kind", ["digits", "cifar10"])
def test_memory_loader_is_a_function_of_seed_epoch_index(kind, cifar_root):
    import torch
    from sslprune.compute import loader
    CPU = torch.device("cpu")

    data = _memory(kind, cifar_root)
    bs = 64 if kind == "digits" else 16
    a = loader.make(data, bs, 7, CPU)
    assert isinstance(a, loader.MemoryLoader)
    first = _all(a.batches(0))
    assert len(first) == len(data.train.labels) // bs
    x, y = first[0]
    assert x.dtype == torch.float32 and x.shape == (bs, data.channels, *data.train.images.shape[2:])
    assert _equal_batches(first, _all(loader.make(data, bs, 7, CPU).batches(0)))
    assert not _equal_batches(first, _all(a.batches(1)))
    assert not _equal_batches(first, _all(loader.make(data, bs, 8, CPU).batches(0)))
    # augmentation is on, and the order does not depend on it
    plain = _all(loader.make(replace(data, pad=0, flip=False), bs, 7, CPU).batches(0))
    assert all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(first, plain))
    assert not torch.equal(first[0][0], plain[0][0])
    for start in (1, len(first) - 1):
        assert _equal_batches(_all(loader.make(data, bs, 7, CPU).batches(0, start)), first[start:])


@pytest.mark.parametrize("kind", ["digits", "cifar10"])
def test_memory_loader_ranks_split_the_global_batch(kind, cifar_root):
    import torch
    from sslprune.compute import loader
    CPU = torch.device("cpu")

    data = _memory(kind, cifar_root)
    bs = 64 if kind == "digits" else 16
    one = _all(loader.make(data, bs, 3, CPU).batches(1))
    r0 = _all(loader.make(data, bs, 3, CPU, rank=0, world=2).batches(1))
    r1 = _all(loader.make(data, bs, 3, CPU, rank=1, world=2).batches(1))
    assert len(one) == len(r0) == len(r1)
    for (x, y), (x0, y0), (x1, y1) in zip(one, r0, r1):
        assert len(y0) == len(y1) == bs // 2
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


@pytest.mark.parametrize("kind", ["digits", "cifar10"])
def test_memory_eval_counts_every_test_image_once(kind, cifar_root):
    import torch
    from sslprune.compute import loader
    CPU = torch.device("cpu")

    data = _memory(kind, cifar_root)
    n = len(data.test.labels)
    whole = _all(loader.make(data, 16, 0, CPU).eval_batches(50))
    x_all, y_all = torch.cat([b[0] for b in whole]), torch.cat([b[1] for b in whole])
    assert torch.equal(y_all, data.test.labels)
    parts = [_all(loader.make(data, 16, 0, CPU, rank=r, world=2).eval_batches(50)) for r in (0, 1)]
    counts = [sum(len(y) for _, y in p) for p in parts]
    assert sum(counts) == n and counts == [(n + 1) // 2, n // 2]
    for r, p in enumerate(parts):
        assert torch.equal(torch.cat([b[0] for b in p]), x_all[r::2])
        assert torch.equal(torch.cat([b[1] for b in p]), y_all[r::2])


# ---------------------------------------------------------------- missing data


HOW = {"fashion_mnist": "dataset-fashion-mnist", "cifar10": "cifar-10-python.tar.gz",
       "imagenet": "image-net.org", "places205": "places.csail.mit.edu"}


@pytest.mark.parametrize("name", list(HOW))
def test_missing_root_names_path_and_how_to_get_it(tmp_path, name):
    from sslprune.compute import dataset

    root = tmp_path / "no" / "such" / "dir"
    cfg = DataConfig(name=name, root=str(root))
    for fn in (catalog.check, dataset.load):
        with pytest.raises(DataMissing) as e:
            fn(cfg)
        assert str(root) in str(e.value) and HOW[name] in str(e.value)


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_empty_root_fails_at_check_naming_the_files(tmp_path, name):
    """`check` runs before any work: a root without the files must fail there, not mid-run."""
    from sslprune.compute import dataset

    cfg = DataConfig(name=name, root=str(tmp_path))
    for fn in (catalog.check, dataset.load):
        with pytest.raises(DataMissing) as e:
            fn(cfg)
        msg = str(e.value)
        assert str(tmp_path) in msg and HOW[name] in msg
        assert ("train-images-idx3-ubyte" if name == "fashion_mnist" else "data_batch_1") in msg


def test_cifar10_partial_batches_fail_at_check(tmp_path):

    write_cifar10(tmp_path, per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataMissing, match="data_batch_4"):
        catalog.check(DataConfig(name="cifar10", root=str(tmp_path)))


@pytest.mark.parametrize("name", ["imagenet", "places205"])
@pytest.mark.parametrize("present", [[], ["train"], ["val"]], ids=["neither", "train-only", "val-only"])
def test_folder_split_missing(tmp_path, name, present):
    from sslprune.compute import dataset

    for split in present:
        (tmp_path / split / "c0").mkdir(parents=True)
    missing = "train" if "train" not in present else "val"
    cfg = DataConfig(name=name, root=str(tmp_path))
    for fn in (catalog.check, dataset.load):
        with pytest.raises(DataMissing) as e:
            fn(cfg)
        assert str(tmp_path / missing) in str(e.value) and HOW[name] in str(e.value)


def test_folder_train_without_class_folders_is_data_missing(tmp_path):

    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DataMissing, match="class"):
        catalog.check(DataConfig(name="imagenet", root=str(tmp_path)))


def test_root_required(tmp_path):

    with pytest.raises(DataMissing, match="data.root"):
        catalog.check(DataConfig(name="cifar10", root=None))
