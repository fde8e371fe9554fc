"""Validation of a composed config: keys the schema lacks (with a did-you-mean), then every value,
each refused with a ConfigError naming its key, before any work starts."""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, List, Mapping, Optional

from . import pretrained, store, target as targets
from .errors import ConfigError
from .rewind import REWIND
from .schema import (CUT_POINTS, DATASETS, DECODES, DEVICES, INITS, LABEL_SUBSETS, LAUNCHERS, MODELS, OPTIMIZERS,
                     PROBE_FEATURES, SCHEDULES, SCHEMES, SVM_FEATURES, TASKS, WANDB_FALLBACKS, WANDB_MODES, Config,
                     DataConfig, LauncherConfig, OptimConfig, OPEN, builtin, TaskConfig, WandbConfig)
from .sweep import expand


# ---------------------------------------------------------------- keys the schema has


def check_keys(tree: Mapping, schema: type = None) -> None:
    """Raise ConfigError naming the first key of `tree` (a composed config as plain dicts and lists)
    that `schema` does not have, with the closest schema key when there is one.

    Hydra's `+key=value` adds keys to a typed config without complaint and schema.from_dict then
    drops them, so a typo (`+prune.rat=0.5`) would run with the default silently. Free-form maps
    (`Dict[str, Any]`, e.g. launcher.additional_parameters) take any key; maps and lists of schema
    objects (signals, probe.datasets) have each entry checked. A node with a `_target_` takes any
    key too: its other keys are the target's keyword arguments (checked when a stage starts)."""
    _walk(tree, schema or Config, "")


def _walk(tree: Mapping, schema: type, at: str) -> None:
    hints = typing.get_type_hints(schema)
    targeted = schema in OPEN and tree.get("_target_") is not None
    for key, value in tree.items():
        path = f"{at}.{key}" if at else str(key)
        if key not in hints and targeted:
            continue  # a keyword argument of the target (checked against it when its stage starts)
        if key not in hints:
            shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
            near = difflib.get_close_matches(str(key), list(hints), n=1)
            if near:
                hint = f"; did you mean {at + '.' if at else ''}{near[0]}?"
            else:
                others = _paths_ending(str(key))
                hint = f"; did you mean {' or '.join(others)}?" if others else ""
            raise ConfigError(f"{path}={shown}: {at or 'the config'} has no key {key!r}{hint}")
        _walk_value(value, hints[key], path)


def _walk_value(value: Any, hint: Any, path: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        for a in args:
            if a is not type(None):
                _walk_value(value, a, path)
        return
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        _walk(value, hint, path)
    elif origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
        for i, v in enumerate(value):
            _walk_value(v, args[0], f"{path}[{i}]")
    elif origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]) and isinstance(value, Mapping):
        for k, v in value.items():
            _walk_value(v, args[1], f"{path}.{k}")
    # anything else (Dict[str, Any], scalars, lists of scalars) is not a schema object: any key goes


