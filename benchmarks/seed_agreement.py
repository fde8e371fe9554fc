"""Do an experiment's findings survive a change of seeds? (issue 22)

Runs the experiment once with the seeds of two disjoint sets A and B (one store: seeds are path
parts, so each set's stages are its own, and a store that holds some of them already is resumed),
then computes findings.md's per-level flags (sslprune.control.findings: met or not, each claim,
subject, evaluated data set and level) from each set's seeds alone, and prints how many of the
flags both sets test are the same. Levels findings.md does not count (every network a constant
predictor) are left out; a flag only one set tests is listed, not compared.

    python benchmarks/seed_agreement.py fig3_cifar10_resnet18_small --a 0,1,2,3 --b 4,5,6,7 \
        --store /tmp/agree [hydra overrides, e.g. prune.levels=12 retrain.levels=[0,8,12]]
    python benchmarks/seed_agreement.py ... --fast     # no training: the stages the store holds

`--fast` reads the finished stages of both sets and compares (seconds): use it on a store a run
of the full or a reduced configuration left, with the same overrides. The last lines are always

    signs: <k> of <n> per-level differences on the same side of zero
    verdicts: <k> of <n> the same
    agreement: <k> of <n> per-level flags (<percent> %)

Target (issue 22): 90 % or more for the Figure-3 twins.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sslprune import api  # noqa: E402
from sslprune.control import findings, report  # noqa: E402


def _seeds(text: str) -> list[int]:
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds") from None
    if not out:
        raise argparse.ArgumentTypeError("a seed set needs at least one seed")
    return out


def flags(cfg) -> tuple[dict, dict]:
    """({(claim, subject, evaluation, level): (met, mean, stderr, remaining)} of the counted levels,
    {(claim, subject, evaluation): verdict}) of the finished stages of cfg's seeds."""
    found, _ = findings.compute(cfg, report.rows(cfg))
    per_level, verdicts = {}, {}
    for f in found:
        key = (f["claim"], f["subject"], f["evaluation"])
        verdicts[key] = f["verdict"]
        for lv in f["levels"]:
            if lv["met"] is not None:
                per_level[key + (lv["level"],)] = (lv["met"], lv["mean"], lv["stderr"], lv["remaining"])
    return per_level, verdicts


def agreement(cfg, a: list[int], b: list[int]) -> dict:
    """The per-level flags and verdicts of seeds `a` and of seeds `b` of one experiment, compared."""
    if set(a) & set(b):
        raise ValueError(f"seed sets {a} and {b} share {sorted(set(a) & set(b))}: they must be disjoint")
    fa, va = flags(dataclasses.replace(cfg, seeds=list(a)))
    fb, vb = flags(dataclasses.replace(cfg, seeds=list(b)))
    both = sorted(set(fa) & set(fb))
    verdicts = sorted(set(va) & set(vb))
    sign = lambda m: (m > 0) - (m < 0)  # noqa: E731
    return {"a": fa, "b": fb, "both": both, "same": [k for k in both if fa[k][0] == fb[k][0]],
            "signs_same": [k for k in both if sign(fa[k][1]) == sign(fb[k][1])],
            "differ": [k for k in both if fa[k][0] != fb[k][0]], "only": sorted(set(fa) ^ set(fb)),
            "verdicts": verdicts, "verdicts_same": [k for k in verdicts if va[k] == vb[k]]}


def _points(mean, se) -> str:
    return f"{100 * mean:+.2f}" + ("" if se is None else f" ± {100 * se:.2f}")


def lines(result: dict, a: list[int], b: list[int]) -> list[str]:
    out = [f"seed set A {a}: {len(result['a'])} per-level flags; seed set B {b}: {len(result['b'])}"]
    for k in result["differ"]:
        (ma, mean_a, se_a, left), (mb, mean_b, se_b, _) = result["a"][k], result["b"][k]
        out.append(f"  differs: {k[0]} {k[1]} {k[2]} level {k[3]} ({100 * left:.2f}% left): "
                   f"A {_points(mean_a, se_a)} {'met' if ma else 'not met'}, "
                   f"B {_points(mean_b, se_b)} {'met' if mb else 'not met'}")
    for k in result["only"]:
        out.append(f"  tested by one set only: {k[0]} {k[1]} {k[2]} level {k[3]}")
    n, k = len(result["both"]), len(result["same"])
    out.append(f"signs: {len(result['signs_same'])} of {n} per-level differences on the same side of zero")
    out.append(f"verdicts: {len(result['verdicts_same'])} of {len(result['verdicts'])} the same")
    out.append(f"agreement: {k} of {n} per-level flags" + (f" ({100 * k / n:.1f} %)" if n else " (none compared)"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the experiment (a reduced configuration)")
    p.add_argument("--a", type=_seeds, required=True, help="first seed set, e.g. 0,1,2,3")
    p.add_argument("--b", type=_seeds, required=True, help="second seed set, disjoint from the first")
    p.add_argument("--store", required=True)
    p.add_argument("--fast", action="store_true", help="no training: compare the finished stages the store holds")
    args = p.parse_args(argv)
    if set(args.a) & set(args.b):
        p.error(f"--a {args.a} and --b {args.b} share seeds {sorted(set(args.a) & set(args.b))}")
    both = ",".join(str(s) for s in args.a + args.b)
    cfg = api.config(args.experiment, *args.overrides, f"seeds=[{both}]", store=args.store)
    if not args.fast:
        api.run(cfg)
    for line in lines(agreement(cfg, args.a, args.b), args.a, args.b):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
