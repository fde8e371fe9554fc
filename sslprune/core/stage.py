"""The kinds of stage (IMP level, re-training, probe, SVM, fine-tuning) as records: where each
lives in the store, what it needs, and whether it is done. Torch-free; running a stage is the
compute plane's job (sslprune.compute.runner.run, the one entry point).

Store layout (open_lth style: hashes name what changes the numbers, seeds and levels are path parts):

    <store>/imp/<chain>/seed_<s>/level_<L>/             IMP level L (level 0 = dense pretraining)
        mask.pt sparsity_report.json model.pt result.json [rewind.pt at level 0] [checkpoint.pt while running]
    .../level_0/label_subset.json                       the label subset a labels/s4l signal uses (if any)
    .../level_<L>/retrain_<hash>/<scheme>/              re-training of that mask on labels
    .../level_<L>/probe_<hash>/                         linear probe of that level's weights
    .../level_<L>/svm_<hash>/                           linear SVMs on that level's frozen features (VOC07)
    .../level_<L>/finetune_<hash>/                      full fine-tuning of that level's network, mask kept
    .../level_0/init_probe_<hash>/, init_svm_<hash>/    the same evaluations of the chain's initial weights
                                                        (the paper's "random features" reference)
    <store>/dense/<model>/seed_<s>/retrain_<hash>/      level 0's random starts: one dense network per seed
    <store>/random/<model, pruning>/seed_<s>/level_<L>/retrain_<hash>/
                                                        the random mask of level L, one per seed for every
                                                        signal pruned with the same rate, ignore and scope

`result.json` is written last and lists the size and sha256 of every output: a stage with a
valid one is done and is never recomputed; a stage without it resumes from its checkpoint; a
stage whose outputs do not match it is `corrupt` and is recomputed. A stage whose parent is not
done fails at once naming the path.
"""
from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
from typing import Optional

from . import store as files
from .errors import Corrupt, MissingInput
from .identity import chain_digest, identity, memo, memo_digest
from .schema import Config, DataConfig, PruneConfig, from_dict
from .sweep import signal_prune

DONE = files.DONE
# Every file a stage may write besides result.json: recorded with size and sha256 in result.json.
OUTPUTS = ("model.pt", "mask.pt", "rewind.pt", "sparsity_report.json", "weights.json", "label_subset.json",
           "config.json")


class Stage:
    kind = ""

    def __init__(self, cfg: Config, signal: str, seed: int, level: int):
        self.cfg, self.signal, self.seed, self.level = cfg, signal, seed, level
        self._dir: Optional[Path] = None
        self._key: Optional[str] = None

    @property
    def store(self) -> Path:
        return Path(self.cfg.store)

    # --- identity and files (paths are built as strings, one Path each: status of 10,000 stages
    # builds tens of thousands of them)
    @property
    def chain_dir(self) -> Path:
        return Path(self._chain())

    def _chain(self) -> str:
        known = memo(self.cfg)
        if "store" not in known:
            known["store"] = os.path.normpath(self.cfg.store)
        return f"{known['store']}/imp/{chain_digest(self.cfg, self.signal)}"

    def _level(self) -> str:
        return f"{self._chain()}/seed_{self.seed}/level_{self.level}"

    @property
    def level_dir(self) -> Path:
        return Path(self._level())

    @property
    def dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(self.key())
        return self._dir

    def _where(self) -> str:
        raise NotImplementedError

    def state(self, deep: bool = False) -> str:
        """done, corrupt (a result.json its files do not match), or todo. Sizes are checked (a stat
        per file); `deep` also checks every output's sha256 (reads them)."""
        self.confine()
        try:
            result = files.read_result(self.key(), self.kind)
            if result is None:
                return "todo"
            files.verify(self.key(), result)
            if deep:
                for name in result.get("outputs") or {}:
                    files.verify_file(self.dir / name)
        except Corrupt:
            return "corrupt"
        return "done"

    def set_aside(self) -> str:
        """Make a corrupt stage computable again (store.set_aside); returns why it was corrupt."""
        self.confine(fresh=True)  # it moves and removes files
        try:
            result = files.read_result(self.dir, self.kind) or {}
            files.verify(self.dir, result)
            for name in result.get("outputs") or {}:
                files.verify_file(self.dir / name)
            why = "outputs do not match result.json"
        except Corrupt as e:
            why = str(e)
        files.set_aside(self.dir, why, OUTPUTS)
        return why

    def done(self) -> bool:
        return self.finished() is not None

    def finished(self) -> Optional[dict]:
        """The stage's result if it is done, else None, from one read of result.json (done() and
        result() read it twice: a report over 10,000 stages paid that three times over)."""
        self.confine()
        try:
            result = files.read_result(self.key(), self.kind)
            if result is not None:
                files.verify(self.key(), result)
            return result
        except Corrupt:
            return None

    def result(self) -> dict:
        self.confine()
        result = files.read_result(self.key(), self.kind)
        if result is None:
            raise FileNotFoundError(errno.ENOENT, f"{self.dir / DONE} does not exist")
        return result

    def confine(self, fresh: bool = False) -> None:
        """Refuse (StoreError, one line) a stage folder reached through a symbolic link below the store:
        the run would read, write and delete files wherever it points. Reads remember the folders
        found plain; `fresh` (before writing) checks every one again."""
        known = memo(self.cfg)
        if "store" not in known:
            known["store"] = os.path.normpath(self.cfg.store)
        files.confine(known["store"], self.key(), None if fresh else known.setdefault("plain", set()))

    def parents(self) -> list["Stage"]:
        return []

    def key(self) -> str:
        """The stage's directory as a string (normalised: it is str(self.dir))."""
        if self._key is None:
            self._key = self._where()
        return self._key

    @property
    def label(self) -> str:
        return f"{self.kind} {self.signal} seed={self.seed} level={self.level}"

    @property
    def evaluation(self) -> str:
        """The `evaluation` column of results.csv: pretext, a re-training start, or probe:<dataset>."""
        raise NotImplementedError

    @property
    def signal_task(self) -> Optional[str]:
        """The task of the stage's signal, as result.json and W&B record it."""
        return self.cfg.signals[self.signal].task.name

    def require_parents(self) -> None:
        for p in self.parents():
            if not p.done():
                raise MissingInput(
                    f"{self.label} needs {p.label}, which is not done: expected {p.dir / DONE}. "
                    "Run that stage first (or run the whole experiment with sslprune-run).")