def _paths_ending(key: str, schema: type = None, at: str = "", depth: int = 0) -> list[str]:
    """Schema keys elsewhere whose last part is close to `key` (`+rate=0.5` means prune.rate), at most 3."""
    out = []
    for name, hint in typing.get_type_hints(schema or Config).items():
        path = f"{at}.{name}" if at else name
        if difflib.get_close_matches(key, [name], n=1, cutoff=0.8):
            out.append(path)
        inner = [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
        if inner and depth < 3:
            entry = {list: "[<i>]", dict: ".<name>"}.get(typing.get_origin(hint), "")
            out += _paths_ending(key, inner[0], path + entry, depth + 1)
    return out[:3]


# ---------------------------------------------------------------- validation


def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _positive(key: str, value) -> None:
    if not (isinstance(value, (int, float)) and value > 0):
        raise ConfigError(f"{key}={value!r} must be > 0")


def _count(key: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ConfigError(f"{key}={value!r} must be an integer >= 0")


def _target(key: str, node) -> bool:
    """Check a node's `_target_` can be found (nothing is imported); True when it has one."""
    if node._target_ is None:
        if node.kwargs:
            raise ConfigError(f"{key}.kwargs={node.kwargs} without {key}._target_: only a target takes them")
        return False
    targets.find(f"{key}._target_", node._target_)
    _name(f"{key}.name", node.name)
    if node.name in builtin(type(node)):
        raise ConfigError(f"{key}.name={node.name!r} is a built-in name but {key}._target_={node._target_} is set: "
                          "give yours its own name")
    return True


def validate_data(key: str, d: DataConfig) -> None:
    if not _target(key, d):
        _choice(f"{key}.name", d.name, DATASETS)
    _choice(f"{key}.decode", d.decode, DECODES)
    _positive(f"{key}.image_size", d.image_size)
    _count(f"{key}.workers", d.workers)
    for k in ("train_limit", "test_limit"):
        v = getattr(d, k)
        if v is not None and v <= 0:
            raise ConfigError(f"{key}.{k}={v} must be > 0 or null")


def validate_optim(key: str, o: OptimConfig) -> None:
    _choice(f"{key}.optimizer", o.optimizer, OPTIMIZERS)
    _choice(f"{key}.schedule", o.schedule, SCHEDULES)
    _positive(f"{key}.lr", o.lr)
    _positive(f"{key}.batch_size", o.batch_size)
    _positive(f"{key}.epochs", o.epochs)
    if o.weight_decay < 0:
        raise ConfigError(f"{key}.weight_decay={o.weight_decay} must be >= 0")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"{key}.momentum={o.momentum} must be in [0, 1)")
    if not 0 <= o.warmup_epochs < o.epochs:
        raise ConfigError(f"{key}.warmup_epochs={o.warmup_epochs} must be in [0, epochs={o.epochs})")
    if not (isinstance(o.gamma, (int, float)) and 0 < o.gamma <= 1):
        # -1 flipped the learning rate's sign at the first milestone and trained on, silently worse.
        raise ConfigError(f"{key}.gamma={o.gamma!r} must be in (0, 1]: the learning rate is multiplied by it "
                          "at each milestone")
    for m in o.milestones:
        if not 0 < m < o.epochs:
            raise ConfigError(f"{key}.milestones contains {m}, outside (0, epochs={o.epochs})")


def validate_levels(key: str, levels: Optional[List[int]], last: int) -> None:
    for lv in levels or []:
        if lv < 0:
            raise ConfigError(f"{key} contains {lv}: levels are >= 0")
        if lv > last:
            raise ConfigError(f"{key} contains {lv}, beyond prune.levels={last}")


def _rewind(key: str, value) -> tuple[float, str]:
    m = REWIND.match(str(value))
    if not m:
        raise ConfigError(
            f"{key}={value!r} must be <number><unit> with unit it (updates), ep (epochs), "
            "sa (samples) or % (of training), e.g. 1ep, 2500it, 3840000sa, 3.3%")
    amount, unit = float(m.group(1)), m.group(2)
    if unit == "%" and amount > 100:
        raise ConfigError(f"{key}={value} is beyond 100% of training")
    return amount, unit


def validate_task(key: str, t: TaskConfig) -> None:
    if not _target(key, t):
        _choice(f"{key}.name", t.name, TASKS)
    if not (isinstance(t.label_fraction, (int, float)) and 0 < t.label_fraction <= 1):
        raise ConfigError(f"{key}.label_fraction={t.label_fraction!r} must be in (0, 1]")
    if t.label_fraction < 1 and t.name not in ("labels", "s4l"):
        raise ConfigError(f"{key}.label_fraction={t.label_fraction} needs labels: only tasks labels and s4l use it "
                          f"(task {t.name!r} uses no labels)")
    _choice(f"{key}.label_subset", t.label_subset, LABEL_SUBSETS)
    for k in ("embedding", "margin", "temperature", "negatives", "hidden", "queue"):
        _positive(f"{key}.{k}", getattr(t, k))
    if not (isinstance(t.target_momentum, (int, float)) and 0 <= t.target_momentum < 1):
        raise ConfigError(f"{key}.target_momentum={t.target_momentum!r} must be in [0, 1)")
    if not 0 <= t.bank_momentum < 1:
        raise ConfigError(f"{key}.bank_momentum={t.bank_momentum} must be in [0, 1)")
    if t.rotation_weight < 0:
        raise ConfigError(f"{key}.rotation_weight={t.rotation_weight} must be >= 0")


def _evaluation(key: str, signals: List[str], datasets: List[DataConfig], levels, cfg: "Config") -> None:
    for s in signals:
        _choice(f"{key}.signals", s, tuple(cfg.signals))
    for i, d in enumerate(datasets):
        validate_data(f"{key}.datasets[{i}]", d)
    if signals and not datasets:
        raise ConfigError(f"{key}.signals is set but {key}.datasets is empty")
    validate_levels(f"{key}.levels", levels, cfg.prune.levels)


# Experiment and signal names become file and folder names (reports/<experiment>/,
# jobs/<experiment>.jsonl, W&B runs) and SLURM job names: one plain path component each. Sweeps
# add `@<scope>` and `@<rewind>` (rotnet@layer2, rotnet@3.3%), hence @ and %.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@%+-]{0,99}")
NAME_RULE = "1-100 of the characters A-Z a-z 0-9 _ . @ % + -, starting with a letter, digit or _"


def _name(what: str, value) -> None:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ConfigError(f"{what} {value!r} is not a single safe file name: use {NAME_RULE}")


def validate_store(cfg: Config) -> None:
    """What a store path may hold, for the launchers whose log paths are patterns."""
    L = cfg.launcher
    if L.name not in ("slurm", "submitit_local"):
        return
    for key, path in (("store", cfg.store), ("launcher.folder", L.folder)):
        if path is None:
            continue
        # submitit and SLURM expand %j, %A, %a ... in log paths (a literal % cannot be written), SLURM
        # writes no pattern at all into a path holding a backslash, and a newline ends an #SBATCH line.
        bad = [c for c in ("%", "\\", "\n") if c in path and (c != "\\" or L.name == "slurm")]
        if bad:
            raise ConfigError(f"{key}={path!r} contains {bad[0]!r}, which launcher={L.name} cannot pass to "
                              "its log paths: choose a path without % \\ or newlines")


def validate(cfg: Config) -> None:
    """Everything that can be checked before work starts; raises ConfigError naming the key."""
    _name("experiment", cfg.experiment)
    validate_data("data", cfg.data)
    if not _target("model", cfg.model):
        _choice("model.name", cfg.model.name, MODELS)
    _positive("model.width", cfg.model.width)
    _choice("model.init", cfg.model.init, INITS)
    if cfg.model.weights is not None:
        pretrained.check("model.weights", cfg.model.weights)
    elif cfg.model.weights_key is not None:
        raise ConfigError(f"model.weights_key={cfg.model.weights_key!r} without model.weights: it names an entry "
                          "of that file")
    p = cfg.prune
    if not (isinstance(p.rate, (int, float)) and 0 < p.rate < 1):
        raise ConfigError(f"prune.rate={p.rate} must be in the open interval (0, 1)")
    if p.levels < 0:
        raise ConfigError(f"prune.levels={p.levels} must be >= 0")
    _rewind("prune.rewind", p.rewind)
    if not cfg.signals:
        raise ConfigError("signals is empty: an experiment needs at least one pruning signal")
    if p.scopes or p.rewinds:
        raise ConfigError("prune.scopes / prune.rewinds must be expanded into signals first (config.expand)")
    cuts = ("all",) + CUT_POINTS.get(cfg.model.name, ())
    if cfg.model._target_ is None:  # a target's cut points are its own: checked when its network is built
        _choice("prune.scope", p.scope, cuts)
    for name, s in cfg.signals.items():
        validate_task(f"signals.{name}.task", s.task)
        validate_optim(f"signals.{name}.optim", s.optim)
        if s.scope is not None and cfg.model._target_ is None:
            _choice(f"signals.{name}.scope", s.scope, cuts)
        if s.data is not None:
            validate_data(f"signals.{name}.data", s.data)
        key, rewind_ = (f"signals.{name}.rewind", s.rewind) if s.rewind is not None else ("prune.rewind", p.rewind)
        amount, unit = _rewind(key, rewind_)
        if unit == "ep" and amount > s.optim.epochs:
            raise ConfigError(f"{key}={rewind_} is beyond the {s.optim.epochs} epochs of "
                              f"signals.{name}.optim.epochs")
        if s.init_from is not None:
            _choice(f"signals.{name}.init_from", s.init_from, tuple(n for n in cfg.signals if n != name))
            seen, at = {name}, s.init_from
            while at is not None:
                if at in seen:
                    raise ConfigError(f"signals.{name}.init_from makes a cycle through {at}")
                seen.add(at)
                at = cfg.signals[at].init_from
    for name in cfg.signals:  # after their own checks: a bad sweep value is named there first
        _name("signal name", name)
    if cfg.level is not None and cfg.level < 0:
        raise ConfigError(f"level={cfg.level} must be >= 0")
    if cfg.level is not None and cfg.level > p.levels:
        raise ConfigError(f"level={cfg.level} is beyond prune.levels={p.levels}")
    if cfg.signal is not None:
        _choice("signal", cfg.signal, tuple(cfg.signals))
    _choice("scheme", cfg.scheme, SCHEMES)
    if not cfg.seeds:
        raise ConfigError("seeds is empty")
    for s in list(cfg.seeds) + [cfg.seed]:
        if s < 0:
            raise ConfigError(f"seed {s} must be >= 0")
    twice = sorted({s for s in cfg.seeds if list(cfg.seeds).count(s) > 1})
    if twice:  # one replicate counted twice would report n=2 with a standard error of 0
        raise ConfigError(f"seeds={list(cfg.seeds)} repeats seed {', '.join(map(str, twice))}: "
                          "each seed is one replicate, list it once")
    r = cfg.retrain
    for s in r.signals:
        _choice("retrain.signals", s, tuple(cfg.signals))
    for s in r.schemes:
        _choice("retrain.schemes", s, SCHEMES)
    validate_levels("retrain.levels", r.levels, p.levels)
    validate_data("retrain.data", r.data)
    validate_optim("retrain.optim", r.optim)
    pr = cfg.probe
    _evaluation("probe", pr.signals, pr.datasets, pr.levels, cfg)
    if cfg.probe_dataset < 0:  # which list it indexes depends on the app (launch/stages.py checks the range)
        raise ConfigError(f"probe_dataset={cfg.probe_dataset} must be >= 0")
    validate_optim("probe.optim", pr.optim)
    _choice("probe.features", pr.features, PROBE_FEATURES)
    sv = cfg.svm
    _evaluation("svm", sv.signals, sv.datasets, sv.levels, cfg)
    if not sv.costs or any(not (isinstance(c, (int, float)) and c > 0) for c in sv.costs):
        raise ConfigError(f"svm.costs={sv.costs} must be a non-empty list of costs > 0")
    _choice("svm.features", sv.features, SVM_FEATURES)
    if not (isinstance(sv.folds, int) and sv.folds >= 2):
        raise ConfigError(f"svm.folds={sv.folds!r} must be an integer >= 2")
    ft = cfg.finetune
    _evaluation("finetune", ft.signals, ft.datasets, ft.levels, cfg)
    validate_optim("finetune.optim", ft.optim)
    _choice("run.device", cfg.run.device, DEVICES)
    _positive("run.log_every", cfg.run.log_every)
    _positive("run.interrupt_every", cfg.run.interrupt_every)
    if not (isinstance(cfg.run.eval_batch_size, int) and cfg.run.eval_batch_size > 0):
        raise ConfigError(f"run.eval_batch_size={cfg.run.eval_batch_size!r} must be an integer > 0")
    if not (isinstance(cfg.run.workers, int) and cfg.run.workers >= 0):
        raise ConfigError(f"run.workers={cfg.run.workers!r} must be an integer >= 0 (0: one per core on CPU)")
    if not (isinstance(cfg.run.threads, int) and cfg.run.threads >= 0):
        raise ConfigError(f"run.threads={cfg.run.threads!r} must be an integer >= 0 (0: from the launcher)")
    if cfg.run.checkpoint_steps < 0 or cfg.run.checkpoint_minutes < 0:
        raise ConfigError("run.checkpoint_steps and run.checkpoint_minutes must be >= 0")
    validate_launcher("launcher", cfg.launcher)
    # SVM and standardised-probe stages run as one-task jobs with launcher.single's resources (no
    # GPU by default): run.device=cuda made every one of them fail with NoDevice on the cluster.
    single = cfg.svm.signals or (cfg.probe.features == "standardised" and cfg.probe.signals)
    if cfg.launcher.name == "slurm" and cfg.run.device == "cuda" and cfg.launcher.single.gpus_per_node == 0 and single:
        raise ConfigError("run.device=cuda with launcher.single.gpus_per_node=0: the SVM and standardised-probe "
                          "jobs (one task, launcher.single) would have no GPU; set launcher.single.gpus_per_node=1 "
                          "or run.device=auto")
    validate_store(cfg)
    validate_wandb(cfg.wandb)


def validate_wandb(w: WandbConfig) -> None:
    _choice("wandb.mode", w.mode, WANDB_MODES)
    _choice("wandb.fallback", w.fallback, WANDB_FALLBACKS)
    if not w.project or not re.fullmatch(r"[^/\\#?%:]{1,128}", w.project):
        raise ConfigError(f"wandb.project={w.project!r} must be 1-128 characters without / \\ # ? % :")
    for k in ("init_timeout", "service_wait", "sync_timeout", "check_timeout", "sync_workers"):
        _positive(f"wandb.{k}", getattr(w, k))
    for k in ("stagger", "stagger_max", "flush_seconds"):
        v = getattr(w, k)
        if not (isinstance(v, (int, float)) and v >= 0):
            raise ConfigError(f"wandb.{k}={v!r} must be >= 0")
    for t in w.tags:
        if not isinstance(t, str) or not 0 < len(t) <= 64:
            raise ConfigError(f"wandb.tags contains {t!r}: tags are 1-64 characters")


def validate_launcher(key: str, L: LauncherConfig) -> None:
    _choice(f"{key}.name", L.name, LAUNCHERS)
    for k in ("time_min", "nodes", "tasks_per_node", "cpus_per_task", "array_parallelism"):
        v = getattr(L, k)
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ConfigError(f"{key}.{k}={v!r} must be an integer > 0")
    for k in ("gpus_per_node", "signal_delay_s", "max_num_timeout", "max_requeues", "max_retries"):
        v = getattr(L, k)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise ConfigError(f"{key}.{k}={v!r} must be an integer >= 0")
    g, c = L.single.gpus_per_node, L.single.cpus_per_task
    if not (isinstance(g, int) and not isinstance(g, bool) and g >= 0):
        raise ConfigError(f"{key}.single.gpus_per_node={g!r} must be an integer >= 0")
    if c is not None and not (isinstance(c, int) and not isinstance(c, bool) and c > 0):
        raise ConfigError(f"{key}.single.cpus_per_task={c!r} must be an integer > 0 or null")
    if L.mem_gb is not None and not (isinstance(L.mem_gb, (int, float)) and L.mem_gb > 0):
        raise ConfigError(f"{key}.mem_gb={L.mem_gb!r} must be > 0 or null")
    if L.signal_delay_s >= 60 * L.time_min:
        raise ConfigError(f"{key}.signal_delay_s={L.signal_delay_s} must be shorter than "
                          f"{key}.time_min={L.time_min} minutes ({60 * L.time_min} s)")
    for k in ("partition", "account", "qos", "constraint", "exclude", "comment", "folder"):
        v = getattr(L, k)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ConfigError(f"{key}.{k}={v!r} must be a non-empty string or null")
    if not all(isinstance(line, str) for line in L.setup):
        raise ConfigError(f"{key}.setup must be a list of shell lines (strings)")
    reserved = {"array", "dependency", "output", "error", "signal", "job-name", "job_name", "chdir", "open-mode"}
    for k in L.additional_parameters:
        if str(k) in reserved:
            raise ConfigError(f"{key}.additional_parameters.{k} is set by sslprune itself; remove it")



# ---------------------------------------------------------------- the composed config, ready to run


def ready(cfg: Config, writes: bool = False) -> Config:
    """A composed Config as an experiment runs it: sweeps expanded (sweep.expand), the store path
    absolute, every value validated, and the store a folder or not there yet; with `writes` (an app
    that writes without running experiment.check_inputs, e.g. sslprune-report) also writable.
    The apps (launch/compose.py) and the Python API (api.config) both end here."""
    obj: Config = expand(cfg)
    obj.store = os.path.abspath(os.path.expanduser(obj.store))
    obj.model.weights = pretrained.resolve(obj.model.weights)  # a job reads it from wherever it runs
    validate(obj)
    store.folder_or_absent(Path(obj.store))
    if writes:
        store.writable(Path(obj.store))
    return obj
