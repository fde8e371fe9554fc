"""How much work a chain still holds, roughly, so that a local run starts the longest chains first.

A local run hands whole chains (seed, signal) to its worker processes in the order given. In the
order the experiment lists them (seed by seed) the longest chains of the last seed started last:
the Figure-6 twin's four Exemplar chains cost about 1.7 and 2.6 times its RotNet and labels chains,
and on 2 workers one worker trained the last Exemplar chain alone for minutes after the other ran
out of work (42 min 1 s of wall time where the stages' own seconds summed to 2 x 38 min 0 s,
2026-12-07). Longest first (Graham's LPT rule) leaves at most one short chain's worth of idle time.

The measure is planned passes of images through the network: each training stage's epochs times
the forward passes its task makes per image. It ignores the data set's size and the network's
cost (the chains of one experiment mostly share both); it orders chains, it predicts no time.
Scheduling changes no number: a stage's results are a function of its config alone.
"""
from __future__ import annotations

from typing import Sequence

from ..core.stage import Finetune, ImpLevel, Probe, Retrain, Stage

# Forward passes per image of a training step: RotNet and S4L feed the four quarter turns, the
# two-view objectives two views, MoCo and BYOL a third pass through the momentum encoder.
PASSES = {"labels": 1, "npid": 1, "rotnet": 4, "s4l": 4, "exemplar": 2, "simclr": 2, "mocov2": 3, "byol": 3}


def passes(stage: Stage) -> float:
    """Epochs x forward passes per image of the stage's training (an SVM trains no network: 0)."""
    cfg = stage.cfg
    if isinstance(stage, ImpLevel):
        signal = cfg.signals[stage.signal]
        return signal.optim.epochs * PASSES.get(signal.task.name, 1)  # your own task: counted as labels
    if isinstance(stage, Retrain):
        return cfg.retrain.optim.epochs
    if isinstance(stage, Probe):
        return cfg.probe.optim.epochs
    if isinstance(stage, Finetune):
        return cfg.finetune.optim.epochs
    return 0.0


def work(chain: Sequence[Stage], done: frozenset = frozenset()) -> float:
    """The passes of the chain's stages not in `done` (stage keys), each stage once: level 0's
    random starts are one stage listed under three schemes."""
    return sum(passes(s) for s in {s.key(): s for s in chain}.values() if s.key() not in done)


def longest_first(chains: Sequence[Sequence[Stage]], todo: Sequence[int],
                  done: frozenset = frozenset()) -> list[int]:
    """The chain indices `todo` ordered by the work they still hold, most first; ties keep the
    given order (seed by seed), so equal chains of one signal start seed after seed and two workers
    rarely wait on the same seed's shared random stages."""
    return sorted(todo, key=lambda i: -work(chains[i], done))
