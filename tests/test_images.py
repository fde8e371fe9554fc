"""ImageFolder decoding and augmentation (sslprune.compute.image) on both paths of FolderLoader.

The device path's batched code (decode a list, one resampling of the whole batch, normalise)
runs here on CPU tensors; only its nvjpeg call needs a GPU. Files of every kind the loader must
read (colour, greyscale, CMYK and progressive JPEGs, PNGs, a PNG named .JPEG as real ImageNet has)
are written here with PIL.
"""
from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from sslprune.core.errors import ConfigError, DataCorrupt
from sslprune.core.identity import identity
from sslprune.core.schema import DataConfig
from sslprune.core.validation import validate_data

from conftest import cli


def smooth(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like H x W x 3 uint8 image: low-frequency waves and a ramp, no pixel noise, so that
    two good resamplings of the same region agree to within a few grey levels."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = []
    for _ in range(3):
        fy, fx, phase = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6.3)
        out.append(128 + 70 * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase) + 40 * (xx - yy))
    return np.clip(np.stack(out, -1), 0, 255).astype(np.uint8)


def save(path: Path, pixels: np.ndarray, kind: str) -> None:
    """One file of `kind`: jpeg, progressive, grey (L JPEG), cmyk (CMYK JPEG), png, rgba (PNG),
    palette (P PNG), png_as_jpeg (a PNG whose name ends in .JPEG)."""
    im = Image.fromarray(pixels)
    if kind == "jpeg":
        im.save(path, "JPEG", quality=95)
    elif kind == "progressive":
        im.save(path, "JPEG", quality=95, progressive=True)
    elif kind == "grey":
        im.convert("L").save(path, "JPEG", quality=95)
    elif kind == "cmyk":
        im.convert("CMYK").save(path, "JPEG", quality=95)
    elif kind in ("png", "png_as_jpeg"):
        im.save(path, "PNG")
    elif kind == "rgba":
        im.convert("RGBA").save(path, "PNG")
    else:
        im.convert("P").save(path, "PNG")


KINDS = ("jpeg", "progressive", "grey", "cmyk", "png", "rgba", "palette", "png_as_jpeg")
SIZES = ((48, 64), (64, 48), (40, 40), (72, 56), (33, 90))


def tree(root: Path, per_class: int = 8, kinds=KINDS, val: int = 3) -> Path:
    """An ImageFolder tree of smooth images in every kind of file and in several sizes."""
    n = 0
    for split, count in (("train", per_class), ("val", val)):
        for c in ("a", "b", "c"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                kind = kinds[n % len(kinds)]
                h, w = SIZES[n % len(SIZES)]
                ext = "png" if kind in ("png", "rgba", "palette") else "JPEG"
                save(root / split / c / f"{i:03d}_{kind}.{ext}", smooth(h, w, n), kind)
                n += 1
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return tree(tmp_path_factory.mktemp("mixed"))


def make(root: Path, decode: str, batch: int = 6, seed: int = 0, rank: int = 0, world: int = 1, size: int = 24,
         workers: int = 0, channels_last: bool = False, **kw):
    import torch

    import torch
    from sslprune.compute import dataset, loader
    CPU = torch.device("cpu")

    data = dataset.load(DataConfig(name="imagenet", root=str(root), image_size=size, workers=workers,
                                   decode=decode, **kw))
    return loader.make(data, batch, seed, CPU, rank, world, channels_last)


def every(batches) -> list:
    return [(x.clone(), y.clone()) for x, y in batches]


def equal(a: list, b: list) -> bool:
    import torch

    import torch

    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def pixels(x: torch.Tensor) -> torch.Tensor:
    """A normalised batch back in 0..255."""
    import torch

    import torch
    MEAN, STD = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)

    return (x * STD + MEAN) * 255


# ---------------------------------------------------------------- crops drawn from seeds


