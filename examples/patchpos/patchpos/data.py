"""A synthetic data set (the DataSet protocol): 8x8 grey images of stripes in one of four
orientations (horizontal, vertical, two diagonals), the orientation as label, with a fixed noise.
Built whole from `seed`, the same images in the same order every call."""
from __future__ import annotations

import numpy as np
import torch

from sslprune.compute.dataset import MemoryData, Split


def _split(n: int, size: int, rng: np.random.RandomState) -> Split:
    labels = rng.randint(0, 4, n)
    phase = rng.randint(0, 4, n)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    lines = np.stack([i, j, i + j, i - j + size])  # orientation k: stripes along lines[k] = const
    on = (lines[labels] + phase[:, None, None]) % 4 < 2
    images = np.clip(on * 200 + rng.randint(0, 56, (n, size, size)), 0, 255).astype(np.uint8)
    return Split(torch.from_numpy(images)[:, None], torch.from_numpy(labels.astype(np.int64)))


def stripes(n_train: int = 512, n_test: int = 256, size: int = 8, seed: int = 0) -> MemoryData:
    """`data: {_target_: patchpos.data.stripes, name: stripes, n_train: 512}`."""
    rng = np.random.RandomState(seed)
    train, test = _split(n_train, size, rng), _split(n_test, size, rng)
    return MemoryData("stripes", train, test, num_classes=4, mean=(0.5,), std=(0.3,), pad=1, flip=False)
