"""sslprune from Python: compose an experiment, run it here or on SLURM, read what it measured.

    from sslprune import api

    cfg = api.config("demo", "seeds=[0]", "prune.levels=2", store="runs")   # a typed Config
    api.run(cfg)                                   # every missing stage here, then the report files
    api.results(cfg)                               # one row per measurement (a pandas DataFrame)
    api.where(cfg, "imp rotnet seed=0 level=2")    # the directory of that stage
    api.export(cfg, "rotnet", seed=0, level=2)     # that ticket as standalone files (sslprune-export)

The same presets and overrides as the command-line apps (`sslprune-run experiment=demo seeds=[0]`),
without Hydra in sight: `config` composes them with Hydra's compose API and returns the plain
dataclass `sslprune.core.schema.Config`, which can also be changed in Python
(`dataclasses.replace`). The app layer, as the command-line apps are: it may use both planes, which
never import each other; `compute` is the one function through which the control plane's runners
(sslprune-run's workers, submitit jobs) reach the compute plane. Importing this module imports
neither torch nor Hydra; `run`, `run_stage` and `compute` import the compute plane when they compute.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .core.errors import ConfigError
from .core.schema import Config

__all__ = ["presets", "config", "stages", "stage", "where", "run", "run_stage", "compute", "submit", "report",
           "results", "summary", "table", "export"]


def presets() -> list[str]:
    """The names `config` accepts: the experiment presets shipped in sslprune.conf/experiment/."""
    from importlib.resources import files

    return sorted(p.name[:-len(".yaml")] for p in files("sslprune.conf").joinpath("experiment").iterdir()
                  if p.name.endswith(".yaml"))


def register_schema() -> None:
    """Make the typed schema known to Hydra under the name conf/config.yaml's defaults list gives it
    (`sslprune_schema`): the apps (launch/compose.py) and `config` compose against it."""
    from hydra.core.config_store import ConfigStore

    from .core.schema import composable

    ConfigStore.instance().store(name="sslprune_schema", node=composable())


def config(preset: str = "demo", *overrides: str, store: Optional[Union[str, Path]] = None) -> Config:
    """The preset with command-line style overrides applied (`"seeds=[0]"`, `"model.width=4"`,
    `"model=resnet18_cifar"`), validated, as a typed Config; `store` sets where results go
    (default ./runs, made absolute here)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .control import hydra_globals
    from .core.schema import from_dict
    from .core.validation import check_keys, ready

    register_schema()
    plugin = any(o.startswith("hydra.searchpath=") for o in overrides)  # a plugin's experiment files
    if preset not in presets() and not plugin:
        raise ConfigError(f"experiment={preset!r} is not a preset: one of {', '.join(presets())}")
    args = [f"experiment={preset}", *overrides] + ([f"store={store}"] if store is not None else [])
    # Inside a running Hydra app (or a notebook that initialised Hydra) compose with our own
    # configs, then leave Hydra as it was.
    with hydra_globals.set_aside():
        with initialize_config_module(config_module="sslprune.conf", version_base=None):
            try:
                composed = compose(config_name="config", overrides=args)
            except (HydraException, OmegaConfBaseException) as e:  # a bad override: say which, in one line
                raise ConfigError(str(e).strip().splitlines()[0]) from e
        check_keys(OmegaConf.to_container(composed, resolve=False))  # before from_dict drops unknown keys
        return ready(from_dict(OmegaConf.to_container(composed, resolve=True)))


def _table(rows: list[dict]):
    """A pandas DataFrame when pandas is installed, else the list of dicts itself."""
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)


def stages(cfg: Config):
    """Every stage of the experiment: label, kind, signal, seed, level, scheme, evaluation,
    directory (relative to the store) and state (done, todo, corrupt), as a table."""
    from .control import index

    return _table(index.stage_rows(cfg))


def stage(cfg: Config, label: str):
    """The stage (sslprune.core.stage.Stage) a label names, e.g. "retrain rotnet random seed=0 level=2"."""
    from .control import index

    return index.find(cfg, label)


def where(cfg: Config, label: str) -> Path:
    """The directory of the stage a label names (whether or not it has run yet)."""
    return Path(stage(cfg, label).dir)


def run(cfg: Config) -> int:
    """Run every missing stage of the experiment here (worker processes on CPU), then write the
    report files and update the W&B summary run when W&B is on, as sslprune-run does; returns
    how many stages ran. Re-running skips what is done."""
    from .control import local, report as report_, wandb_mode, wandb_report

    wandb_mode.announce(cfg.wandb)
    ran = local.run_local(cfg, compute, uses_cuda, check_networks)
    report_.write(cfg)
    wandb_report.publish(cfg)
    return ran


def run_stage(cfg: Config, label: str) -> dict:
    """Run one stage here (its parents must be done) and return its result record."""
    from .control import experiment, index, wandb_mode

    s = index.find(cfg, label)
    experiment.check_inputs(cfg)
    s.require_parents()
    wandb_mode.announce(cfg.wandb)
    index.write_chains(cfg)
    return compute(s)