class ImpLevel(Stage):
    """Level L of iterative magnitude pruning, driven by the signal's own task loss."""

    kind = "imp"
    evaluation = "pretext"

    def _where(self) -> str:
        return self._level()

    def parents(self):
        if self.level > 0:
            return [ImpLevel(self.cfg, self.signal, self.seed, self.level - 1)]
        source = self.cfg.signals[self.signal].init_from
        return [ImpLevel(self.cfg, source, self.seed, 0)] if source is not None else []

    def rewind_file(self) -> Path:
        return ImpLevel(self.cfg, self.signal, self.seed, 0).dir / "rewind.pt"


# At level 0 (every weight kept) these starts are the same training for every signal of a seed:
# fresh weights from the seed, a mask of ones (a shuffled or adjusted mask of ones is all ones),
# the same batches. Computed once, in one shared directory, and reported under every name.
DENSE_SCHEMES = ("random_reinit", "random", "random_adjusted")
# At a pruned level the random start is one draw per (seed, level) too (issue 22): a random mask
# keeping as many weights as IMP's level L keeps, drawn from the seed and the level alone, on fresh
# weights. The count is a function of the prunable weights (model, scope, ignore), the rate and L,
# not of which signal's magnitudes found the mask: each signal compared with its own random draw
# compared it with a coin flip at high sparsity (a draw that keeps no weight of the stem reads one
# class), and a signal's "above random" flipped with the seeds.
SHARED_RANDOM = "random"


class Retrain(Stage):
    """Re-train the mask of IMP level L on labels from one of three starts."""

    kind = "retrain"

    def __init__(self, cfg, signal, seed, level, scheme: str):
        super().__init__(cfg, signal, seed, level)
        self.scheme = scheme

    @property
    def dense(self) -> bool:
        """The dense network trained from scratch on labels, shared by every signal and by these starts."""
        return self.level == 0 and self.scheme in DENSE_SCHEMES

    @property
    def shared(self) -> bool:
        """One stage for every signal of a seed (pruned with the same rate, ignore and scope): the
        dense network from scratch at level 0, the random mask at a pruned level."""
        return self.dense or self.scheme == SHARED_RANDOM

    def mask_spec(self) -> dict:
        """What the shared random mask's count depends on besides the level: the pruning settings of
        the signal but its rewind point (which changes the magnitudes, not how many survive)."""
        p = signal_prune(self.cfg, self.signal)
        return identity(dataclasses.replace(p, rewind=PruneConfig().rewind))

    def _where(self) -> str:
        r = self.cfg.retrain
        retrain = f"retrain_{memo_digest(self.cfg, ('retrain',), r.data, r.optim)}"
        if self.shared:
            known = memo(self.cfg)
            store = known.get("store") or os.path.normpath(self.cfg.store)
            if self.dense:
                return f"{store}/dense/{memo_digest(self.cfg, ('dense',), self.cfg.model)}/seed_{self.seed}/{retrain}"
            scope = signal_prune(self.cfg, self.signal).scope
            pruned = memo_digest(self.cfg, ("random", scope), self.cfg.model, self.mask_spec())
            return f"{store}/random/{pruned}/seed_{self.seed}/level_{self.level}/{retrain}"
        return f"{self._level()}/{retrain}/{self.scheme}"

    @property
    def label(self) -> str:
        if self.dense:
            return f"retrain dense from scratch seed={self.seed} level=0"
        if self.shared:
            scope = signal_prune(self.cfg, self.signal).scope
            where = "" if scope == "all" else f" up to {scope}"
            return f"retrain random mask{where} seed={self.seed} level={self.level}"
        return f"retrain {self.signal} {self.scheme} seed={self.seed} level={self.level}"

    @property
    def evaluation(self) -> str:
        return self.scheme

    @property
    def signal_task(self) -> Optional[str]:
        # A shared stage is every signal's: which task it records must not depend on which chain
        # or job happened to compute it (it said the first chain's: labels, later Exemplar).
        return None if self.shared else super().signal_task

    def parents(self):
        if self.shared:
            return []  # fresh weights and a mask of ones or drawn from the seed: no IMP level needed
        return [ImpLevel(self.cfg, self.signal, self.seed, self.level)]


