"""The paper's claims tested on an experiment's results: paired per-seed differences and a verdict.

For every claim of sslprune.control.claims that the experiment's signals and evaluations can
test, and every subject signal and evaluated data set: the difference the claim implies, computed
seed by seed from the report's rows (results.csv), its mean and standard error over seeds at each
level in the claim's range of weights remaining, whether the paper's expectation is met there,
and a plain verdict: `holds` (met at every level), `partly (k of n levels)`, `does not hold`
(met at none), or `not tested at this scale` (no level of the experiment falls in the range).
A level where every compared network is a constant predictor (`tied_level`) is listed, not counted.

Each level and verdict also says how stable it is (verdict.py: leave-one-seed-out resamples);
a verdict one seed can turn is marked *unstable* rather than read as a finding.

`write` puts it in `findings.md` next to the report, with checks of the set-up the verdicts rest
on: each signal's dense accuracy, the gap between every converged probe and its full-batch L-BFGS
reference, and SVM costs chosen at an edge of their grid. Torch-free: plain rows and result.json.
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Optional

from ..core import store as files
from ..core.rewind import REWIND
from ..core.schema import CUT_POINTS, Config
from ..core.sweep import signal_prune
from .claims import CLAIMS, SELF_SUPERVISED, Claim, Term
from .spread import mean_stderr
from .verdict import (NOT_TESTED, STABLE, counted, leave_one_seed_out, level_stability, met, stability,
                      tied_level, verdict)

COLUMNS = ["experiment", "claim", "subject", "evaluation", "comparison", "expect", "level", "remaining", "mean",
           "stderr", "count", "met", "verdict", "stability", "verdict_stability"]


def _among(task, tasks: tuple) -> bool:
    """Whether a claim about `tasks` is about this signal's task. A task of a `_target_` (a user's
    pretext task) is not labels: a claim about the self-supervised signals is about it too."""
    if task._target_ is not None:
        return set(SELF_SUPERVISED) <= set(tasks)
    return task.name in tasks


def _zero(rewind: str) -> bool:
    m = REWIND.match(rewind)
    return bool(m) and float(m.group(1)) == 0


class _Signals:
    """What the claims ask of the experiment's signals: task, label subset, scope, rewind, transfer source."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.names = sorted(cfg.signals)
        self.first_scope = None
        order = ("all",) + CUT_POINTS.get(cfg.model.name, ())
        # A network of a `_target_` has cut points the control plane cannot know: its scopes by name.
        scopes = sorted({self.scope(n) for n in self.names} - {"all"},
                        key=lambda s: (order.index(s) if s in order else len(order), s))
        if scopes:
            self.first_scope = scopes[0]

    def task(self, n):
        return self.cfg.signals[n].task

    def scope(self, n):
        return signal_prune(self.cfg, n).scope

    def rewind(self, n):
        return signal_prune(self.cfg, n).rewind

    def source(self, n):
        return self.cfg.signals[n].init_from

    def subjects(self, claim: Claim) -> list[str]:
        out = []
        for n in self.names:
            t = self.task(n)
            if not _among(t, claim.tasks) or self.source(n) is not None:
                continue
            if claim.labels == "all" and t.label_fraction < 1 or claim.labels == "subset" and t.label_fraction >= 1:
                continue
            if claim.rewind == "late" and _zero(self.rewind(n)) or claim.scope == "all" and self.scope(n) != "all":
                continue
            out.append(n)
        return out

    def resolve(self, term: Term, subject: str) -> list[str]:
        """The signals a term names for a subject (usually one; none when the experiment lacks it)."""
        if term.transfer:
            return [n for n in self.names if self.source(n) == subject]
        if term.task is None and term.scope is None and term.rewind is None:
            return [subject]
        if term.task is None:
            pool = [n for n in self.names if self.task(n) == self.task(subject) and self.source(n) is None]
        else:
            pool = [n for n in self.names if self.task(n).name == term.task and self.task(n).label_fraction >= 1
                    and self.source(n) is None]
        want_scope = {"all": "all", "first": self.first_scope, None: self.scope(subject)}[term.scope]
        pool = [n for n in pool if want_scope is not None and self.scope(n) == want_scope]
        if term.rewind == "zero":
            return [n for n in pool if _zero(self.rewind(n))]
        same = [n for n in pool if self.rewind(n) == self.rewind(subject)]
        if same or term.task is None:
            return same
        # Another task's signal at the subject's rewind, else at the experiment's own: a subject
        # with a per-signal rewind (the 10 % subsets rewind to 30 of 200 epochs in Figure 8) is
        # compared with the other task's tickets as the paper plots them, not dropped.
        return [n for n in pool if self.rewind(n) == self.cfg.prune.rewind]


