"""Installable: a wheel built from the project, installed into a fresh venv, works from any directory.

The venv finds torch and the other dependencies where the interpreter running the test finds
them (no network here): a `.pth` file lists that interpreter's site-packages folders, whether it is
the system's or a virtual environment's (`venv --system-site-packages` would give only the base
interpreter's, which a project installed in a venv does not use). So the test also checks that
what runs is the venv's copy of sslprune, not this checkout (the checkout may be installed
editable beside the dependencies; a folder listed in a `.pth` file is searched after the venv's
own site-packages and its `.pth` files, such as an editable install's finder, are not run).
"""
from __future__ import annotations

import csv
import os
import shutil
import site as python_site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

APPS = ("run", "report", "train", "imp", "retrain", "probe", "svm", "finetune", "status", "sync", "export")
TINY = ["model.width=4", "prune.levels=0", "seeds=[0]", "run.log_every=1000",
        *[f"{k}.optim.{o}" for k in ("signals.labels", "signals.rotnet", "retrain", "probe")
          for o in ("epochs=1", "milestones=[]")]]


def _run(args, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert p.returncode == 0, f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    return p


def _source(dest: Path) -> Path:
    """The files a clone has (tracked and untracked, not ignored): a build/ folder left in the
    checkout by an earlier build could otherwise slip stale modules into the wheel."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in names:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _builder(env: dict) -> tuple[str, list[str]]:
    """An interpreter whose setuptools builds wheels by itself (>= 70.1, pyproject's build
    requirement), to build without fetching one: this one, or the one its venv was made from
    (a venv's own bundled setuptools may be older). Without either, pip's build isolation
    fetches setuptools from the package index."""
    for py in dict.fromkeys([sys.executable, getattr(sys, "_base_executable", sys.executable)]):
        p = subprocess.run([py, "-c", "import setuptools; print(setuptools.__version__)"], capture_output=True,
                           text=True, env=env)
        version = tuple(int(x) for x in p.stdout.strip().split(".")[:2] if x.isdigit()) if p.returncode == 0 else ()
        if version >= (70, 1):
            return py, ["--no-build-isolation"]
    return sys.executable, []


def _dependency_dirs() -> list[str]:
    """The site-packages folders this interpreter imports its packages from: its own (a venv's or
    the system's), the system's a venv may see, the user's."""
    dirs = list(python_site.getsitepackages())
    if python_site.ENABLE_USER_SITE:
        dirs.append(python_site.getusersitepackages())
    dirs += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


@pytest.mark.slow
def test_wheel_installs_only_sslprune_and_its_commands_work_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    src = _source(tmp_path / "src")
    builder, isolation = _builder(env)
    _run([builder, "-m", "pip", "wheel", src, "--no-deps", *isolation, "-q", "-w", tmp_path / "wheels"],
         cwd=tmp_path, env=env)
    (wheel,) = (tmp_path / "wheels").glob("sslprune-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert {n.split("/")[0] for n in names} == {"sslprune", info}
    top_level = zipfile.ZipFile(wheel).read(f"{info}/top_level.txt").decode().split()
    assert top_level == ["sslprune"]
    for f in ("sslprune/launch/run.py", "sslprune/launch/compose.py", "sslprune/conf/config.yaml",
              "sslprune/conf/experiment/demo.yaml", "sslprune/conf/hydra/help/imp.yaml", "sslprune/api.py",
              "sslprune/control/figures.py", "sslprune/compute/runner.py"):
        assert f in names, f
    scripts = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert all(f"sslprune-{a} = " in scripts for a in APPS), scripts

    venv = tmp_path / "venv"
    # Without a pip of its own (ensurepip costs seconds): this interpreter's pip installs into it
    # (`--python`), running under the venv's interpreter as the venv's own pip would.
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=env)
    py, bin_ = venv / "bin" / "python", venv / "bin"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
                .stdout.strip())
    (site / "_dependencies.pth").write_text("".join(f"{d}\n" for d in _dependency_dirs()))
    before = set(os.listdir(site))
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel], cwd=tmp_path, env=env)
    added = set(os.listdir(site)) - before
    assert {a for a in added if not a.startswith("__pycache__")} == {"sslprune", info}  # nothing else top-level

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["PATH"] = f"{bin_}{os.pathsep}{env['PATH']}"
    where = _run([py, "-c", "import sslprune, sslprune.launch.compose as c; print(sslprune.__file__); "
                            "print(c.__file__); print(c.CONF_DIR)"], elsewhere, env).stdout.split()
    assert all(Path(w).is_relative_to(site) for w in where), where
    assert Path(where[2]) == site / "sslprune" / "conf"
    shebang = (bin_ / "sslprune-run").read_text().splitlines()[0]
    assert shebang.startswith(f"#!{bin_}/python"), shebang  # the console script runs the venv's python

    cfg = _run([bin_ / "sslprune-run", "--cfg", "job"], elsewhere, env).stdout
    assert "experiment: demo" in cfg and "store: ./runs" in cfg
    assert _run([bin_ / "sslprune-imp", "--help"], elsewhere, env).stdout.startswith("sslprune-imp: ")

    p = _run([bin_ / "sslprune-run", *TINY], elsewhere, env)
    store = elsewhere / "runs"  # the default store, relative to where the command ran
    with open(store / "reports" / "demo" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # 2 signals x (IMP level 0 + 3 re-training starts) + the RotNet probe + its random-features reference
    assert len(rows) == 10
    assert "| level | remaining |" in p.stdout
    assert len(list(store.glob("imp/*/chain.json"))) == 2
    assert (store / "reports" / "demo" / "accuracy_vs_remaining_retrain.png").stat().st_size > 10_000
