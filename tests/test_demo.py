"""The demo experiment end to end through the real console scripts, with fewer steps."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import cli

SHORT = ["prune.levels=3", "model.width=4", "run.log_every=1000",
         "signals.labels.optim.epochs=1", "signals.labels.optim.milestones=[]",
         "signals.rotnet.optim.epochs=1", "signals.rotnet.optim.milestones=[]",
         "retrain.optim.epochs=1", "retrain.optim.milestones=[]",
         "probe.optim.epochs=1", "probe.optim.milestones=[]"]


def _read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    store = tmp_path_factory.mktemp("demo") / "store"
    out = cli("sslprune-run", f"store={store}", *SHORT).stdout
    return store, out


def test_demo_writes_results_for_every_signal_evaluation_level_and_seed(demo):
    store, out = demo
    report = store / "reports" / "demo"
    rows = _read(report / "results.csv")
    assert list(rows[0]) == ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining", "seed",
                            "accuracy"]
    expected = {("labels", e) for e in ("pretext", "winning_ticket", "random_reinit", "random")}
    expected |= {("rotnet", e) for e in ("pretext", "winning_ticket", "random_reinit", "random", "probe:digits")}
    got = {}
    for r in rows:
        got.setdefault((r["signal"], r["evaluation"]), set()).add((int(r["level"]), int(r["seed"])))
        level, remaining = int(r["level"]), float(r["remaining"])
        assert abs(remaining - 0.8 ** level) < 1e-3, r  # fraction of prunable weights left
        assert 0.0 <= float(r["accuracy"]) <= 1.0
    assert set(got) == expected
    assert all(v == {(lv, s) for lv in range(4) for s in (0, 1)} for v in got.values())
    assert len(rows) == 2 * 4 * (4 + 5)


def test_demo_summary_is_mean_and_standard_error_over_seeds(demo):
    store, out = demo
    report = store / "reports" / "demo"
    rows = _read(report / "results.csv")
    summary = _read(report / "summary.csv")
    assert list(summary[0]) == ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining",
                                "mean", "stderr", "count"]
    for s in summary:
        accs = [float(r["accuracy"]) for r in rows if (r["signal"], r["evaluation"], r["level"]) ==
                (s["signal"], s["evaluation"], s["level"])]
        assert int(s["count"]) == len(accs) == 2
        mean = sum(accs) / 2
        assert float(s["mean"]) == pytest.approx(mean)
        assert float(s["stderr"]) == pytest.approx(abs(accs[0] - accs[1]) / 2)  # sd/sqrt(2) for two seeds
    md = (report / "summary.md").read_text()
    assert "| rotnet | probe:digits | 3 | 51.19% |" in md  # 0.8^3 up to ceil rounding
    assert md.split("\n", 2)[2] in out  # the run ends by printing the table
    png = (report / "accuracy_vs_remaining.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_rebuilds_the_same_tables_from_the_store(demo):
    store, _ = demo
    report = store / "reports" / "demo"
    before = (report / "results.csv").read_text(), (report / "summary.csv").read_text()
    (report / "results.csv").unlink()
    out = cli("sslprune-report", f"store={store}", *SHORT).stdout
    assert ((report / "results.csv").read_text(), (report / "summary.csv").read_text()) == before
    assert "| labels | winning_ticket | 0 | 100.00% |" in out


def test_rerunning_a_finished_experiment_does_no_work(demo):
    store, _ = demo
    stage_files = {p: p.stat().st_mtime_ns for p in (store / "imp").rglob("*") if p.is_file()}
    out = cli("sslprune-run", f"store={store}", *SHORT).stdout
    assert "0 to run" in out and "step " not in out
    assert {p: p.stat().st_mtime_ns for p in (store / "imp").rglob("*") if p.is_file()} == stage_files
