"""A store a person can read: what each hashed folder holds, and where each stage lives.

- `<store>/imp/<chain>/chain.json`: the chain's signal, task, model, data, optimisation and
  pruning settings as fully resolved values (every field, defaults included: `config.json` and
  the folder's hash leave defaults out), and which (experiment, signal) names used it. Written
  by every command that runs or submits the chain, before any stage starts; rewritten only when
  it would change, so a finished store is left untouched.
- `<store>/reports/<experiment>/stages.csv`: one row per stage of the experiment: its label,
  kind, signal, seed, level, scheme, evaluation, directory (relative to the store) and state.
- `find(cfg, label)`: the stage a label names (`sslprune-status --where <label>`, api.where).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Optional

from ..core import store as files
from ..core.errors import ConfigError
from ..core.identity import chain_digest, chain_identity
from ..core.schema import Config
from ..core.stage import Stage
from ..core.sweep import signal_data, signal_prune
from .experiment import stages

CHAIN = "chain.json"
STAGES = "stages.csv"
COLUMNS = ["label", "kind", "signal", "seed", "level", "scheme", "evaluation", "directory", "state"]


def chain_record(cfg: Config, signal: str) -> dict:
    """The readable description of one signal's IMP chain (chain.json, used_by left empty)."""
    s = cfg.signals[signal]
    source = s.init_from
    return {  # in reading order (chain.json keeps it)
        "chain": chain_digest(cfg, signal),
        "signal": signal,
        "used_by": [],
        "task": dataclasses.asdict(s.task),
        "model": dataclasses.asdict(cfg.model),
        "data": dataclasses.asdict(signal_data(cfg, signal)),
        "optim": dataclasses.asdict(s.optim),
        "prune": dataclasses.asdict(signal_prune(cfg, signal)),
        "init_from": None if source is None else {"signal": source, "chain": chain_digest(cfg, source)},
        # The values the folder's hash is computed from (defaults left out, as in config.identity).
        "identity": chain_identity(cfg, signal),
    }


def write_chains(cfg: Config, signals: Optional[list[str]] = None) -> list[Path]:
    """chain.json in the folder of every chain of the experiment (or of these signals' chains);
    returns the files written now."""
    written = []
    for name in cfg.signals if signals is None else signals:
        record = chain_record(cfg, name)
        path = Path(cfg.store) / "imp" / record["chain"] / CHAIN
        files.confine(cfg.store, path.parent)  # a linked chain folder: one line, nothing written through it
        try:
            old = files.read_json(path) if path.exists() else {}
        except (OSError, ValueError):
            old = {}  # unreadable: write it anew
        used = [u for u in old.get("used_by", []) if isinstance(u, dict)]
        me = {"experiment": cfg.experiment, "signal": name}
        record["used_by"] = used + ([me] if me not in used else [])
        if old == record:
            continue
        text = json.dumps(record, indent=2) + "\n"
        files.replace(path, lambda f: f.write(text.encode()))  # atomic, like every store file
        written.append(path)
    return written


def _relative(stage: Stage) -> str:
    """The stage's directory relative to the store, from strings (two Paths per stage were most of
    the index's time at 10,000 stages)."""
    key, store = stage.key(), str(stage.cfg.store).rstrip("/")
    if key.startswith(store + "/"):
        return key[len(store) + 1:]
    return Path(key).relative_to(store).as_posix()


def row(stage: Stage, done: bool = False) -> dict:
    """`done`: already known to be done (a report read its result), else its state is looked up."""
    return {"label": stage.label, "kind": stage.kind, "signal": stage.signal, "seed": stage.seed,
            "level": stage.level, "scheme": getattr(stage, "scheme", ""), "evaluation": stage.evaluation,
            "directory": _relative(stage), "state": "done" if done else stage.state()}


def stage_rows(cfg: Config, known: Optional[dict] = None) -> list[dict]:
    """`known`: stage key -> result or None (sslprune.control.report.finished), to skip re-reading."""
    return [row(s, known is not None and known.get(s.key()) is not None) for s in stages(cfg)]


def write_stages(cfg: Config, out_dir: Path, known: Optional[dict] = None) -> Path:
    path = Path(out_dir) / STAGES
    files.write_csv(path, COLUMNS, stage_rows(cfg, known))  # replaces a link at the name, never writes through it
    return path


def find(cfg: Config, label: str) -> Stage:
    """The stage of the experiment whose label is `label` (as printed in progress lines and
    stages.csv, e.g. `imp rotnet seed=0 level=3`); a ConfigError names the closest labels."""
    wanted = " ".join(label.split())
    everything = stages(cfg)
    found = [s for s in everything if s.label == wanted]
    if len(found) == 1:
        return found[0]
    if found:  # two evaluations on data sets of the same name: the label cannot tell them apart
        raise ConfigError(f"stage label {wanted!r} names {len(found)} stages: "
                          + ", ".join(str(s.dir) for s in found))
    close = difflib.get_close_matches(wanted, [s.label for s in everything], n=3, cutoff=0.6)
    hint = f"; closest: {'; '.join(close)}" if close else f"; labels look like {everything[0].label!r}"
    raise ConfigError(f"no stage labelled {wanted!r} in experiment {cfg.experiment} "
                      f"({len(everything)} stages){hint}")
