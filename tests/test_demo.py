"""The demo experiment end to end through the real console scripts, with fewer steps."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import SHORT_DEMO as SHORT, cli


def _read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def demo(short_demo):
    """The session's one short demo (conftest): these tests read its store and leave its results as they were."""
    return short_demo


def test_demo_writes_results_for_every_signal_evaluation_level_and_seed(demo):
    store, out = demo
    report = store / "reports" / "demo"
    rows = _read(report / "results.csv")
    # The cost columns (issue 25) are appended: the original ten keep their positions.
    assert list(rows[0]) == ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining", "seed",
                            "accuracy", "params", "params_kept", "prunable", "prunable_kept", "macs_dense", "macs"]
    expected = {("labels", e) for e in ("pretext", "winning_ticket", "random_reinit", "random")}
    expected |= {("rotnet", e) for e in ("pretext", "winning_ticket", "random_reinit", "random", "probe:digits")}
    got = {}
    for r in rows:
        got.setdefault((r["signal"], r["evaluation"]), set()).add((int(r["level"]), int(r["seed"])))
        level, remaining = int(r["level"]), float(r["remaining"])
        assert abs(remaining - 0.8 ** level) < 1e-3, r  # fraction of prunable weights left
        assert 0.0 <= float(r["accuracy"]) <= 1.0
    # ... and the probe of RotNet's initial weights, the random-features reference, once per seed
    assert set(got) == expected | {("rotnet", "probe:digits@init")}
    assert got.pop(("rotnet", "probe:digits@init")) == {(0, 0), (0, 1)}
    assert all(v == {(lv, s) for lv in range(4) for s in (0, 1)} for v in got.values())
    assert len(rows) == 2 * 4 * (4 + 5) + 2


def test_demo_summary_is_mean_and_standard_error_over_seeds(demo):
    store, out = demo
    report = store / "reports" / "demo"
    rows = _read(report / "results.csv")
    summary = _read(report / "summary.csv")
    assert list(summary[0]) == ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining",
                                "mean", "stderr", "count", "params_kept", "macs_dense", "macs"]
    for s in summary:
        accs = [float(r["accuracy"]) for r in rows if (r["signal"], r["evaluation"], r["level"]) ==
                (s["signal"], s["evaluation"], s["level"])]
        assert int(s["count"]) == len(accs) == 2
        mean = sum(accs) / 2
        assert float(s["mean"]) == pytest.approx(mean)
        assert float(s["stderr"]) == pytest.approx(abs(accs[0] - accs[1]) / 2)  # sd/sqrt(2) for two seeds
    md = (report / "summary.md").read_text()
    assert "| rotnet | probe:digits | 3 | 51.19% |" in md  # 0.8^3 up to ceil rounding
    table = (report / "table.md").read_text()
    assert table.split("\n", 2)[2] in out  # the run ends by printing the pivot
    for name in ("remaining", "remaining_pretext", "remaining_retrain", "remaining_probe",
                 "macs", "macs_pretext", "macs_retrain", "macs_probe"):
        png = (report / f"accuracy_vs_{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name


def test_the_printed_table_is_a_pivot_of_levels_by_signal_and_evaluation(demo):
    store, out = demo
    summary = _read(store / "reports" / "demo" / "summary.csv")
    at = {(s["signal"], s["evaluation"], int(s["level"])): s for s in summary}
    lines = out.splitlines()
    start = lines.index("## masks re-trained on labels (%, mean ± s.e. over 2 seeds)")
    header, rule, *rows = lines[start + 2:start + 2 + 2 + 4]
    assert header == ("| level | remaining | labels: winning ticket | labels: random re-init | labels: random | "
                      "rotnet: winning ticket | rotnet: random re-init | rotnet: random |")
    for level, row in enumerate(rows):  # one row per level, the levels' fractions remaining
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:2] == [str(level), f"{100 * float(at[('labels', 'pretext', level)]['remaining']):.2f}%"]
        for cell, (signal, ev) in zip(cells[2:], [(g, e) for g in ("labels", "rotnet")
                                                  for e in ("winning_ticket", "random_reinit", "random")]):
            s = at[(signal, ev, level)]
            assert cell == f"{100 * float(s['mean']):.2f} ± {100 * float(s['stderr']):.2f}"
    assert "## linear probes on frozen features (%, mean ± s.e. over 2 seeds)" in lines
    assert "| level | remaining | labels: label accuracy (top-1) | rotnet: rotation accuracy |" in lines


def test_report_rebuilds_the_same_tables_from_the_store(demo):
    store, _ = demo
    report = store / "reports" / "demo"
    before = (report / "results.csv").read_text(), (report / "summary.csv").read_text()
    (report / "results.csv").unlink()
    out = cli("sslprune-report", f"store={store}", *SHORT).stdout
    assert ((report / "results.csv").read_text(), (report / "summary.csv").read_text()) == before
    assert (report / "table.md").read_text().split("\n", 2)[2] in out


def test_rerunning_a_finished_experiment_does_no_work(demo):
    store, _ = demo
    stage_files = {p: p.stat().st_mtime_ns for p in (store / "imp").rglob("*") if p.is_file()}
    out = cli("sslprune-run", f"store={store}", *SHORT).stdout
    assert "0 to run" in out and "step " not in out
    assert {p: p.stat().st_mtime_ns for p in (store / "imp").rglob("*") if p.is_file()} == stage_files
