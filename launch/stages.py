"""One Hydra app per stage, so `-m` sweeps of a single stage work (locally or as a SLURM array).

    sslprune-train   signal=<s> seed=<n>                  IMP level 0 (dense pretraining)
    sslprune-imp     signal=<s> seed=<n> [level=<L>]      one IMP level, or the whole chain 0..prune.levels
    sslprune-retrain signal=<s> seed=<n> level=<L> scheme=<winning_ticket|random_reinit|random>
    sslprune-probe   signal=<s> seed=<n> level=<L> [probe_dataset=<i>]     linear probe on probe.datasets[i]
    sslprune-svm     signal=<s> seed=<n> level=<L> [probe_dataset=<i>]     linear SVMs on svm.datasets[i] (VOC07)
    sslprune-finetune signal=<s> seed=<n> level=<L> [probe_dataset=<i>]    fine-tuning on finetune.datasets[i]

Without level=<L>, the evaluation apps run every level (each needs that IMP level done).
"""
from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from sslprune.core.errors import ConfigError
from sslprune.core.schema import Config
from sslprune.api import compute
from sslprune.launch.compose import CONFIG_PATH, app_help, typed, user_errors


def _levels(c: Config) -> list[int]:
    return list(range(c.prune.levels + 1)) if c.level is None else [c.level]


EVALUATIONS = ("probe", "svm", "finetune")  # apps that evaluate a level on one of their datasets (probe_dataset=<i>)


def evaluated(kind: str, c: Config):
    """The data set an evaluation app runs on: entry probe_dataset of <kind>.datasets."""
    datasets = getattr(c, kind).datasets
    if not datasets:
        raise ConfigError(f"{kind}.datasets is empty: nothing to evaluate on")
    if not 0 <= c.probe_dataset < len(datasets):
        raise ConfigError(f"probe_dataset={c.probe_dataset} must index {kind}.datasets (0..{len(datasets) - 1})")
    return datasets[c.probe_dataset]


def plan(kind: str, c: Config) -> list:
    from sslprune.core.stage import Finetune, ImpLevel, Probe, Retrain, Svm

    if kind == "train":
        return [ImpLevel(c, c.signal, c.seed, 0)]
    if kind == "imp":
        return [ImpLevel(c, c.signal, c.seed, lv) for lv in _levels(c)]
    if kind == "retrain":
        return [Retrain(c, c.signal, c.seed, lv, c.scheme) for lv in _levels(c)]
    stage = {"probe": Probe, "svm": Svm, "finetune": Finetune}[kind]
    return [stage(c, c.signal, c.seed, lv, evaluated(kind, c)) for lv in _levels(c)]


@user_errors
def execute(kind: str, cfg: DictConfig) -> list[dict]:
    c = typed(cfg)
    from sslprune.control import experiment

    if c.signal is None:
        raise ConfigError(f"signal=<name> is required: one of {', '.join(c.signals)}")
    if kind in EVALUATIONS:
        evaluated(kind, c)  # before the data are checked: a bad index is the first thing to say
    experiment.check_inputs(c)
    todo = plan(kind, c)
    # A single-level request needs its parent already done (a chain request produces its own parents).
    todo[0].require_parents()
    from sslprune.control import index

    index.write_chains(c, [c.signal])  # this app's chain only: the others may never run here
    if os.environ.get("SUBMITIT_EXECUTOR"):
        # Inside a job of Hydra's submitit launcher (`-m hydra/launcher=submitit_slurm`): run each stage
        # as sslprune-run's jobs do, so USR2/SIGTERM checkpoint at once and DDP ranks come from SLURM.
        from sslprune.control.job import StageJob

        return [StageJob(s, compute)() for s in todo]
    from sslprune.compute.runtime import local  # this app computes here

    rt = local(c.run)
    return [compute(s, rt) for s in todo]


def _app(kind: str):
    @hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
    def main(cfg: DictConfig) -> None:
        execute(kind, cfg)

    def app() -> None:
        app_help(kind)  # --help: conf/hydra/help/<kind>.yaml
        main()
    return app


train, imp, retrain, probe, svm, finetune = (_app(k) for k in ("train", "imp", "retrain", "probe", "svm", "finetune"))
