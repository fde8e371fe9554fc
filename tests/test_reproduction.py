"""Issue 22: `sslprune-report --reproduction` writes reproduction.md: when and on what the results
were computed (date, commit, threads, CPU model from result.json), the command that reproduces
them, and the findings' summary."""
from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone

from sslprune.control import reproduction
from sslprune.core import machine
from sslprune.control.verdict import STABLE

from conftest import ROOT, SHORT_DEMO, cli, tiny_config


def test_the_section_says_when_where_and_how_the_results_were_computed(tmp_path):
    cfg = tiny_config(tmp_path, seeds=[0, 1])
    results = {}
    for i, (kind, threads, cpu) in enumerate([("imp", 1, "AMD EPYC 7B13"), ("retrain", 1, "AMD EPYC 7B13"),
                                              ("retrain", 2, "Intel Xeon"), ("svm", None, "AMD EPYC 7B13")]):
        path = tmp_path / f"s{i}" / "result.json"
        path.parent.mkdir()
        path.write_text("{}")
        os.utime(path, (0, datetime(2026, 12, 5, 10 + i, 30, tzinfo=timezone.utc).timestamp()))
        results[str(path)] = {"kind": kind, "device": "cpu", "cpu_model": cpu, "seconds": 10.25 * (i + 1),
                              **({} if threads is None else {"threads": threads})}
    results[str(tmp_path / "never_ran" / "result.json")] = None
    found = [{"claim": "labels_ticket_above_reinit", "subject": "labels", "evaluation": "winning_ticket",
              "levels": [{"met": True, "tied": None}], "verdict": "holds", "agree": 1, "resamples": 2,
              "stability": 0.5, "unstable": 0.5 < STABLE}]
    text = reproduction.markdown(cfg, ["prune.levels=1", "seeds=[0,1]"], results, found, "v1.2-3-gabc1234",
                                 datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc))
    assert text.splitlines()[:10] == [
        "## Reproduction: tiny", "",
        "- results computed: 2026-12-05 10:30 to 2026-12-05 13:30 UTC (4 stages; the times of their result.json)",
        "- section written: 2026-12-06 12:00 UTC",
        "- commit: v1.2-3-gabc1234 (`git describe` of the installed tree when this section was written)",
        "- threads: 1 (2 stages), 2 (1 stages)",  # the SVM's scikit-learn records none and is not counted
        "- CPU model: AMD EPYC 7B13 (3 stages), Intel Xeon (1 stages)",
        "- device: cpu",
        "- stage time: 102 s summed over the stages' result.json `seconds`", ""]  # 10.25 x (1+2+3+4), rounded
    assert "sslprune-run experiment=tiny prune.levels=1 'seeds=[0,1]'\n" \
           "sslprune-report experiment=tiny prune.levels=1 'seeds=[0,1]' --reproduction\n" in text
    assert "on another CPU model they differ, by about as much as another seed" in text  # measured, not only the last digits
    assert text.endswith("| labels_ticket_above_reinit | labels | winning_ticket | 1 / 1 | holds, *unstable* | 1 / 2 |\n")
    # stages computed before result.json recorded the CPU say so
    text = reproduction.markdown(cfg, [], {"r.json": {"kind": "imp", "threads": 1}}, [], "unknown",
                                 datetime(2026, 12, 6, tzinfo=timezone.utc))
    assert "- CPU model: not recorded\n" in text and "- results computed: not recorded (1 stages" in text
    assert "- stage time: not recorded\n" in text
    text = reproduction.markdown(cfg, [], {"a": {"seconds": 1.5}, "b": {"kind": "svm"}}, [], "unknown",
                                 datetime(2026, 12, 6, tzinfo=timezone.utc))
    assert "- stage time: 2 s summed over the stages' result.json `seconds` (1 stages without it)\n" in text


def test_the_command_names_the_experiment_once_and_quotes_for_the_shell():
    assert reproduction.command("demo", ["experiment=demo", "seeds=[0,1]"]) == "sslprune-run experiment=demo 'seeds=[0,1]'"
    assert reproduction.command("demo", ["store=/a b"], "sslprune-report", ("--reproduction",)) == \
        "sslprune-report experiment=demo 'store=/a b' --reproduction"


def test_the_commit_is_git_describe_of_the_tree_or_unknown(tmp_path):
    assert reproduction.commit(tmp_path) == "unknown"  # not a git checkout (an installed wheel)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run(git + ["add", "f"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    subprocess.run(git + ["tag", "v0.1"], check=True)
    assert reproduction.commit(tmp_path) == "v0.1"
    (tmp_path / "f").write_text("2")
    assert reproduction.commit(tmp_path) == "v0.1-dirty"


def test_sslprune_report_writes_the_reproduction_section_of_a_run(short_demo):
    """On the session's short demo (conftest): the report adds reproduction.md only when asked."""
    store, _ = short_demo
    args = ["experiment=demo", f"store={store}", *SHORT_DEMO]
    out = store / "reports" / "demo"
    assert not (out / "reproduction.md").exists()  # only when asked for
    cli("sslprune-report", *args, "--reproduction")
    text = (out / "reproduction.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "## Reproduction: demo"
    assert f"- commit: {reproduction.commit(ROOT)} (`git describe`" in text and "unknown" not in lines[4]
    assert "- threads: 1\n" in text  # conftest.cli runs with OMP_NUM_THREADS=1
    assert f"- CPU model: {machine.cpu_model()}\n" in text
    assert "sslprune-run " + " ".join(f"'{a}'" if "[" in a else a for a in args) + "\n" in text
    findings = (out / "findings.md").read_text()
    summary = findings[findings.index("| claim |"):findings.index("\n\n", findings.index("| claim |"))]
    assert text.endswith(summary + "\n")
