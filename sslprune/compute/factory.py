"""The one door every network, task and data set is built through: an import path and keyword
arguments (Hydra's `_target_` convention). The built-ins are named by their own paths
(model.BUILTIN, task.BUILTIN, dataset.BUILTIN); a config's `_target_` names a user's.

`check` imports the target and refuses keyword arguments it does not take, in one line naming them,
before a stage touches its folder (sslprune.compute.runner.run); `build` calls it. The control
plane only checks that the path can be found, without importing it (sslprune.core.target).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping

from ..core import target as targets
from ..core.errors import ConfigError
from ..core.schema import Config
from ..core.sweep import signal_data


def load(key: str, path: str) -> Any:
    """The object `path` names, imported (a missing module or attribute: one line naming `key`)."""
    try:
        module, attribute = targets.split(path)
    except LookupError as e:
        raise ConfigError(f"{key}={path}: {e} (install the package or add it to PYTHONPATH)") from None
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}={path}: {getattr(obj, '__name__', module)} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}={path} is a {type(obj).__name__}, not a class or function")
    return obj


def check(key: str, path: str, kwargs: Mapping, given: tuple = ()) -> Any:
    """The target, once its signature is known to take `kwargs` and the `given` arguments sslprune
    passes itself (`in_channels` for a network, `data` for a task)."""
    fn = load(key, path)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): the call itself will tell
        return fn
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        named = None
    if named is not None:
        unknown = sorted(set(kwargs) - named)
        if unknown:
            takes = ", ".join(sorted(named - set(given))) or "none"
            raise ConfigError(f"{key}: {path} does not accept {', '.join(unknown)} (its keyword arguments: {takes})")
        missing = [g for g in given if g not in named]
        if missing:
            raise ConfigError(f"{key}: {path} must accept {', '.join(missing)}, which sslprune passes to it "
                              "(docs/extending.md)")
    return fn


def build(key: str, path: str, kwargs: Mapping, **given) -> Any:
    """Call the target with sslprune's own arguments and the config's keyword arguments."""
    return check(key, path, kwargs, tuple(given))(**given, **kwargs)


def check_config(cfg: Config, signal: str | None) -> None:
    """Every target a stage of `signal` may build, checked before the stage starts."""
    nodes = [("model", cfg.model, ("in_channels",))]
    if signal is not None and signal in cfg.signals:
        s = cfg.signals[signal]
        nodes.append((f"signals.{signal}.task", s.task, ("data",)))
        nodes.append((f"signals.{signal}.data" if s.data is not None else "data", signal_data(cfg, signal), ()))
    nodes.append(("retrain.data", cfg.retrain.data, ()))
    for ev in ("probe", "svm", "finetune"):
        nodes += [(f"{ev}.datasets[{i}]", d, ()) for i, d in enumerate(getattr(cfg, ev).datasets)]
    for key, node, given in nodes:
        if node._target_ is not None:
            check(f"{key}._target_", node._target_, node.kwargs, given)
