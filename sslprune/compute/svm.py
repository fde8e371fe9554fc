"""Linear SVMs on frozen features, one per class, each class's cost chosen by cross-validation.

The VOC07 linear-classification protocol of the paper, as Goyal et al. 2019 run it
(fair_self_supervision_benchmark, tools/svm), with these choices:
- features: the backbone's pooled penultimate output, in eval mode, on the central crop with no
  augmentation for both splits, L2-normalised per image (x / (|x| + 1e-5), as theirs), or with
  `svm.features=standardised` each dimension standardised with the training split's statistics;
- one sklearn LinearSVC per class (positives against the rest; images with only difficult
  instances of the class are left out of its training and of its AP), with their solver settings:
  squared hinge, L2 penalty, dual, tol 1e-4, max_iter 2000, positives weighted 2 (fits that stop
  at max_iter, common at large costs, are counted in `unconverged_fits` instead of warned about);
- the cost of a class is the one of `costs` with the best mean AP over `folds` stratified folds
  of the training split (ties: the earliest in `costs`); the list is used as given (theirs appends
  0.5^4 .. 0.5^19 to the list given on the command line);
- AP, in cross-validation and on the test split, is the VOC07 devkit's 11-point AP (sslprune.voc;
  theirs uses the area under the curve, the VOC2010 rule, and sklearn's AP in cross-validation);
- a cost chosen at an edge of `costs` (the smallest or the largest) may mean the best one lies
  outside the grid: `evaluate` then says so in one line (`cost_warning` in result.json, and in the
  stage's progress), naming the classes;
- a class with fewer than 2 positives (or negatives) in the training split cannot be
  cross-validated: it gets no SVM and is left out of the mean, as is a class with no positive in
  the test split (never the case on VOC07 itself; small fixtures and subsets can hit it).
Single-label data sets go through the same code on one-hot targets (one-vs-rest).
"""
from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import seed as seeds
from .features import extract, standardise

from ..core import voc

SKIPPED = "fewer than 2 positives or negatives in the training split"


def target_matrix(y: torch.Tensor, num_classes: int) -> np.ndarray:
    """N x C targets in sslprune.voc's convention (1 present, 0 absent, -1 ignored) from a batch's labels."""
    if y.dim() == 2:  # multi-label already
        return y.round().to(torch.int64).cpu().numpy()
    return torch.nn.functional.one_hot(y.to(torch.int64).cpu(), num_classes).numpy()


def features(backbone: torch.nn.Module, data, split: str, device: torch.device,
             batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N x D float64 features, N x C targets) of one split, in the split's order."""
    x, y = extract(backbone, data, split, device, batch_size, torch.float32)  # float32 per batch, as always
    return x.double().numpy(), target_matrix(y, data.num_classes)


def normalise(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5)


MAX_ITER = 2000


def classifier(cost: float, seed: int):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, penalty="l2", loss="squared_hinge", dual=True,
                     tol=1e-4, max_iter=MAX_ITER, intercept_scaling=1.0, random_state=seed % 2 ** 32)


def fit(x: np.ndarray, y: np.ndarray, cost: float, seed: int, unconverged: list):
    """A fitted SVM; a fit that ran out of iterations is counted in `unconverged` (liblinear's
    warning, hundreds of times a run, is silenced by `evaluate` and reported as this count)."""
    clf = classifier(cost, seed).fit(x, y)
    if int(np.max(clf.n_iter_)) >= MAX_ITER:
        unconverged.append(cost)
    return clf


def _ap(scores: np.ndarray, y: np.ndarray) -> float:
    return voc.average_precision(scores, (y == 1).astype(int))  # y is +-1 here, not voc's 1/0/-1


def choose_cost(x: np.ndarray, y: np.ndarray, costs: Sequence[float], folds: int, seed: int,
                unconverged: list) -> tuple[float, list[float]]:
    """(the cost with the best mean cross-validated AP, mean AP of every cost); y is +1 / -1."""
    from sklearn.model_selection import StratifiedKFold

    k = min(folds, int((y == 1).sum()), int((y == -1).sum()))
    splits = list(StratifiedKFold(n_splits=k).split(x, y))  # unshuffled, as cross_val_score's cv=k
    means = []
    for cost in costs:
        aps = [_ap(fit(x[tr], y[tr], cost, seed, unconverged).decision_function(x[te]), y[te]) for tr, te in splits]
        means.append(float(np.mean(aps)))
    return costs[int(np.argmax(means))], means


def one_class(c: int, train_x, train_t, test_x, test_t, costs, folds: int, seed: int) -> dict:
    with warnings.catch_warnings():  # one class at a time per process, so the filters are ours alone
        warnings.filterwarnings("ignore", message="Liblinear failed to converge")
        return _one_class(c, train_x, train_t, test_x, test_t, costs, folds, seed)