def submit(cfg: Config) -> dict:
    """Submit every stage that is neither done nor queued to SLURM as job arrays (cfg.launcher
    holds the resources); returns at once with what was submitted."""
    from .control import experiment, submission

    experiment.check_inputs(cfg)
    return submission.submit(cfg, compute)


def compute(stage, rt=None, interrupt=None, started: Optional[float] = None, observer=None) -> dict:
    """Run (or resume) one stage in this process and return its result record: the compute plane's
    entry point (sslprune.compute.runner.run) with the W&B mirror (sslprune.control.dashboard)
    subscribed to the stage's progress. The control plane's runners (sslprune.control.local, the
    submitit jobs of sslprune.control.job) are handed this function by the apps and call it, so
    neither plane imports the other; it pickles by name, and a job imports torch only here, once it
    computes. A done stage run by this process alone returns its stored result without torch.

    `rt`: a compute Runtime, None for this process alone, or "environment" for the ranks of a
    SLURM/submitit job; `interrupt`, `started`, `observer`: as sslprune.compute.runner.run."""
    if rt is None and stage.done():  # ranks decide together (runner.run): rank 0 reads, all follow
        return stage.result()
    from .compute import runner
    from .control import dashboard

    return runner.run(stage, rt, interrupt, started, observer, mirror=dashboard.observer)


def check_networks(cfg: Config) -> None:
    """What only a built network can tell, for every chain before any stage runs (imports torch): a
    pretrained file that does not fit the network, a target network's scope that is not one of its
    cut points (sslprune.compute.runner.check_network on each signal's level 0; a stage checks its
    own again when it starts, as a SLURM job does)."""
    if cfg.model.weights is None and cfg.model._target_ is None:
        return  # nothing to check: the runner's imports stay out of a plain run's start-up
    from .compute import runner
    from .core.stage import ImpLevel

    for signal in cfg.signals:
        runner.check_network(ImpLevel(cfg, signal, cfg.seeds[0], 0))


def uses_cuda(run) -> bool:
    """Whether stages computed here use a GPU (sslprune.compute.runtime.uses_cuda; imports torch)."""
    from .compute.runtime import uses_cuda as answer

    return answer(run)


def report(cfg: Config) -> Path:
    """Write the report files from what the store holds now; returns their folder."""
    from .control import report as report_

    return report_.write(cfg)[0]


def results(cfg: Config):
    """One row per finished measurement: experiment, signal, task, scope, evaluation, metric,
    level, remaining, seed, accuracy (a fraction; unfinished stages are left out)."""
    from .control import report as report_

    return _table(report_.rows(cfg))


def summary(cfg: Config):
    """Mean, standard error and count over seeds per signal, evaluation and level."""
    from .control import report as report_

    return _table(report_.summarize(report_.rows(cfg)))


def table(cfg: Config) -> str:
    """The pivot printed at the end of a run (markdown): per family, levels by signal and evaluation."""
    from .control import report as report_

    return report_.pivot(report_.summarize(report_.rows(cfg)))


def export_stage(cfg: Config, signal: Optional[str], seed: int, level: Optional[int], scheme: Optional[str] = None):
    """The stage `export` writes: IMP level `level` of `signal`'s chain, or with `scheme` the
    re-training of that level's mask from that start. Bad selectors raise ConfigError naming them."""
    from .core.schema import SCHEMES
    from .core.stage import ImpLevel, Retrain

    if signal not in cfg.signals:
        raise ConfigError(f"signal={signal!r} is not a signal of experiment {cfg.experiment}: "
                          f"one of {', '.join(cfg.signals)}")
    if seed not in cfg.seeds:
        raise ConfigError(f"seed={seed} is not one of the experiment's seeds {list(cfg.seeds)}")
    if level is None or not 0 <= level <= cfg.prune.levels:
        raise ConfigError(f"level={level} must be an IMP level 0..{cfg.prune.levels} (prune.levels)")
    if scheme is None:
        return ImpLevel(cfg, signal, seed, level)
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme={scheme!r} is not one of {', '.join(SCHEMES)}")
    return Retrain(cfg, signal, seed, level, scheme)


def export(cfg: Config, signal: str, seed: int = 0, level: Optional[int] = None, scheme: Optional[str] = None,
           out: Optional[Union[str, Path]] = None) -> dict:
    """Write a finished stage's network as standalone files (sslprune.compute.export: model.pt, a
    plain state_dict with pruned weights zero; mask.pt; compact.pt with bit-packed masks and kept
    values; export.json) into `out`, by default <store>/exports/<experiment>/<stage>; returns
    export.json's record (with "folder")."""
    from .core.errors import MissingInput
    from .core.stage import DONE

    s = export_stage(cfg, signal, seed, level, scheme)
    if not s.done():
        raise MissingInput(f"{s.label} is not done: expected {s.dir / DONE}; run it first (sslprune-run)")
    if out is None:
        name = f"{s.kind}_{signal}" + (f"_{scheme}" if scheme else "") + f"_seed{seed}_level{level}"
        out = Path(cfg.store) / "exports" / cfg.experiment / name
        from .core import store as files

        files.confine(cfg.store, out)  # a linked exports/ would take the files outside the store
    from .compute import export as exporter

    record = exporter.write(s, Path(out))
    return {**record, "folder": str(Path(out))}