def _evaluation(term: Term, first: str) -> str:
    if term.evaluation == "=" or term.evaluation.endswith(":*"):  # the first term's own, e.g. probe:digits
        return first
    if term.evaluation == "=@init":
        return first + "@init"
    return term.evaluation



def _comparison(claim: Claim, names: tuple, evaluations: list[str]) -> str:
    parts = []
    for i, (term, name, ev) in enumerate(zip(claim.terms, names, evaluations)):
        where = " (level 0)" if term.level == 0 else ""
        sign = ("" if term.sign > 0 else "- ") if i == 0 else ("+ " if term.sign > 0 else "- ")
        parts.append(f"{sign}{name} {ev}{where}")
    return " ".join(parts)


def compute(cfg: Config, rows: list[dict]) -> tuple[list[dict], list[str]]:
    """(findings, keys of the claims this experiment does not address). A finding: claim, subject,
    evaluation, comparison, expect, per-level paired differences, verdict; accuracies are fractions."""
    acc: dict = {}
    remaining: dict = {}
    levels_of = defaultdict(set)
    for r in rows:
        key = (r["signal"], r["evaluation"])
        acc[key + (int(r["level"]), int(r["seed"]))] = float(r["accuracy"])
        remaining.setdefault(key + (int(r["level"]),), float(r["remaining"]))
        levels_of[key].add(int(r["level"]))
    sig = _Signals(cfg)
    out, unaddressed = [], []
    for claim in CLAIMS:
        found = []
        for subject in sig.subjects(claim):
            per_term = [sig.resolve(t, subject) for t in claim.terms]
            if not all(per_term):
                continue
            first = claim.terms[0].evaluation
            for combo in itertools.product(*per_term):
                if first.endswith(":*"):
                    evs = sorted({e for (s, e) in levels_of if s == combo[0] and e.startswith(first[:-1])
                                  and not e.endswith("@init")})
                else:
                    evs = [first]
                for ev in evs:
                    evaluations = [_evaluation(t, ev) for t in claim.terms]
                    if not all((n, e) in levels_of for n, e in zip(combo, evaluations)):
                        continue
                    found.append(_finding(cfg, claim, subject, combo, evaluations, acc, remaining, levels_of))
        if found:
            out += found
        else:
            unaddressed.append(claim.key)
    return out, unaddressed


def _finding(cfg, claim, subject, combo, evaluations, acc, remaining, levels_of) -> dict:
    lo, hi = claim.remaining
    head = (combo[0], evaluations[0])
    seeds = sorted({k[3] for k in acc if k[:2] == head})
    levels = []
    for level in sorted(levels_of[head]):
        left = remaining[head + (level,)]
        if not lo - 1e-9 <= left <= hi + 1e-9:
            continue
        diffs, values, used = [], [], []
        for seed in seeds:
            keys = [(n, e, level if t.level is None else t.level, seed)
                    for t, n, e in zip(claim.terms, combo, evaluations)]
            if all(k in acc for k in keys):
                diffs.append(sum(t.sign * acc[k] for t, k in zip(claim.terms, keys)))
                values.append({acc[k] for k in keys})
                used.append(seed)
        if not diffs:
            continue
        levels.append(_level(claim, level, left, used, diffs, tied_level(values)))
    available = sorted({remaining[head + (lv,)] for lv in levels_of[head]})
    agree, resamples = leave_one_seed_out(claim.expect, claim.margin, levels)
    return {"experiment": cfg.experiment, "claim": claim.key, "text": claim.text, "source": claim.source,
            "subject": subject, "evaluation": evaluations[0], "comparison": _comparison(claim, combo, evaluations),
            "expect": claim.expect, "margin": claim.margin, "range": claim.remaining, "levels": levels,
            "verdict": verdict(levels), "measured_range": (available[0], available[-1]) if available else None,
            **stability(agree, resamples)}


def _level(claim: Claim, level: int, left: float, seeds: list[int], diffs: list[float],
           tied: Optional[list[float]]) -> dict:
    """One level of a finding: the per-seed differences, their mean and s.e., the flag and its stability."""
    mean, se = mean_stderr(diffs)
    ok = None if tied is not None else met(claim.expect, mean, se, claim.margin)
    return {"level": level, "remaining": left, "mean": mean, "stderr": se, "count": len(diffs), "met": ok,
            "tied": tied, "seeds": seeds, "diffs": diffs,
            "stability": None if tied is not None else level_stability(claim.expect, claim.margin, diffs, ok)}