def test_train_box_follows_random_resized_crop():
    from sslprune.compute import image

    areas, ratios, flips = [], [], 0
    for seed in range(400):
        top, left, h, w, flip = image.train_box(seed, 375, 500)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        areas.append(h * w / (375 * 500))
        ratios.append(w / h)
        flips += flip
        assert image.train_box(seed, 375, 500) == (top, left, h, w, flip)  # a function of the seed alone
    assert 0.07 < min(areas) < 0.15 and max(areas) > 0.9  # scale (0.08, 1), up to rounding
    assert 0.74 < min(ratios) < 0.8 and 1.28 < max(ratios) < 1.35  # ratio (3/4, 4/3)
    assert 160 < flips < 240
    assert len({image.train_box(s, 375, 500) for s in range(400)}) == 400
    # An image too narrow for any try falls back to torchvision's centre crop within the ratio range.
    assert image.train_box(1, 1000, 10) == ((1000 - 13) // 2, 0, 13, 10, image.train_box(1, 1000, 10)[4])


def test_eval_box_is_what_resize_and_centre_crop_keep():
    """The box of the resized image's centre crop, mapped back: an image whose pixels are their
    own column (row) index, resized and cropped by torchvision, holds the box's coordinates."""
    import torch

    import torch
    from sslprune.compute import image

    from torchvision.transforms.v2 import functional as F

    for h, w in ((375, 500), (500, 333), (300, 300)):
        top, left, bh, bw = image.eval_box(h, w, 224)
        assert bh == pytest.approx(bw, rel=0.01)  # square in the image (up to Resize's floor)
        cols = torch.arange(w, dtype=torch.float32).expand(1, h, w)
        rows = torch.arange(h, dtype=torch.float32).view(h, 1).expand(1, h, w)
        kept = [F.center_crop(F.resize(t, [256], antialias=False), [224, 224]) for t in (cols, rows)]
        # pixel centres of the first and last kept columns and rows, in the source's pixels
        assert float(kept[0][0, 0, 0]) == pytest.approx(left + bw / 448 - 0.5, abs=0.02)
        assert float(kept[0][0, 0, -1]) == pytest.approx(left + bw - bw / 448 - 0.5, abs=0.02)
        assert float(kept[1][0, 0, 0]) == pytest.approx(top + bh / 448 - 0.5, abs=0.02)
        assert float(kept[1][0, -1, 0]) == pytest.approx(top + bh - bh / 448 - 0.5, abs=0.02)


# ---------------------------------------------------------------- the batched resampling


def test_resample_is_roi_align_for_images_of_different_sizes():
    import torch

    import torch
    from sslprune.compute import image

    from torchvision.ops import roi_align

    g = torch.Generator().manual_seed(0)
    shapes = [(50, 70), (33, 20), (120, 90), (16, 20), (64, 64)]
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in shapes]
    images[1] = images[1].permute(1, 2, 0).contiguous().permute(2, 0, 1)  # interleaved, as libjpeg-turbo gives
    images[3] = images[3][:, :, :16]  # a view, neither layout
    # up- and downsampling, boxes touching every edge, fractional boxes (evaluation), grids 1..4
    boxes = torch.tensor([[3, 5, 40, 60], [0, 0, 33, 20], [10, 7, 60, 40.5], [2.25, 3, 5, 9], [0, 0, 64, 64]])
    size = 16
    out = image.resample(images, boxes, torch.zeros(5, dtype=torch.bool), size)
    assert out.shape == (5, 3, size, size) and out.dtype == torch.float32
    for im, (top, left, h, w), got in zip(images, boxes.tolist(), out):
        ref = roi_align(im[None].float(), [torch.tensor([[left, top, left + w, top + h]])], size, 1.0, -1, True)[0]
        assert torch.allclose(got, ref, atol=1e-3), (top, left, h, w)
    # Beyond MAX_GRID samples per axis the grid is capped: no longer roi_align, still an average.
    big = image.resample([images[2]], torch.tensor([[0, 0, 120, 90.0]]), torch.zeros(1, dtype=torch.bool), 8)
    ref = roi_align(images[2][None].float(), [torch.tensor([[0, 0, 90, 120.0]])], 8, 1.0, -1, True)[0]
    assert not torch.allclose(big[0], ref, atol=1e-3) and (big[0] - ref).abs().mean() < 40


