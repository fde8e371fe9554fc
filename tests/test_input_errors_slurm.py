"""Store paths that a shell would split or run, through the real local SLURM cluster (see test_slurm.py).

Run with `pytest -m slurm tests/test_input_errors_slurm.py`.
"""
from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, cli
from test_slurm import SLURM, cluster, tiny, wait_complete  # noqa: F401 (cluster: the session fixture)
from sslprune.core import errors

pytestmark = pytest.mark.slurm
# The longest tests, in seconds (the SLURM tier at load 16 on 2 cores): conftest hands them out first.
LONGEST = {"test_store_path_with_spaces_and_shell_syntax_runs_and_executes_nothing": 58}


def test_store_path_with_spaces_and_shell_syntax_runs_and_executes_nothing(tmp_path):
    """A store path is data: spaces, $(...) and backticks reach the sbatch script quoted, the jobs run
    and finish in that store, and nothing in the path is executed, not even by the printed hint."""
    marker = Path(f"/tmp/sslprune-pwned-{uuid.uuid4().hex}")  # absolute: created wherever a shell ran it
    store = tmp_path / "x y" / f"$(touch {marker}-a)" / f"`touch {marker}-b`" / "store"
    args = tiny(store, signals=("labels",), seeds="[0]", levels=0)
    args[0] = f"store='{store}'"  # Hydra's grammar needs ( ) and ` quoted; the shell is not involved (argv)
    p = cli("sslprune-run", *args, *SLURM)
    assert "submitted 2 stage(s) in 2 array(s)" in p.stdout, p.stdout
    st = wait_complete(args, 300)
    assert st["store"] == str(store) and st["kinds"]["imp"]["done"] == 1 and st["kinds"]["retrain"]["done"] == 1
    (imp,) = store.glob("imp/*/seed_0/level_0/result.json")
    (retrain,) = store.glob("imp/*/seed_0/level_0/retrain_*/winning_ticket/result.json")
    assert 0 < json.loads(retrain.read_text())["accuracy"] <= 1 and "accuracy" in json.loads(imp.read_text())
    scripts = sorted(store.glob("slurm/*/*_submission.sh"))
    assert len(scripts) == 2
    for script in scripts:
        text = script.read_text()
        # every mention of the path is one single-quoted shell word (or #SBATCH value) starting at its root
        assert text.count("$(touch") == text.count(f"'{tmp_path}/x y/$(touch") >= 4, text
        logs = list(script.parent.glob("*_log.out"))
        assert logs and "Traceback" not in "".join(log.read_text() for log in logs)
    # the printed "watch with:" command works when pasted into a shell, and runs nothing either
    (hint,) = re.findall(r"watch with: (.*)$", p.stdout, re.MULTILINE)
    watched = subprocess.run(["bash", "-c", hint + " --json"], capture_output=True, text=True, cwd=ROOT)
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout)["store"] == str(store)
    assert not Path(f"{marker}-a").exists() and not Path(f"{marker}-b").exists()


def _entries(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


def _dead_controller(tmp_path: Path) -> Path:
    """A slurm.conf whose controller port nobody listens on."""
    conf = tmp_path / "slurm.conf"
    text = Path("/etc/slurm/slurm.conf").read_text()
    assert "SlurmctldPort=6817" in text
    conf.write_text(text.replace("SlurmctldPort=6817", "SlurmctldPort=1"))
    return conf


def test_an_unreachable_controller_is_one_line_and_nothing_is_written(tmp_path):
    """A slurm.conf whose controller port nobody listens on: one line before any write (the store
    used to gain code/, jobs/configs/ and job pickles, then a 59-line traceback)."""
    conf = _dead_controller(tmp_path)
    store = tmp_path / "store"
    p = cli("sslprune-run", *tiny(store, signals=("labels",), seeds="[0]", levels=0), *SLURM, check=False,
            env={"SLURM_CONF": str(conf)}, timeout=120)
    assert p.returncode == 2 and p.stderr.splitlines() == [
        "sslprune: error: launcher=slurm but the SLURM controller does not answer (scontrol ping: Slurmctld(primary) "
        "at vm is DOWN); nothing was submitted or written: start it, check SLURM_CONF, or use launcher=local"], p.stderr
    assert _entries(store) == []


def test_cancel_with_an_unreachable_controller_is_one_line_not_cancelled_0(tmp_path):
    """squeue answered nothing, so --cancel printed "cancelled 0 job(s)" and exited 0."""
    p = cli("sslprune-status", f"store={tmp_path / 'store'}", "--cancel", check=False,
            env={"SLURM_CONF": str(_dead_controller(tmp_path))}, timeout=120)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.splitlines() == [
        "sslprune: error: --cancel needs the SLURM controller, which does not answer (scontrol ping: "
        "Slurmctld(primary) at vm is DOWN); nothing was cancelled: start it or check SLURM_CONF"], p.stderr


@pytest.mark.slow
def test_a_failed_scancel_is_an_error_not_a_success(tmp_path, monkeypatch):
    """The controller going away between squeue and scancel: scancel's exit status was ignored."""
    from sslprune.control import slurm

    monkeypatch.setenv("SLURM_CONF", str(_dead_controller(tmp_path)))  # the real scancel, a real dead port
    with pytest.raises(errors.Refused) as e:
        slurm.cancel(["12345"], check=True)
    assert re.fullmatch(r"scancel 12345 failed \(exit [1-9]\d*\): scancel: error: Kill job error on job id 12345: "
                        r"Unable to contact slurm controller \(connect failure\)", str(e.value)), str(e.value)
    slurm.cancel(["12345"])  # a re-submission's clean-up of stale jobs does not check


def test_no_sbatch_on_path_is_one_line_and_nothing_is_written(tmp_path):
    import shutil

    bin_ = tmp_path / "bin"  # sslprune-run alone (its shebang names the venv's python); SLURM's tools are not
    bin_.mkdir()
    (bin_ / "sslprune-run").symlink_to(shutil.which("sslprune-run"))
    store = tmp_path / "store"
    p = cli("sslprune-run", *tiny(store, signals=("labels",), seeds="[0]", levels=0), *SLURM, check=False,
            env={"PATH": str(bin_)})
    assert p.returncode == 2 and p.stderr.splitlines() == [
        "sslprune: error: launcher=slurm but sbatch and squeue are not on PATH (start a cluster, e.g. "
        "`bash slurm/local-cluster.sh start`, or use launcher=local)"], p.stderr
    assert _entries(store) == []