def table(findings: list[dict]) -> list[list]:
    """One row per finding and level (COLUMNS); a finding without levels gets one row with its verdict."""
    out = []
    for f in findings:
        common = [f["experiment"], f["claim"], f["subject"], f["evaluation"], f["comparison"], f["expect"]]
        for lv in f["levels"] or [None]:
            if lv is None:
                out.append(common + [None, None, None, None, 0, None, f["verdict"], None, f["stability"]])
            else:
                out.append(common + [lv["level"], lv["remaining"], lv["mean"], lv["stderr"], lv["count"], lv["met"],
                                     f["verdict"], lv["stability"], f["stability"]])
    return out


# ---------------------------------------------------------------- findings.md

EXPECT = {"higher": "above zero by more than 2 standard errors",
          "lower": "below zero by more than 2 standard errors",
          "match": "within {margin} points of zero with its whole 2-s.e. interval (equivalence test)",
          "not_lower": "not below -{margin} points (mean)"}


def _points(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:+.2f}"


def _range(r: tuple) -> str:
    lo, hi = r
    if lo == hi:
        return f"{100 * lo:.3g}% of weights remaining"
    if lo <= 0:
        return f"at most {100 * hi:.3g}% of weights remaining" if hi < 0.999 else "every pruned level"
    return f"{100 * lo:.3g}% to {100 * hi:.3g}% of weights remaining" if hi < 0.999 else \
        f"every pruned level with at least {100 * lo:.3g}% of weights remaining"


def summary(findings: list[dict]) -> list[str]:
    """The summary table's lines: one row per finding (the reproduction notes repeat it)."""
    lines = ["| claim | subject | evaluation | levels met | verdict | stability |", "|---|---|---|---|---|---|"]
    for f in findings:
        k = sum(1 for lv in f["levels"] if lv["met"])
        lines.append(f"| {f['claim']} | {f['subject']} | {f['evaluation']} | {k} / {len(counted(f['levels']))} | "
                     f"{_verdict(f)} | {_stability(f)} |")
    if not findings:
        lines.append("| (none: no finished stages test a claim) | | | | | |")
    return lines


def _verdict(f: dict) -> str:
    return f["verdict"] + (", *unstable*" if f["unstable"] else "")


def _stability(f: dict) -> str:
    """A summary cell: agreeing resamples of all, '' when nothing was tested, n/a with one seed."""
    if f["verdict"] == NOT_TESTED:
        return ""
    return "n/a" if not f["resamples"] else f"{f['agree']} / {f['resamples']}"


def _stability_words(f: dict) -> str:
    if f["verdict"] == NOT_TESTED:
        return "nothing tested"
    if not f["resamples"]:
        return "n/a (one seed: nothing to resample)"
    return (f"{f['agree']} of {f['resamples']} leave-one-seed-out resamples give every counted level "
            f"the same flag as all seeds")


def checks(cfg: Config, known: Optional[dict] = None) -> list[str]:
    """Markdown lines on the set-up the verdicts rest on, from the finished stages' result.json."""
    from .experiment import stages

    dense, gaps, edges, svms = defaultdict(list), [], [], 0
    for s in stages(cfg):
        r = known.get(s.key()) if known is not None else s.finished()
        if r is None:
            continue
        if s.kind == "imp" and s.level == 0:
            dense[s.signal].append(r["accuracy"])
        elif s.kind == "probe" and r.get("lbfgs_accuracy") is not None:
            gaps.append((abs(r["accuracy"] - r["lbfgs_accuracy"]), s.label, r["accuracy"], r["lbfgs_accuracy"]))
        elif s.kind == "svm":
            svms += 1
            if r.get("cost_warning"):
                edges.append(s.label)
    lines = ["## Checks of the set-up", ""]
    if dense:
        lines.append("Dense networks (level 0, the signal's own task on its test split, mean ± s.e. over seeds):")
        lines.append("")
        for name in sorted(dense):
            m, se = mean_stderr(dense[name])
            lines.append(f"- {name}: {100 * m:.2f}" + ("" if se is None else f" ± {100 * se:.2f}") +
                         f" % ({len(dense[name])} seeds)")
        lines.append("")
    if gaps:
        worst = max(gaps)
        lines.append(f"Linear probes: {len(gaps)} with a full-batch L-BFGS reference on the same standardised "
                     f"features; largest gap {100 * worst[0]:.2f} points ({worst[1]}: probe {100 * worst[2]:.2f}, "
                     f"L-BFGS {100 * worst[3]:.2f}); {sum(1 for g in gaps if g[0] > 0.015)} above 1.5 points.")
        lines.append("")
    if svms:
        lines.append(f"SVMs: {len(edges)} of {svms} stages chose a cost at an edge of svm.costs for some class" +
                     (" (" + "; ".join(edges[:5]) + (" ..." if len(edges) > 5 else "") + ")" if edges else "") + ".")
        lines.append("")
    return lines if len(lines) > 2 else []


