"""Shared helpers: a tiny but real experiment on scikit-learn digits."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslprune.control.config import Config, DataConfig, ModelConfig, OptimConfig, ProbeConfig, PruneConfig, \
    RetrainConfig, RunConfig, SignalConfig, TaskConfig

ROOT = Path(__file__).resolve().parent.parent

# Tests never log to W&B, whatever the developer's credentials (tests/test_wandb.py sets its own env).
os.environ["WANDB_MODE"] = "disabled"


def tiny_optim(epochs: int = 2, **kw) -> OptimConfig:
    return OptimConfig(**{"optimizer": "sgd", "lr": 0.05, "batch_size": 128, "epochs": epochs, **kw})


def tiny_config(store: Path, **kw) -> Config:
    """Digits, a width-4 ResNet, 2 epochs per stage: seconds per stage on one core."""
    cfg = Config(
        experiment="tiny", store=str(store), seeds=[0],
        data=DataConfig(name="digits"), model=ModelConfig(name="resnet_small", width=4),
        prune=PruneConfig(rate=0.2, levels=2, rewind="3it"),
        signals={"labels": SignalConfig(TaskConfig("labels"), tiny_optim()),
                 "rotnet": SignalConfig(TaskConfig("rotnet"), tiny_optim())},
        retrain=RetrainConfig(data=DataConfig(name="digits"), optim=tiny_optim()),
        probe=ProbeConfig(signals=["rotnet"], datasets=[DataConfig(name="digits")], optim=tiny_optim(lr=0.1)),
        run=RunConfig(quiet=True, threads=1, workers=1),
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def cli(*args: str, timeout: float = 600, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the console scripts the way a user does, from a clean subprocess."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"
