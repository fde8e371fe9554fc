"""benchmarks/seed_agreement.py: the per-level flags of findings.md from two disjoint seed sets,
compared (issue 22). Its --fast mode (no training: the finished stages of a store) on a store of
made-up results whose flags are known by hand."""
from __future__ import annotations

from pathlib import Path

from sslprune import api
from sslprune.core import store as files
from sslprune.control.experiment import stages
from sslprune.core.stage import Retrain

from conftest import ROOT, cli

# The demo with 10 levels, re-trained at levels 0 and 10 only (10.74 % left: in every re-training
# claim's range) and no probe: seven flags per seed set, one level each.
OVERRIDES = ["prune.levels=10", "retrain.levels=[0,10]", "probe.signals=[]"]
# Accuracies as exact binary fractions; every stage of seed s reads s/64 more, so within a set the
# paired differences are the same for each seed (standard error 0), except where seed 3's shared
# random network reads 0.875 instead of 0.25 + 3/64.
ACCURACY = {("labels", "winning_ticket"): 0.75, ("labels", "random_reinit"): 0.5,
            ("rotnet", "winning_ticket"): 0.625, ("rotnet", "random_reinit"): 0.5 + 2 ** -8}


def _made_up(store: Path) -> None:
    cfg = api.config("demo", *OVERRIDES, "seeds=[0,1,2,3]", store=store)
    for s in stages(cfg):
        if isinstance(s, Retrain) and s.scheme == "random" and s.level > 0:
            acc = 0.875 if s.seed == 3 else 0.25 + s.seed / 64
        elif isinstance(s, Retrain) and s.level > 0:
            acc = ACCURACY[(s.signal, s.scheme)] + s.seed / 64
        else:
            acc = 0.5 + s.seed / 64
        Path(s.key()).mkdir(parents=True, exist_ok=True)
        files.write_json({"accuracy": acc, "remaining": 0.8 ** s.level, "kind": s.kind, "outputs": {}},
                         Path(s.key()) / files.DONE)


def test_fast_mode_counts_the_flags_two_seed_sets_agree_on(tmp_path):
    store = tmp_path / "s"
    _made_up(store)
    p = cli(sys_python(), str(ROOT / "benchmarks" / "seed_agreement.py"), "demo", *OVERRIDES,
            "--a", "0,1", "--b", "2,3", "--store", str(store), "--fast")
    # Seeds 0, 1: all seven claims met. Seeds 2, 3: seed 3's random network (87.5 %) is above both
    # tickets and re-inits, so the three "above random" flags turn: labels' re-init minus random is
    # +25 points in seed 2 (53.125 - 28.125) and -32.8125 in seed 3 (54.6875 - 87.5), -3.91 ± 28.91.
    assert p.stdout.splitlines() == [
        "seed set A [0, 1]: 7 per-level flags; seed set B [2, 3]: 7",
        "  differs: reinit_above_random labels random_reinit level 10 (10.74% left): "
        "A +25.00 ± 0.00 met, B -3.91 ± 28.91 not met",
        "  differs: reinit_above_random rotnet random_reinit level 10 (10.74% left): "
        "A +25.39 ± 0.00 met, B -3.52 ± 28.91 not met",
        "  differs: ssl_ticket_above_random rotnet winning_ticket level 10 (10.74% left): "
        "A +37.50 ± 0.00 met, B +8.59 ± 28.91 not met",
        "signs: 5 of 7 per-level differences on the same side of zero",  # the first two above differ
        "verdicts: 4 of 7 the same",
        "agreement: 4 of 7 per-level flags (57.1 %)"]


def test_seed_sets_must_be_disjoint(tmp_path):
    p = cli(sys_python(), str(ROOT / "benchmarks" / "seed_agreement.py"), "demo", "--a", "0,1", "--b", "1,2",
            "--store", str(tmp_path), "--fast", check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith(
        "error: --a [0, 1] and --b [1, 2] share seeds [1]")


def sys_python() -> str:
    import sys

    return sys.executable
