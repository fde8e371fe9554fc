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

pytestmark = pytest.mark.slurm


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