def test_resample_flips_exactly_and_ignores_the_rest_of_the_batch():
    import torch

    import torch
    from sslprune.compute import image

    g = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in ((40, 50), (70, 30), (20, 90))]
    boxes = torch.tensor([[1, 2, 30, 40], [5, 0, 60, 30], [0, 10, 20, 70.0]])
    plain = image.resample(images, boxes, torch.tensor([False, False, False]), 12)
    mirrored = image.resample(images, boxes, torch.tensor([True, False, True]), 12)
    assert torch.equal(mirrored[0], plain[0].flip(-1)) and torch.equal(mirrored[2], plain[2].flip(-1))
    assert torch.equal(mirrored[1], plain[1])
    for i in range(3):  # bit for bit the same alone as in any batch: ranks may split it anyhow
        alone = image.resample(images[i:i + 1], boxes[i:i + 1], torch.tensor([i != 1]), 12)
        assert torch.equal(alone[0], mirrored[i])


# ---------------------------------------------------------------- files of every kind


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_file_decodes_to_its_colours(tmp_path, kind):
    """A flat-coloured image of each kind comes out of both paths in its colour (greyscale as
    grey, CMYK converted back), and only colour JPEGs are left to nvjpeg."""
    import torch

    import torch
    from sslprune.compute import image

    colour = np.array([200, 40, 90], dtype=np.uint8)
    expect = torch.tensor(colour, dtype=torch.float32)
    if kind == "grey":
        expect = torch.tensor(float(np.asarray(Image.fromarray(colour[None, None]).convert("L"))[0, 0])).expand(3)
    for c in ("a", "b"):
        for split in ("train", "val"):
            (tmp_path / split / c).mkdir(parents=True)
            save(tmp_path / split / c / f"x.{'png' if kind in ('png', 'rgba', 'palette') else 'JPEG'}",
                 np.broadcast_to(colour, (30, 44, 3)).copy(), kind)
    path = next((tmp_path / "train" / "a").iterdir())
    name, data, decoded, box, flip = image.read(str(path), 16, 7)
    assert name == str(path)
    assert (data is not None) == (kind in ("jpeg", "progressive"))  # the bytes go to nvjpeg
    if decoded is not None:  # decoded by PIL in the worker
        assert decoded.shape == (3, 30, 44) and decoded.dtype == torch.uint8
    for decode in ("workers", "device"):
        ld = make(tmp_path, decode, batch=2, size=16)
        for x, _ in [next(iter(ld.batches(0))), next(iter(ld.eval_batches(2)))]:
            got = pixels(x).mean((2, 3))
            assert torch.allclose(got, expect.expand(2, 3), atol=2.5), (decode, got, expect)


