"""Decoding and augmentation of ImageFolder images: in the DataLoader workers, or a batch at a
time on the device.

Both paths take the same crops and flips, drawn from each sample's seed and its image's size
alone (`train_box`; `eval_box` for the resize + centre crop of evaluation), and differ only in
where the pixels are made:

- workers (`load`): libjpeg-turbo decodes in the DataLoader workers (TorchCodec's call, or PIL's
  `draft` at half size, libjpeg's DCT scaling, when the crop is at least twice the output; PIL
  for other files), and the crop is resized on uint8 tensors; the loader normalises the uint8
  batch once, where it is used. Half size only: at 1/4 and 1/8 libjpeg-turbo decodes 4:2:0 colour
  too coarsely (measured on a photo: a mean error of 0.6-7.6 grey levels against the full-size
  decode's crop, 0.2-0.5 at 1/2) for ~0.1 ms less.
- device (`read`, `decode`, `resample`): the workers read the file's bytes (and decode with PIL
  only what nvJPEG does not take: greyscale and CMYK JPEGs, PNG and other formats); the batch is
  decoded where it is used (`decode`: TorchCodec's `decode_jpeg` on a list, one batched nvJPEG
  call on CUDA, libjpeg-turbo on CPU) and cropped, resized and flipped by one batched
  resampling of all its images.

Decoding is TorchCodec's, not torchvision's: torchvision 0.29 deprecates its decoders for
TorchCodec's (>= 0.16, the first with `decode_jpeg(list, device=)`); on the CPU both are the same
libjpeg-turbo call and give the same pixels (checked on the input-pipeline benchmark's 528
JPEGs). torchvision stays for the transforms.

`resample` is `torchvision.ops.roi_align(aligned=True, sampling_ratio=-1)` for a list of images
of different sizes: roi_align wants one padded N x C x H x W tensor, whose padding would cost
memory for the rare large image and, where a sample touches it, make an image's pixels depend on
the sizes of its batch neighbours (and so on how a batch is split across ranks). Here every
image is read from a flat buffer at its own offset and clamped at its own edges, so each output
pixel is a function of its own image and box only, whatever the batch holds.
"""
from __future__ import annotations

import contextlib
import io
import math
import random
from typing import Optional, Sequence

import numpy as np
import torch

from ..core.errors import DataCorrupt

SCALE = (0.08, 1.0)  # RandomResizedCrop's defaults: the crop's share of the image area
RATIO = (3 / 4, 4 / 3)  # and its aspect ratio range
MAX_GRID = 4  # bilinear samples per output pixel and axis in `resample` (roi_align has no cap)


