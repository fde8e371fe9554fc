"""Two planes with one-way imports: the control plane plans, submits, reports status and writes
tables without torch, torchvision, torchcodec, scikit-learn or scipy (a login node may lack them); the compute
plane may use the control plane's types, never the reverse; no import cycles."""
from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, cli

PACKAGE = ROOT / "sslprune"
HEAVY = ("torch", "torchvision", "torchcodec", "sklearn", "scipy")
# The only places the control plane reaches into the compute plane, each inside a function that
# runs only when a stage is actually computed in this process.
DOORS = {
    ("stage.py", "run"): "sslprune.compute.runner",  # Stage.run: the stage is computed here
    ("local.py", "_uses_cuda"): "torch",  # a local run computes in this process: is there a GPU?
}


def _modules(folder: Path):
    for p in sorted(folder.glob("*.py")):
        yield p, ast.parse(p.read_text())


def _imports(tree: ast.AST, package: str):
    """(module imported, enclosing function name or None) for every import in a module."""
    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                out.extend((a.name, func) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                out.extend((f"{base}.{a.name}", func) for a in child.names)
            visit(child, f)
    visit(tree, None)
    return out


def test_control_plane_imports_neither_torch_nor_the_compute_plane():
    crossings = []
    for path, tree in _modules(PACKAGE / "control"):
        for name, func in _imports(tree, "sslprune.control"):
            heavy = name.split(".")[0] in HEAVY
            compute = name.startswith("sslprune.compute")
            if not (heavy or compute):
                continue
            door = DOORS.get((path.name, func))
            if door is None or not name.startswith(door):
                crossings.append(f"{path.name}:{func or '<module>'} imports {name}")
    assert not crossings, "control plane reaches into torch / the compute plane:\n" + "\n".join(crossings)


def test_compute_plane_never_imports_the_apps_and_no_module_imports_in_a_cycle():
    graph: dict[str, set[str]] = {}
    for plane in ("control", "compute"):
        for path, tree in _modules(PACKAGE / plane):
            me = f"sslprune.{plane}.{path.stem}"
            deps = set()
            for name, func in _imports(tree, f"sslprune.{plane}"):
                assert not name.startswith("sslprune.launch"), f"{me} imports the Hydra apps ({name})"
                if func is None and name.startswith("sslprune."):
                    parts = name.split(".")
                    deps.add(".".join(parts[:3]))
            graph[me] = {d for d in deps if d != me}
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for d in graph[node]:
                if d == start:
                    return path + [d]
                if d not in seen:
                    seen.add(d)
                    stack.append((d, path + [d]))
        return None

    cycles = [c for c in (cycle_from(m) for m in graph) if c]
    assert not cycles, "module-level import cycle: " + " -> ".join(cycles[0])
    assert all(not d.startswith("sslprune.compute") for m, deps in graph.items() if ".control." in m for d in deps)


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
    # + the probe of RotNet's initial weights
    assert doc["complete"] and doc["stages"] == 16
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
