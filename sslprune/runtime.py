"""Where a stage runs: device, threads, and (when several processes run it) its rank."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .config import RunConfig


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda"


def local(run: RunConfig) -> Runtime:
    if run.threads:
        torch.set_num_threads(run.threads)
    if run.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if run.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but no CUDA device is visible")
        device = torch.device(run.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device)
