"""Three layers with one-way imports. `sslprune.core` (schema, validation, identity, errors, store
files, stage records, the progress protocol) is shared by both planes and imports neither. The
control plane plans, submits, reports status and writes tables without torch, torchvision,
torchcodec, scikit-learn or scipy (a login node may lack them); the compute plane never imports the
control plane or the apps; only the app layer (sslprune.api, launch/) imports both. Function-level
imports count: a door inside a function is still a way back. No import cycles at all."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, cli

PACKAGE = ROOT / "sslprune"
HEAVY = ("torch", "torchvision", "torchcodec", "sklearn", "scipy")
CORE_NEVER = HEAVY + ("wandb", "submitit")  # core is plain data and files: what a login node and a job both load
PLANES = ("core", "control", "compute")


def _files() -> dict[str, Path]:
    """Every module of the installed package, by dotted name: sslprune, its planes, api, and the apps
    (the repository's launch/ is installed as sslprune.launch)."""
    out = {}
    for p in sorted(PACKAGE.glob("*.py")):
        out["sslprune" if p.stem == "__init__" else f"sslprune.{p.stem}"] = p
    for plane in PLANES:
        for p in sorted((PACKAGE / plane).glob("*.py")):
            out[f"sslprune.{plane}" + ("" if p.stem == "__init__" else f".{p.stem}")] = p
    for p in sorted((ROOT / "launch").glob("*.py")):
        out["sslprune.launch" + ("" if p.stem == "__init__" else f".{p.stem}")] = p
    return out


def _imports(path: Path, module: str) -> list[tuple[str, str]]:
    """(module imported, where: '<module>' or the enclosing function) for every import in a file,
    relative ones resolved; `from package import name` yields package.name."""
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                out.extend((a.name, func or "<module>") for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                out.extend((f"{base}.{a.name}", func or "<module>") for a in child.names)
            visit(child, f)
    visit(ast.parse(path.read_text()), None)
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the sslprune modules it imports anywhere in it (functions included)."""
    files = _files()
    graph = {}
    for me, path in files.items():
        deps = set()
        for name, _ in _imports(path, me):
            while name and name not in files:  # `from .core import store` names sslprune.core.store
                name = name.rpartition(".")[0]
            if name and name != me:
                deps.add(name)
        graph[me] = deps
    return graph


def _plane(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in PLANES else "app"


def test_every_module_is_seen():
    files = _files()
    for m in ("sslprune.api", "sslprune.core.schema", "sslprune.control.local", "sslprune.compute.runner",
              "sslprune.launch.run"):
        assert m in files, m


def test_no_module_imports_in_a_cycle_function_level_imports_included():
    graph = _graph()

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for d in sorted(graph[node]):
                if d == start:
                    return path + [d]
                if d not in seen and d in graph:
                    seen.add(d)
                    stack.append((d, path + [d]))
        return None

    cycles = [c for c in (cycle_from(m) for m in sorted(graph)) if c]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0]) + f" ({len(cycles)} modules in cycles)"


def test_planes_import_core_and_never_each_other_nor_the_apps():
    """No doors: control never reaches compute (not even inside a function), compute never reaches
    control, neither reaches the app layer (api, launch), and core reaches neither plane."""
    allowed = {"core": {"core"}, "control": {"core", "control"}, "compute": {"core", "compute"}}
    crossings = []
    files = _files()
    for me, path in files.items():
        plane = _plane(me)
        if plane not in allowed:
            continue
        for name, where in _imports(path, me):
            if not name.startswith("sslprune"):
                continue
            target = name
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != "sslprune" and _plane(target) not in allowed[plane]:
                crossings.append(f"{me}:{where} imports {name}")
    assert not crossings, "an import crosses the layers:\n" + "\n".join(crossings)


@pytest.mark.parametrize("plane,never", [("core", CORE_NEVER), ("control", HEAVY)])
def test_core_and_control_never_import_heavy_libraries_even_inside_functions(plane, never):
    found = []
    for me, path in _files().items():
        if _plane(me) != plane:
            continue
        for name, where in _imports(path, me):
            if name.split(".")[0] in never:
                found.append(f"{me}:{where} imports {name}")
    assert not found, f"the {plane} layer imports what it must not:\n" + "\n".join(found)


def test_core_control_and_api_import_nothing_heavy_in_a_fresh_interpreter():
    """Importing every module of core and of the control plane, and the API, loads none of torch,
    torchvision, torchcodec, scikit-learn, scipy (and core alone neither wandb nor submitit)."""
    files = _files()
    core = [m for m in files if _plane(m) == "core"]
    control = [m for m in files if _plane(m) == "control"]
    code = ("import importlib, json, sys\n"
            f"for m in {core!r}: importlib.import_module(m)\n"
            "after_core = sorted(m for m in sys.modules if m.split('.')[0] in %r)\n"
            f"for m in {control + ['sslprune.api']!r}: importlib.import_module(m)\n"
            "after_all = sorted(m for m in sys.modules if m.split('.')[0] in %r)\n"
            "print(json.dumps([after_core, after_all]))\n") % (CORE_NEVER, HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    after_core, after_all = json.loads(out.stdout)
    assert after_core == [], f"importing sslprune.core loaded {after_core}"
    assert after_all == [], f"importing the control plane and the API loaded {after_all}"


def test_collecting_every_test_imports_no_heavy_library():
    """Issue 21: collection stays fast because no test module imports torch, torchvision, Hydra,
    submitit or wandb at module level (tests import them inside the tests that use them). Collected
    in a fresh interpreter (this process has imported them already), every tier (-m "")."""
    never = HEAVY + ("hydra", "omegaconf", "submitit", "wandb")
    code = ("import json, sys, pytest\n"
            "rc = pytest.main(['--collect-only', '-q', '-m', '', '-n', '0', '-p', 'no:cacheprovider', 'tests'])\n"
            "print(json.dumps([int(rc), sorted({m.split('.')[0] for m in sys.modules} & set(%r))]))\n") % (never,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    rc, loaded = json.loads(out.stdout.splitlines()[-1])
    assert rc == 0, out.stdout[-2000:]
    assert loaded == [], f"collecting the tests imported {loaded}"


def _without_heavy(tmp_path: Path) -> dict:
    """An environment whose torch, torchvision, torchcodec, sklearn and scipy raise ImportError on import."""
    blocked = tmp_path / "blocked"
    for name in HEAVY:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed on this login node (test_planes)')\n")
    return {"PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


TINY = ["model.width=4", "prune.levels=1", "seeds=[0]", "signals.labels.optim.epochs=1",
        "signals.rotnet.optim.epochs=1", "retrain.optim.epochs=1", "probe.optim.epochs=1",
        "signals.labels.optim.milestones=[]", "signals.rotnet.optim.milestones=[]",
        "retrain.optim.milestones=[]", "probe.optim.milestones=[]", "run.quiet=true"]


@pytest.mark.slow
def test_status_report_and_cfg_without_torch(tmp_path):
    store = tmp_path / "store"
    args = [f"store={store}", *TINY]
    cli("sslprune-run", *args)  # with torch: the store to look at
    env = _without_heavy(tmp_path)
    probe = cli("python", "-c", "import torch", check=False, env=env)
    assert probe.returncode != 0 and "not installed on this login node" in probe.stderr
    cfg = cli("sslprune-run", *args, "--cfg", "job", env=env)
    assert "experiment: demo" in cfg.stdout
    text = cli("sslprune-status", *args, env=env)
    assert "all stages done" in text.stdout, text.stdout
    doc = json.loads(cli("sslprune-status", *args, "--json", env=env).stdout)
    # 2 signals x 2 levels x (IMP + 3 starts) + 2 probes, level 0's random starts shared: 18 - 3 stages,
    # level 1's random start shared: - 1, + the probe of RotNet's initial weights
    assert doc["complete"] and doc["stages"] == 15
    for f in ("results.csv", "summary.csv", "accuracy_vs_remaining.png"):
        (store / "reports" / "demo" / f).unlink()
    rep = cli("sslprune-report", *args, env=env)
    assert "report written to" in rep.stdout
    out = store / "reports" / "demo"
    assert (out / "accuracy_vs_remaining.png").stat().st_size > 0
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 19
    assert (out / "natural_sparsity.csv").exists()
    for png in out.glob("*.png"):
        png.unlink()
    cli("sslprune-report", *args, "--tables", env=env)  # the tables alone (benchmarks/sweep_scale.py times this)
    assert not list(out.glob("*.png")) and len((out / "results.csv").read_text().splitlines()) == 1 + 19