def _random_note(cfg: Config) -> list[str]:
    """How the random baseline is compared, where the experiment re-trains one."""
    if "random" not in cfg.retrain.schemes:
        return []
    return ["Random pruning (`random`) is one network per seed and level, shared by every signal pruned with "
            "the same rate and scope: as many weights as IMP keeps at that level, drawn at random from the seed "
            "and the level, re-trained from fresh weights. Every signal's ticket and re-init are compared with "
            "that same network, seed by seed (each signal drew its own before issue 22, and one draw that kept "
            "no weight of some layer could decide a claim).", ""]


def markdown(cfg: Config, findings: list[dict], unaddressed: list[str], known: Optional[dict] = None) -> str:
    lines = [f"# {cfg.experiment}: the paper's claims at this scale", "",
             "Each finding is a paired difference computed seed by seed (same seed, same level), in accuracy "
             "points (mAP for SVMs), as mean ± standard error over seeds at each level in the range where the "
             "paper makes the claim. A level meets `higher` / `lower` when the mean is beyond 2 standard errors "
             "(one seed: its sign), `match` when the whole interval mean ± 2 standard errors lies within the "
             "margin of zero (an equivalence test; one seed: its value), `not_lower` when the mean is "
             "not below minus the margin. A level where, in each of two or more seeds, every compared network "
             "reads one and the same accuracy below 100 % (constant predictors: pruning cut the networks apart) "
             "is shown but not counted. Verdict: holds (every counted level), partly (some), does not hold (none), "
             f"{NOT_TESTED} (no counted level of this experiment in the range). Claims: "
             "sslprune/control/claims.py.", "", *_random_note(cfg),
             "Stability: every flag is recomputed leaving out one seed at a time (leave-one-seed-out: one "
             "resample per seed, deterministic; the left-out seed's differences are dropped at every level). "
             "A level's stability is the number of those resamples in which its flag (met or not) is the one "
             "all seeds give; a verdict's, the number in which every counted level's flag is. A verdict is "
             f"marked *unstable* where that fraction is below {STABLE:g} (with 2 or 3 seeds: where any one seed "
             "turns a flag); with one seed there is nothing to resample and the stability is not known (n/a).", "",
             "## Summary", "", *summary(findings), ""]
    for f in findings:
        expect = EXPECT[f["expect"]].format(margin=f"{100 * f['margin']:g}")
        lines += [f"## {f['claim']}: {f['subject']}, {f['evaluation']}", "", f"> {f['text']} ({f['source']})", "",
                  f"Difference: {f['comparison']}; expected {expect}, at {_range(f['range'])}.", ""]
        if f["levels"]:
            lines += ["| level | remaining | difference (points) | s.e. | seeds | met | same flag without one seed |",
                      "|---|---|---|---|---|---|---|"]
            for lv in f["levels"]:
                se = "" if lv["stderr"] is None else f"{100 * lv['stderr']:.2f}"
                verdict_cell = "yes" if lv["met"] else "no"
                if lv["tied"] is not None:
                    at = sorted({f"{100 * x:.2f}" for x in lv["tied"]}, key=float)
                    verdict_cell = f"not counted: every network of a seed at one accuracy ({', '.join(at)} %)"
                same = "" if lv["tied"] is not None else \
                    "n/a" if lv["stability"] is None else f"{round(lv['stability'] * lv['count'])} / {lv['count']}"
                lines.append(f"| {lv['level']} | {100 * lv['remaining']:.2f}% | {_points(lv['mean'])} | {se} | "
                             f"{lv['count']} | {verdict_cell} | {same} |")
            lines.append("")
        elif f["measured_range"]:
            lo, hi = f["measured_range"]
            lines += [f"This experiment measures {100 * lo:.3g}% to {100 * hi:.3g}% of weights remaining.", ""]
        lines += [f"**Verdict: {_verdict(f)}.** Stability: {_stability_words(f)}.", ""]
    if unaddressed:
        lines += ["## Claims this experiment does not address", "", ", ".join(unaddressed) + ".", ""]
    lines += checks(cfg, known)
    return "\n".join(lines).rstrip() + "\n"


def write(cfg: Config, rows: list[dict], out: Path, known: Optional[dict] = None) -> list[dict]:
    """findings.md in the report folder `out`; returns the findings."""
    found, unaddressed = compute(cfg, rows)
    files.write_text(out / "findings.md", markdown(cfg, found, unaddressed, known))  # never through a link
    return found
