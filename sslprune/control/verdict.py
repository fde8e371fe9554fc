"""The statistics of a finding's verdict: whether one level's paired per-seed differences meet the
paper's expectation (an equivalence test for `match`), the verdict over the levels of a claim's
range, and how stable both are.

Every level and verdict also says how stable it is (`stability`): the flags are recomputed leaving
out one seed at a time (leave-one-seed-out: deterministic, one resample per seed, no random draw),
and a level's stability is the fraction of those resamples in which its flag is the one all seeds
give; a verdict's, the fraction in which every counted level's flag is. Two runs of a twin with
disjoint seeds flipped 24 of 50 flags (issue 22): a verdict one seed can turn is marked *unstable*
(below STABLE) rather than read as a finding. Plain numbers in, plain numbers out (findings.py
gathers them from the report's rows and writes them).
"""
from __future__ import annotations

from typing import Optional

from .spread import mean_stderr

NOT_TESTED = "not tested at this scale"
# A verdict is unstable when fewer than this fraction of its leave-one-seed-out resamples give every
# counted level the flag all seeds give: with 2 or 3 seeds, any one seed that turns a flag; with 4
# or more, one seed of every four may (the twins' budget is 4 seeds: one seed must not decide).
STABLE = 0.75


def met(expect: str, mean: float, stderr: Optional[float], margin: float) -> bool:
    """Whether one level's paired difference meets the paper's expectation (claims module docstring).

    `match` is an equivalence test: the whole interval mean ± 2 s.e. lies within the margin of zero
    (one seed: its value). A mean near zero with seeds far apart on both sides (-1.67 and +1.67
    points) is not a match: it cannot tell a match from a difference of 3 points either way."""
    se = stderr or 0.0
    if expect == "higher":
        return mean > 0 and mean > 2 * se
    if expect == "lower":
        return mean < 0 and mean < -2 * se
    if expect == "match":
        return -margin <= mean - 2 * se and mean + 2 * se <= margin
    if expect == "not_lower":
        return mean >= -margin
    raise ValueError(f"unknown expectation {expect!r}")


def tied_level(values: list[set]) -> Optional[list[float]]:
    """The accuracy every compared network reads in each seed, when within every one of two or more
    seeds they all read one and the same accuracy below 100 %; else None. Separately trained networks
    that agree to the image in every seed are constant predictors cut apart by pruning (a layer with no
    weight left: 16 of the 24 re-trained networks of the Figure-6 twin's VGG-19 at 1.15 % read 8.08 % or
    9.19 %, one class of the test split): their difference is zero whatever the masks are worth, so such
    a level says nothing about a claim and is not counted. `values`: per seed, the terms' accuracies."""
    if len(values) >= 2 and all(len(v) == 1 for v in values) and all(x < 1 for v in values for x in v):
        return [next(iter(v)) for v in values]
    return None


def counted(levels: list[dict]) -> list[dict]:
    """The levels a verdict counts: all but the tied ones."""
    return [lv for lv in levels if lv["tied"] is None]


def flag(expect: str, diffs: list[float], margin: float) -> bool:
    """`met` of the paired differences of some seeds."""
    mean, se = mean_stderr(diffs)
    return met(expect, mean, se, margin)


def leave_one_seed_out(expect: str, margin: float, levels: list[dict]) -> tuple[int, int]:
    """(resamples that give every counted level the flag of all seeds, resamples): one resample per
    seed of the levels, that seed left out. A level the left-out seed was the only one of is not
    compared in that resample. (0, 0) when there is nothing to resample (one seed)."""
    levels = counted(levels)
    seeds = sorted({s for lv in levels for s in lv["seeds"]})
    if len(seeds) < 2:
        return 0, 0
    agree = 0
    for out in seeds:
        rest = [[d for s, d in zip(lv["seeds"], lv["diffs"]) if s != out] for lv in levels]
        agree += all(flag(expect, r, margin) == lv["met"] for r, lv in zip(rest, levels) if r)
    return agree, len(seeds)


def level_stability(expect: str, margin: float, diffs: list[float], full: bool) -> Optional[float]:
    """The fraction of leave-one-seed-out resamples of one level whose flag is `full` (None: one seed)."""
    if len(diffs) < 2:
        return None
    return sum(flag(expect, diffs[:i] + diffs[i + 1:], margin) == full for i in range(len(diffs))) / len(diffs)


def verdict(levels: list[dict]) -> str:
    levels = counted(levels)
    if not levels:
        return NOT_TESTED
    k = sum(1 for lv in levels if lv["met"])
    if k == len(levels):
        return "holds"
    return "does not hold" if k == 0 else f"partly ({k} of {len(levels)} levels)"



def stability(agree: int, resamples: int) -> dict:
    """A verdict's stability entries: agree of resamples, their fraction (None: no resample) and
    whether it is below STABLE."""
    fraction = agree / resamples if resamples else None
    return {"agree": agree, "resamples": resamples, "stability": fraction,
            "unstable": fraction is not None and fraction < STABLE}
