"""Two augmented views of a batch: the augmentation of SimCLR, MoCo v2 and BYOL, made for a whole
batch on its device from per-image draws, and scaled to the image size.

The published pipeline (Chen et al. 2020, SimCLR appendix A; MoCo v2 and BYOL use the same with
other strengths) on 224 px ImageNet crops: random resized crop (area 8-100 %, aspect 3/4-4/3),
horizontal flip, colour jitter with probability 0.8 (brightness, contrast, saturation, hue),
greyscale with probability 0.2, Gaussian blur (sigma 0.1-2.0 px, kernel 10 % of the side), and for
BYOL solarisation. Scaled down for the twins' small images, and said where:

  - crop: the smallest crop is at least 4 x 4 pixels, so the area's lower bound is
    max(0.08, (4 / side)^2): 0.25 on 8 px digits (a 2 x 2 px crop of a digit is no digit), 0.08 from
    15 px up (CIFAR-10 and ImageNet keep the published 0.08);
  - blur: sigma and kernel scale with the side (sigma 0.1-2.0 px at 224 px, kernel 10 % of the side,
    odd); below a 3-pixel kernel there is no blur at all (SimCLR's own CIFAR-10 runs drop it), so
    digits (8 px) and CIFAR-10 (32 px: a 3 px kernel) differ here;
  - flip only where the data set flips (a flipped digit is another glyph: the loader's own rule);
  - saturation and greyscale act on colour images only; hue is not jittered (a hue rotation of the
    normalised tensor is not implemented: the one published component left out);
  - the jitter's components are applied in a fixed order (brightness, contrast, saturation), not the
    random order of torchvision's ColorJitter.

Views are drawn from the batch's `Draws` (seed.Draws): a function of the stage's seed, the step
and each image's global position, never the global RNG, so 1 and 2 ranks see the same views and a
resumed run draws what the uninterrupted one did."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

DRAWS = 13  # uniform numbers per image and view (see View.__call__)
GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma


def min_crop_area(side: int) -> float:
    """The smallest crop's share of the image: the published 0.08, or more so a crop keeps 4 x 4 pixels."""
    return max(0.08, (4.0 / side) ** 2)


def blur_kernel(side: int) -> int:
    """The Gaussian blur's kernel: 10 % of the side, odd; 0 (no blur) below 3 pixels."""
    k = int(side * 0.1)
    k = k if k % 2 else k - 1
    return k if k >= 3 else 0


class View:
    """One view's augmentation with a method's strengths; `blur`, `solarize`: their probabilities."""

    def __init__(self, mean: tuple, std: tuple, flip: bool, jitter: float, blur: float, solarize: float = 0.0):
        self.mean, self.std, self.flip = tuple(mean), tuple(std), flip
        self.jitter, self.blur, self.solarize = jitter, blur, solarize

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The view of a normalised batch x (b, c, h, w) from its draws u (b, DRAWS) in [0, 1):
        crop area, aspect, centre y, centre x, flip, jitter?, brightness, contrast, saturation,
        grey?, blur?, sigma, solarise?"""
        b, c, h, w = x.shape
        u = u.to(device=x.device, dtype=x.dtype)
        shape = (1, c, 1, 1)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(shape)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(shape)
        raw = (x * std + mean).clamp(0, 1)
        raw = self._crop(raw, u[:, :5])
        raw = self._colour(raw, u[:, 5:10])
        raw = self._blur(raw, u[:, 10:12])
        if self.solarize > 0:
            on = (u[:, 12] < self.solarize).view(b, 1, 1, 1)
            raw = torch.where(on & (raw >= 0.5), 1 - raw, raw)
        return (raw - mean) / std

    def _crop(self, raw, u):
        """Random resized crop (and flip) as one affine resampling back to the full size."""
        b, c, h, w = raw.shape
        lo = min_crop_area(min(h, w))
        area = lo + (1 - lo) * u[:, 0]
        aspect = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1])
        sw = torch.sqrt(area * aspect).clamp(max=1)  # crop width and height as fractions of the side
        sh = torch.sqrt(area / aspect).clamp(max=1)
        cy = (2 * u[:, 2] - 1) * (1 - sh)  # the crop's centre, in [-1, 1] coordinates, inside the image
        cx = (2 * u[:, 3] - 1) * (1 - sw)
        sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0).to(raw.dtype) if self.flip else torch.ones_like(sw)
        zero = torch.zeros_like(sw)
        theta = torch.stack([torch.stack([sw * sign, zero, cx], 1), torch.stack([zero, sh, cy], 1)], 1)
        grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
        return F.grid_sample(raw, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _colour(self, raw, u):
        """Colour jitter with probability 0.8, then greyscale with probability 0.2 (colour images)."""
        b, c = raw.shape[:2]
        on = (u[:, 0] < 0.8).to(raw.dtype).view(b, 1, 1, 1)
        bright, contrast, sat = (1 + on * self.jitter * (2 * u[:, i].view(b, 1, 1, 1) - 1) for i in (1, 2, 3))
        raw = (raw * bright).clamp(0, 1)
        level = raw.mean(dim=(1, 2, 3), keepdim=True)
        raw = ((raw - level) * contrast + level).clamp(0, 1)
        if c == 3:
            grey = torch.tensor(GREY, device=raw.device, dtype=raw.dtype).view(1, 3, 1, 1)
            luma = (raw * grey).sum(1, keepdim=True)
            raw = ((raw - luma) * sat + luma).clamp(0, 1)
            luma = (raw * grey).sum(1, keepdim=True)
            raw = torch.where((u[:, 4] < 0.2).view(b, 1, 1, 1), luma.expand_as(raw), raw)
        return raw

    def _blur(self, raw, u):
        """Separable Gaussian blur with probability `blur`, sigma 0.1-2.0 px scaled by side / 224."""
        b, c, h, w = raw.shape
        k = blur_kernel(min(h, w))
        if not k or self.blur <= 0:
            return raw
        sigma = (0.1 + 1.9 * u[:, 1]) * min(h, w) / 224
        t = torch.arange(k, device=raw.device, dtype=raw.dtype) - k // 2
        kernel = torch.exp(-(t.view(1, k) ** 2) / (2 * sigma.view(b, 1) ** 2))
        kernel = kernel / kernel.sum(1, keepdim=True)  # (b, k)
        weight = kernel.repeat_interleave(c, 0)  # one kernel per image and channel
        flat = raw.reshape(1, b * c, h, w)
        flat = F.conv2d(F.pad(flat, (0, 0, k // 2, k // 2), mode="reflect"), weight.view(b * c, 1, k, 1), groups=b * c)
        flat = F.conv2d(F.pad(flat, (k // 2, k // 2, 0, 0), mode="reflect"), weight.view(b * c, 1, 1, k), groups=b * c)
        return torch.where((u[:, 0] < self.blur).view(b, 1, 1, 1), flat.view(b, c, h, w), raw)


def two_views(first: View, second: View, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views of a batch from its draws u (b, 2 * DRAWS): the first DRAWS numbers make view 1."""
    return first(x, u[:, :DRAWS]), second(x, u[:, DRAWS:])
