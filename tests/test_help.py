"""Each app's --help says what it runs, what it needs and an example before Hydra's generic part."""
from __future__ import annotations

import pytest

from conftest import cli

GENERIC = "== Configuration groups =="


def _help(app: str) -> tuple[str, str]:
    """(our header, Hydra's part) of an app's --help."""
    out = cli(app, "--help").stdout
    assert GENERIC in out, out[:2000]
    ours, hydras = out.split(GENERIC, 1)
    assert "experiment: demo" in hydras and "== Config ==" in hydras  # the composed config follows
    return ours, hydras


def test_run_help_starts_with_what_it_runs_what_it_needs_and_examples():
    ours, _ = _help("sslprune-run")
    lines = ours.splitlines()
    assert lines[0] == "sslprune-run: every stage of an experiment, then its report."
    assert "is powered by Hydra" not in ours
    needs = ours.index("\nNeeds: ")
    examples = ours.index("\nExamples:\n")
    assert needs < examples
    assert "data.root=" in ours[needs:examples] and "store=" in ours[needs:examples]
    assert "  sslprune-run experiment=fig3_imagenet_resnet50_small seeds=[0] store=/tmp/runs" in lines
    assert "launcher=slurm" in ours


def test_imp_help_is_its_own_not_the_stage_module_name():
    ours, _ = _help("sslprune-imp")
    lines = ours.splitlines()
    assert lines[0].startswith("sslprune-imp: iterative magnitude pruning of one chain (signal, seed)")
    assert "stages is powered by Hydra" not in ours
    needs = ours[ours.index("\nNeeds: "):ours.index("\nExamples:\n")]
    assert "signal=<name>" in needs and "level L-1" in needs
    assert "  sslprune-imp signal=rotnet seed=1 level=3" in lines


@pytest.mark.slow
def test_every_app_has_its_own_help():
    for app in ("report", "train", "retrain", "probe", "svm", "finetune", "status", "sync", "export"):
        ours, _ = _help(f"sslprune-{app}")
        assert ours.startswith(f"sslprune-{app}: "), ours[:200]
        assert "\nNeeds: " in ours and "\nExample" in ours, app
        assert f"  sslprune-{app} " in ours, app  # an example command line of this app