def test_decode_gives_what_pil_gives_and_names_a_file_that_does_not_decode(tmp_path):
    import torch

    import torch
    from sslprune.compute import image
    CPU = torch.device("cpu")

    buf = io.BytesIO()
    Image.fromarray(smooth(20, 30, 0)).save(buf, "JPEG", quality=90)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    out = image.decode([data, data], CPU)
    assert len(out) == 2 and torch.equal(out[0], out[1])
    assert torch.equal(out[0], torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())))).permute(2, 0, 1))
    with pytest.raises(DataCorrupt, match="b.JPEG does not decode as an image"):
        image.decode([data, data[:len(data) // 2]], CPU, ["a.JPEG", "b.JPEG"])


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_a_truncated_file_is_named(tmp_path, decode):
    """A file cut short (a broken download) stops the loader with its path, on both paths."""
    root = tree(tmp_path, per_class=2, kinds=("jpeg", "png"), val=1)
    victim = sorted((root / "train" / "b").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-400])
    with pytest.raises(DataCorrupt, match=f"{victim}.* does not decode as an image"):
        every(make(root, decode, batch=6).batches(0))


# ---------------------------------------------------------------- the two paths agree


def test_workers_and_device_paths_take_the_same_crops(mixed):
    """Same seeds, same boxes and flips: the two paths' batches differ only by resampling (a few
    grey levels on smooth images), far less than from the next epoch's crops."""
    import torch

    import torch

    for split in ("train", "eval"):
        w, d = make(mixed, "workers"), make(mixed, "device")
        if split == "train":
            a, b, other = every(w.batches(0)), every(d.batches(0)), every(d.batches(1))
        else:
            a, b, other = every(w.eval_batches(4)), every(d.eval_batches(4)), None
        assert len(a) == len(b) > 0
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(ya, yb)
            diff = (pixels(xa) - pixels(xb)).abs()
            assert diff.mean() < 2.0 and diff.amax((1, 2, 3)).max() < 40, (split, diff.mean(), diff.max())
        if other is not None:
            apart = torch.stack([(pixels(x1) - pixels(x2)).abs().mean() for (x1, _), (x2, _) in zip(b, other)])
            assert apart.mean() > 10


def test_reduced_size_decoding_keeps_the_crop(tmp_path, monkeypatch):
    """A crop at least twice the output size is decoded at half size (libjpeg's DCT scaling) and
    still shows the region of the full-size decode; a smaller crop is decoded at full size."""
    import torch

    import torch
    from sslprune.compute import image

    from torchvision.transforms.v2 import functional as F

    path = tmp_path / "big.JPEG"
    Image.fromarray(smooth(640, 800, 3)).save(path, "JPEG", quality=95)
    chosen = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # the real draft, recording the scale it chose
        out = real_draft(self, mode, size)
        chosen.append(self.decoderconfig[0])
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    full = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
    scales = []
    for size, seed in ((32, None), (32, 3), (32, 5), (32, 11), (300, None)):
        chosen.clear()
        got = image.load(str(path), size, seed)
        scales.append(chosen[0] if chosen else 1)
        if seed is None:
            ref = F.center_crop(F.resize(full, [image.eval_size(size)], antialias=True), [size, size])
        else:
            top, left, h, w, flip = image.train_box(seed, 640, 800)
            ref = F.resized_crop(full, top, left, h, w, [size, size], antialias=True)
            ref = ref.flip(-1) if flip else ref
        assert (got.float() - ref.float()).abs().mean() < 1, (size, seed)
    assert scales == [2, 2, 2, 2, 1]  # the 300 px centre crop keeps 561 px of the image: full size


# ---------------------------------------------------------------- the loader's contract, both paths


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_batches_are_a_function_of_seed_epoch_and_index(mixed, decode):
    import torch

    import torch

    ld = make(mixed, decode)
    assert ld.on_device == (decode == "device") and ld.steps_per_epoch == 4
    first = every(ld.batches(0))
    for x, y in first:
        assert x.shape == (6, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(torch.cat([y for _, y in first]).tolist()) == [0] * 8 + [1] * 8 + [2] * 8
    torch.manual_seed(99)
    state = torch.get_rng_state()
    assert equal(first, every(make(mixed, decode).batches(0)))  # a fresh loader, the same batches
    assert torch.equal(torch.get_rng_state(), state)  # and the caller's generator untouched
    assert not equal(first, every(ld.batches(1))) and not equal(first, every(make(mixed, decode, seed=1).batches(0)))
    for start in (1, 3):  # resuming mid-epoch gives the rest of the same epoch
        assert equal(every(make(mixed, decode).batches(0, start)), first[start:])
    assert equal(every(make(mixed, decode, workers=2).batches(0)), first)  # worker processes change nothing


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_ranks_split_the_global_batch_and_the_test_set(mixed, decode):
    import torch

    import torch

    one = every(make(mixed, decode).batches(2))
    parts = [every(make(mixed, decode, rank=r, world=3).batches(2)) for r in range(3)]
    for i, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([p[i][0] for p in parts]), x)
        assert torch.equal(torch.cat([p[i][1] for p in parts]), y)
    whole = every(make(mixed, decode).eval_batches(4))
    xs, ys = torch.cat([x for x, _ in whole]), torch.cat([y for _, y in whole])
    assert len(ys) == 9
    for r in range(2):
        mine = every(make(mixed, decode, rank=r, world=2).eval_batches(4))
        assert torch.equal(torch.cat([x for x, _ in mine]), xs[r::2])
        assert torch.equal(torch.cat([y for _, y in mine]), ys[r::2])


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_channels_last_batches_hold_the_same_numbers(mixed, decode):
    import torch

    import torch

    plain = every(make(mixed, decode).batches(0))
    last = every(make(mixed, decode, channels_last=True).batches(0))
    for (x, _), (xl, _) in zip(plain, last):
        assert x.is_contiguous() and xl.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, xl)


def test_an_unreadable_file_is_raised_by_the_consumer_naming_it(tmp_path):
    root = tree(tmp_path, per_class=4, kinds=("jpeg",), val=1)
    ld = make(root, "device", batch=4)
    victim = Path(ld.train.samples[5][0])
    victim.unlink()  # vanished after the scan
    before = threading.active_count()
    with pytest.raises(FileNotFoundError, match=victim.name):
        every(ld.batches(0))
    assert threading.active_count() == before  # the decoding thread ended
    batches = make(root, "device", batch=4).eval_batches(1)  # a consumer that stops early
    next(batches)
    batches.close()
    assert threading.active_count() == before


def test_decode_is_a_checked_runtime_setting(mixed):
    assert DataConfig().decode == "auto"
    assert identity(DataConfig(name="imagenet", decode="workers")) == identity(DataConfig(name="imagenet"))
    with pytest.raises(ConfigError, match="data.decode='gpu' is not one of auto, device, workers"):
        validate_data("data", DataConfig(name="imagenet", decode="gpu"))
    assert not make(mixed, "auto").on_device  # auto on a CPU run: the workers path
    p = cli("sslprune-run", "data.decode=gpu", "run.quiet=true", check=False)
    assert p.returncode == 2 and "data.decode='gpu' is not one of auto, device, workers" in p.stderr


def test_voc_multilabel_targets_on_the_device_path(tmp_path):
    """VOC07's float target matrices travel with the bytes (the device path's own collate)."""
    import torch

    import torch
    from sslprune.compute import dataset, loader
    CPU = torch.device("cpu")

    from test_voc import voc_split, write_voc

    write_voc(tmp_path, voc_split(6, 4))
    data = dataset.load(DataConfig(name="voc07", root=str(tmp_path), image_size=16, workers=0, decode="device"))
    ld = loader.make(data, 3, 0, CPU)
    x, y = next(iter(ld.eval_batches(8)))
    assert x.shape[1:] == (3, 16, 16) and y.dtype == torch.float32 and y.shape[1] == 20
    train_y = torch.cat([t for _, t in ld.batches(0)])
    assert sorted(map(tuple, train_y.int().tolist())) == sorted(t for _, t in data.train_samples)


def test_a_loader_keeps_its_workers_and_gives_what_fresh_loaders_give(mixed, monkeypatch):
    """The DataLoader (and its worker processes) was built again for every epoch and every
    evaluation. One per split now lives as long as the loader, each pass with its own plan: the
    batches are those of fresh loaders, mid-epoch starts and evaluations included."""
    import torch

    import torch

    built = []

    class Counted(torch.utils.data.DataLoader):
        def __init__(self, *a, **kw):
            built.append(kw.get("persistent_workers"))
            super().__init__(*a, **kw)

    kept = make(mixed, "workers", workers=1)
    fresh = [every(make(mixed, "workers").batches(e)) for e in (0, 1)]
    tests = every(make(mixed, "workers").eval_batches(4))
    monkeypatch.setattr(torch.utils.data, "DataLoader", Counted)
    assert equal(every(kept.batches(0)), fresh[0]) and equal(every(kept.eval_batches(4)), tests)
    assert equal(every(kept.batches(1)), fresh[1]) and equal(every(kept.batches(0, 2)), fresh[0][2:])
    half = kept.batches(1)  # a pass left unfinished (an interrupted stage) does not leak into the next
    next(half)
    assert equal(every(kept.batches(0)), fresh[0]) and equal(every(kept.eval_batches(4)), tests)
    assert built == [True, True]  # one DataLoader per split, its workers kept between passes