def train_box(seed: int, height: int, width: int, scale=SCALE, ratio=RATIO) -> tuple:
    """(top, left, height, width, flip) of a random-resized crop: torchvision's RandomResizedCrop
    algorithm (10 tries, then the centre crop in the ratio range) plus a horizontal flip, drawn
    from `seed` only. Python's `random.random()` is the one draw whose sequence Python promises
    to keep for a given seed; a fixed number of draws keeps the flip independent of the tries."""
    rng = random.Random(seed)
    u = [rng.random() for _ in range(23)]
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for a in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * a])
        aspect = math.exp(lo + (hi - lo) * u[2 * a + 1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[20] * (height - h + 1)), int(u[21] * (width - w + 1)), h, w, u[22] < 0.5
    if width / height < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w, u[22] < 0.5


def eval_size(size: int) -> int:
    """The short side evaluation resizes to before its centre crop (256 for 224)."""
    return int(round(size * 256 / 224))


def eval_box(height: int, width: int, size: int) -> tuple:
    """(top, left, height, width), in the image's pixels, of what Resize(eval_size) followed by
    CenterCrop(size) keeps (torchvision's rounding of both)."""
    short, long = min(height, width), max(height, width)
    new_short, new_long = eval_size(size), int(eval_size(size) * long / short)
    new_h, new_w = (new_short, new_long) if height <= width else (new_long, new_short)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    sy, sx = height / new_h, width / new_w
    return top * sy, left * sx, size * sy, size * sx


def _rgb(image) -> torch.Tensor:
    """A PIL image as a 3 x H x W uint8 tensor (greyscale, CMYK, palette and alpha images
    converted as PIL converts them)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


@contextlib.contextmanager
def _opened(path: str, size: int, seed: Optional[int]):
    """The file's bytes, the image opened on them with only its header read, its (height, width),
    and what to take of it: the box (top, left, height, width in its pixels) and flip of the
    random-resized crop of `seed`, or (seed None) of the evaluation resize + centre crop. What
    PIL or libjpeg raise on a bad file, here or in the caller's block, is a DataCorrupt naming it."""
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            if seed is None:
                box, flip = eval_box(height, width, size), False
            else:
                *box, flip = train_box(seed, height, width)
            yield data, image, (height, width), box, flip
    except (OSError, RuntimeError, SyntaxError, ValueError) as e:  # PIL's and libjpeg's complaints
        raise DataCorrupt(f"{path} does not decode as an image: {e}") from None


# ---------------------------------------------------------------- workers: PIL, uint8


def load(path: str, size: int, seed: Optional[int]) -> torch.Tensor:
    """One image as a 3 x size x size uint8 tensor: the random-resized crop and flip of `seed`,
    or (seed None) the evaluation resize + centre crop.

    JPEGs decode with TorchCodec's libjpeg-turbo call, straight into a tensor (PIL's decode plus
    its copy into a tensor cost ~0.5 ms more per ImageNet image here); at half size, which only
    PIL's `draft` offers, when the crop is at least twice the output; other files with PIL."""
    from torch.nn import functional as F
    from torchcodec.decoders import decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    with _opened(path, size, seed) as (data, image, (height, width), box, flip):
        top, left, h, w = box
        if image.format == "JPEG" and min(h, w) >= 2 * size:
            image.draft("RGB", (max(1, width // 2), max(1, height // 2)))  # libjpeg's 1/2 DCT scaling
            x = _rgb(image)
        elif image.format == "JPEG":
            x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode="RGB")
        else:
            x = _rgb(image)
    if seed is None:
        return TF.center_crop(TF.resize(x, [eval_size(size)], antialias=True), [size, size])
    fy, fx = x.shape[1] / height, x.shape[2] / width  # 1 unless decoded at half size
    t, l = min(int(round(top * fy)), x.shape[1] - 1), min(int(round(left * fx)), x.shape[2] - 1)
    h, w = max(1, min(int(round(h * fy)), x.shape[1] - t)), max(1, min(int(round(w * fx)), x.shape[2] - l))
    # Pixels interleaved (channels_last): torch's fast uint8 antialiased resize wants them so.
    crop = x[None, :, t:t + h, l:l + w].contiguous(memory_format=torch.channels_last)
    x = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.flip(-1) if flip else x


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A uint8 (or 0..255 float, then changed in place) N x 3 x H x W batch as the network's
    input, once per batch: (x - 255 mean) / (255 std) in two passes over the batch, the first also
    the conversion to float (a CPU spends more time on passes over a batch than on arithmetic)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = x.sub_(mean * 255) if x.is_floating_point() else x - mean * 255
    return y.mul_(1 / (std * 255))


# ---------------------------------------------------------------- device: bytes, then a batch


def read(path: str, size: int, seed: Optional[int]) -> tuple:
    """What a worker hands the device path for one image: (path, bytes or None, pixels or None,
    box, flip). The bytes of a colour JPEG (what nvjpeg decodes); the 3 x H x W pixels, decoded
    by PIL, of anything else (greyscale and CMYK JPEGs, PNG, ...). The box is in the image's pixels."""
    with _opened(path, size, seed) as (data, image, _, box, flip):
        if image.format == "JPEG" and image.mode == "RGB":
            return path, torch.frombuffer(bytearray(data), dtype=torch.uint8), None, box, flip
        return path, None, _rgb(image), box, flip


def decode(data: Sequence[torch.Tensor], device: torch.device, names: Sequence[str] = ()) -> list:
    """Colour JPEG bytes (1-D uint8 CPU tensors) as 3 x H x W uint8 images on `device`: one
    batched nvJPEG call on CUDA (TorchCodec's), libjpeg-turbo on CPU. A batch that does not
    decode is decoded image by image: on CUDA with PIL on the CPU for what nvJPEG refuses; a file
    neither decodes is named (`names`).

    On CUDA, a caller that frees the images (and whatever it allocated beside them) and decodes
    again must first wait for the work queued on them, or the decoder can write into blocks that
    are still being read: loader._ahead does (the rule is written there)."""
    from PIL import Image
    from torchcodec.decoders import decode_jpeg

    if not data:
        return []
    try:
        return decode_jpeg(list(data), mode="RGB", device=device)
    except (RuntimeError, ValueError):
        pass
    out = []
    for i, d in enumerate(data):
        try:
            out.append(decode_jpeg(d, mode="RGB", device=device))
            continue
        except (RuntimeError, ValueError) as e:
            error = e
        if device.type == "cuda":
            try:
                with Image.open(io.BytesIO(d.numpy().tobytes())) as image:
                    out.append(_rgb(image).to(device))
                continue
            except (OSError, SyntaxError, ValueError) as e:
                error = e
        name = names[i] if i < len(names) else f"image {i} of the batch"
        raise DataCorrupt(f"{name} does not decode as an image: {error}") from None
    return out


def _taps(start: torch.Tensor, length: torch.Tensor, limit: torch.Tensor, size: int, grid: int) -> tuple:
    """roi_align's samples along one axis (aligned=True), as taps: for n boxes starting at `start`
    with `length` pixels, in images `limit` pixels long, each of the `size` outputs is the mean of
    `grid` bilinear samples spread over its share of the box. Returns the first pixel each output
    reads (n x size), its weights for that pixel and the next ones (n x size x taps; zero where
    it reads none) and the number of taps. On the CPU, where the boxes are: a handful of small
    tensors, and the tap count is known without waiting for the device."""
    n = len(start)
    bin_ = (length / size).view(n, 1, 1)
    steps = torch.arange(size, dtype=torch.float32).view(1, size, 1)
    within = ((torch.arange(grid, dtype=torch.float32) + 0.5) / grid).view(1, 1, grid)
    pos = ((start - 0.5).view(n, 1, 1) + steps * bin_ + within * bin_).clamp(min=0)
    last = (limit - 1).view(n, 1, 1)
    low = pos.long()
    edge = low >= last  # at the far edge both neighbours are the last pixel
    low = torch.where(edge, last, low)
    high = torch.where(edge, last, low + 1)
    frac = torch.where(edge, torch.zeros(()), pos - low)
    first = low[:, :, 0]
    taps = int((high[:, :, -1] - first).max()) + 1
    weights = torch.zeros(n, size, taps)
    for a in range(grid):  # explicit sums in a fixed order: no reduction kernel, no atomics
        for t in range(taps):
            weights[:, :, t] += (1 - frac[:, :, a]) * (low[:, :, a] - first == t) + \
                frac[:, :, a] * (high[:, :, a] - first == t)
    return first, weights / grid, taps


def resample(images: Sequence[torch.Tensor], boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box (top, left, height, width; n x 4 float, inside the image) resized to
    size x size, mirrored where `flips`: an n x 3 x size x size float batch in 0..255.

    roi_align's sampling: each output pixel is the mean of a grid of ky x kx bilinear samples,
    k = ceil(box side / size) (at most MAX_GRID), so a crop larger than the output is averaged,
    not aliased. Computed separably, a batch of images with the same grid at a time: a vertical
    pass gathers, for every output row, the few image rows it reads (row segments of the box's
    columns, through a sliding-window view of all images' pixels end to end), a horizontal pass
    the few columns of that. Every step is a gather or elementwise, so a pixel does not depend on
    which other images share the batch (zero-weight taps read whatever lies there, times 0)."""
    device = images[0].device
    n = len(images)
    flats, layout = [], []
    for im in images:  # each read in its own memory order, no copy: decoders differ
        if im.permute(1, 2, 0).is_contiguous():  # interleaved (libjpeg-turbo on CPU, PIL)
            flats.append(im.permute(1, 2, 0).reshape(-1))
        else:  # channels first (nvjpeg), or made so
            im = im.contiguous()
            flats.append(im.reshape(-1))
        layout.append((*im.stride(), int(im.shape[1]), int(im.shape[2])))
    starts = np.cumsum([0] + [len(f) for f in flats])
    layout = torch.tensor(layout, dtype=torch.int64)  # n x (channel, row, column strides, height, width)
    boxes = boxes.to(torch.float32).cpu()
    flips = flips.cpu().bool()
    grids = [(min(MAX_GRID, max(1, math.ceil(float(b[2]) / size))), min(MAX_GRID, max(1, math.ceil(float(b[3]) / size))),
              int(st[2])) for b, st in zip(boxes, layout)]
    plans = []
    for key in sorted(set(grids)):
        sel = torch.tensor([i for i, g in enumerate(grids) if g == key])
        b, st = boxes[sel], layout[sel]
        rows, wy, ty = _taps(b[:, 0], b[:, 2], st[:, 3], size, key[0])
        cols, wx, tx = _taps(b[:, 1], b[:, 3], st[:, 4], size, key[1])
        # A mirrored image reads the mirrored columns with the same taps: out.flip(-1) exactly.
        f = flips[sel].view(-1, 1)
        cols, wx = torch.where(f, cols.flip(1), cols), torch.where(f.view(-1, 1, 1), wx.flip(1), wx)
        left = cols.min(1).values  # the leftmost column any output reads
        span = int((cols.max(1).values + tx - left).max())
        plans.append((key[2], sel, rows, wy, ty, cols - left.view(-1, 1), wx, tx, left, span, st))
    pad = max((span - 1) * step for step, *_, span, _ in plans)
    flat = torch.cat(flats + [torch.zeros(pad, dtype=torch.uint8, device=device)])
    out = torch.empty(n, 3, size, size, device=device)
    for step, sel, rows, wy, ty, cols, wx, tx, left, span, st in plans:
        m = len(sel)
        # vertical pass: tmp[., c, i, u] = sum_t wy[., i, t] * image[c, row_i + t, left + u]
        start = torch.tensor(starts[sel.numpy()]) + left * step
        heads = (start.view(m, 1, 1, 1) + torch.arange(3).view(1, 3, 1, 1) * st[:, 0].view(m, 1, 1, 1)
                 + (rows.view(m, 1, size, 1) + torch.arange(ty)).clamp(max=st[:, 3].view(m, 1, 1, 1) - 1)
                 * st[:, 1].view(m, 1, 1, 1)).to(device)
        segments = flat.as_strided((len(flat) - (span - 1) * step, span), (1, step))
        wy = wy.to(device)
        tmp = None
        for t in range(ty):
            term = segments[heads[..., t]] * wy[:, :, t].view(m, 1, size, 1)
            tmp = term if tmp is None else tmp.add_(term)
        # horizontal pass: out[., c, i, j] = sum_t wx[., j, t] * tmp[., c, i, col_j + t]
        cols, wx = cols.to(device), wx.to(device)
        acc = None
        for t in range(tx):
            term = tmp.gather(3, (cols + t).view(m, 1, 1, size).expand(m, 3, size, size)) * wx[:, :, t].view(m, 1, 1, size)
            acc = term if acc is None else acc.add_(term)
        out[sel.to(device)] = acc
    return out