_SHARED: tuple = ()  # a pool worker's copy of evaluate's arguments, sent once per worker, not per class


def _share(*args) -> None:
    global _SHARED
    _SHARED = args


def _pooled(c: int) -> dict:
    return one_class(c, *_SHARED)


def _one_class(c: int, train_x, train_t, test_x, test_t, costs, folds: int, seed: int) -> dict:
    keep = train_t[:, c] != voc.DIFFICULT
    x, y = train_x[keep], np.where(train_t[keep, c] == voc.POSITIVE, 1, -1)
    if min(int((y == 1).sum()), int((y == -1).sum())) < 2:
        return {"ap": None, "cost": None, "cv_ap": None, "unconverged": 0, "skipped": SKIPPED}
    s, unconverged = seeds.derive(seed, "svm", c), []
    cost, cv = choose_cost(x, y, costs, folds, s, unconverged)
    clf = fit(x, y, cost, s, unconverged)
    return {"ap": voc.average_precision(clf.decision_function(test_x), test_t[:, c]), "cost": cost, "cv_ap": cv,
            "unconverged": len(unconverged)}


def evaluate(train_x: np.ndarray, train_t: np.ndarray, test_x: np.ndarray, test_t: np.ndarray,
             costs: Sequence[float], folds: int, seed: int, classes: Sequence[str] = (),
             jobs: Optional[int] = None, note: Callable[[str], None] = lambda s: None,
             features: str = "normalised") -> dict:
    """Train and test one SVM per class; `accuracy` is the test mAP over the classes that have one.
    `features`: normalised (per image, the VOC07 protocol) or standardised (per dimension)."""
    if features == "standardised":
        train_x, test_x = standardise(train_x, test_x)
    else:
        train_x, test_x = normalise(train_x), normalise(test_x)
    n_classes = train_t.shape[1]
    classes = list(classes) or [str(c) for c in range(n_classes)]
    jobs = min(jobs or len(os.sched_getaffinity(0)), n_classes)
    shared = (train_x, train_t, test_x, test_t, list(costs), folds, seed)
    per_class = []
    # Classes run in processes, not threads: liblinear draws its coordinate order from one global
    # generator, which threads fitting at once would share, and the numbers would vary run to run.
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_share,
                               initargs=shared) if jobs > 1 else None
    try:
        results = pool.map(_pooled, range(n_classes)) if pool else (one_class(c, *shared) for c in range(n_classes))
        for c, out in enumerate(results):
            ap = "none (no test positive)" if out["ap"] is None else f"{out['ap']:.4f}"
            note(f"class {classes[c]}: " + (f"skipped, {out['skipped']}" if "skipped" in out else
                                            f"cost {out['cost']:g}, test AP {ap}"))
            per_class.append(out)
    finally:
        if pool:
            pool.shutdown()
    aps = [r["ap"] for r in per_class]
    warning = edge_warning(list(costs), [r["cost"] for r in per_class], classes)
    if warning:
        note(f"warning: {warning}")
    defined = [a for a in aps if a is not None]
    if not defined:
        raise ValueError(f"no class has 2 training positives and a test positive among {n_classes} classes: "
                         "mean average precision is undefined")
    return {"accuracy": float(np.mean(defined)), "metric": "mAP", "count": len(test_t), "train_count": len(train_t),
            "classes_evaluated": len(defined), "feature_dim": int(train_x.shape[1]),
            "ap": dict(zip(classes, aps)), "cost": dict(zip(classes, (r["cost"] for r in per_class))),
            "cv_ap": dict(zip(classes, (r["cv_ap"] for r in per_class))), "costs": list(costs), "folds": folds,
            "unconverged_fits": sum(r["unconverged"] for r in per_class), "cost_warning": warning}


def edge_warning(costs: list, chosen: list, classes: Sequence[str]) -> Optional[str]:
    """One line when a class's cross-validated cost is the smallest or largest of the grid (the best
    cost may lie beyond it), else None. A grid of one cost has no inside: no warning."""
    if len(costs) < 2:
        return None
    lo, hi = min(costs), max(costs)
    at = [(name, c) for name, c in zip(classes, chosen) if c is not None and c in (lo, hi)]
    if not at:
        return None
    listed = ", ".join(f"{name} ({c:g})" for name, c in at[:8]) + (" ..." if len(at) > 8 else "")
    return (f"the chosen cost sits at an edge of svm.costs [{lo:g} .. {hi:g}] for {len(at)} of "
            f"{sum(c is not None for c in chosen)} classes: {listed}; widen svm.costs")
