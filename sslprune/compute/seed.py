"""Seeds derived from names, so every random draw is a pure function of (seed, purpose, step)."""
from __future__ import annotations

import hashlib

import torch


def derive(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings; stable across processes and Python versions."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(*parts, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive(*parts))


class Draws:
    """The random numbers a task draws for one batch (Exemplar's views, NPID's negatives).

    A pure function of (seed, purpose) and of each image's *global* position: the position in the
    global training batch (`rank * local_batch + i`), or in the test set for evaluation batches.
    So an image gets the same numbers whatever the number of ranks, the evaluation batch size, and
    whatever ran before in the process (nothing here touches torch's global generator).
    Positions are grouped in blocks of BLOCK: one generator per block keeps the cost independent
    of where a rank's images sit."""

    BLOCK = 1024

    def __init__(self, seed: int, positions: torch.Tensor, device: torch.device | str = "cpu"):
        self.seed, self.positions, self.device = seed, positions.to("cpu", torch.long), torch.device(device)

    @classmethod
    def for_batch(cls, seed: int, rank: int, local: int, device) -> "Draws":
        return cls(seed, rank * local + torch.arange(local), device)

    def uniform(self, purpose: str, k: int) -> torch.Tensor:
        """(images, k) uniform numbers in [0, 1) on the device, one row per image of the batch."""
        blocks = self.positions // self.BLOCK
        out = torch.empty(len(self.positions), k)
        for b in blocks.unique().tolist():
            rows = torch.rand(self.BLOCK, k, generator=generator(self.seed, purpose, k, b))
            at = blocks == b
            out[at] = rows[self.positions[at] - b * self.BLOCK]
        if self.device.type == "cuda":  # from page-locked memory the copy runs without blocking the host
            return out.pin_memory().to(self.device, non_blocking=True)
        return out.to(self.device)

    def generator(self, purpose: str) -> torch.Generator:
        """One stream for the whole batch, the same on every rank (a draw all ranks share)."""
        return generator(self.seed, purpose, device=self.device)