class Evaluation(Stage):
    """A measurement of IMP level L's trained network on a data set: probe, SVM or fine-tuning.

    Its directory is `<kind>_<hash of the data set and the settings>` under the level, its
    evaluation label `<kind>:<data set>`."""

    def __init__(self, cfg, signal, seed, level, data: DataConfig, at_init: bool = False):
        super().__init__(cfg, signal, seed, level)
        self.data = data
        # The random-features reference: the same evaluation of the chain's initial weights (the
        # dense network before any training, built from the chain's init seed). It lives under
        # level 0, needs no parent, and is reported as `<kind>:<data set>@init` at level 0.
        self.at_init = at_init
        if at_init and level != 0:
            raise ValueError(f"{self.kind} of the initial weights lives at level 0, not {level}")

    def settings(self):
        """What, besides the data set, changes this evaluation's numbers."""
        raise NotImplementedError

    def _where(self) -> str:
        key = (self.kind, repr(self.data))
        name = f"{self.kind}_{memo_digest(self.cfg, key, self.data, self.settings())}"
        return f"{self._level()}/" + (f"init_{name}" if self.at_init else name)

    @property
    def label(self) -> str:
        return f"{self.evaluation} {self.signal} seed={self.seed} level={self.level}"

    @property
    def evaluation(self) -> str:
        return f"{self.kind}:{self.data.name}" + ("@init" if self.at_init else "")

    def parents(self):
        return [] if self.at_init else [ImpLevel(self.cfg, self.signal, self.seed, self.level)]


class Probe(Evaluation):
    """Linear classifier on the frozen penultimate features of IMP level L's weights."""

    kind = "probe"

    def settings(self):
        p = self.cfg.probe
        # `features` joins the hash only when it is not the protocol every earlier probe ran.
        return p.optim if p.features == "augmented" else {"optim": p.optim, "features": p.features}


class Svm(Evaluation):
    """Linear SVMs, one per class, on the frozen penultimate features of IMP level L's weights."""

    kind = "svm"

    def settings(self):
        sv = self.cfg.svm
        out = {"costs": list(sv.costs), "folds": sv.folds}
        # `features` joins the hash only when it is not the protocol every earlier SVM ran.
        return out if sv.features == "normalised" else {**out, "features": sv.features}


class Finetune(Evaluation):
    """Fine-tune every weight of IMP level L's network on a target data set, its mask kept (VOC07)."""

    kind = "finetune"

    def settings(self):
        return self.cfg.finetune.optim


def spec(stage: Stage) -> dict:
    """A stage as plain data (what a job record carries besides the experiment's config)."""
    out = {"kind": stage.kind, "signal": stage.signal, "seed": stage.seed, "level": stage.level}
    if isinstance(stage, Retrain):
        out["scheme"] = stage.scheme
    if isinstance(stage, Evaluation):
        out["data"] = dataclasses.asdict(stage.data)
        if stage.at_init:  # the random-features reference: without it a job ran the level-0 evaluation
            out["at_init"] = True
    return out


def from_spec(cfg: Config, record: dict) -> Stage:
    """The stage a `spec` record describes, in the experiment `cfg`."""
    kind, args = record["kind"], (cfg, record["signal"], record["seed"], record["level"])
    if kind == "imp":
        return ImpLevel(*args)
    if kind == "retrain":
        return Retrain(*args, record["scheme"])
    data = from_dict(record["data"], DataConfig)
    return {"probe": Probe, "svm": Svm, "finetune": Finetune}[kind](*args, data, at_init=record.get("at_init", False))
