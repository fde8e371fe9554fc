"""Hydra `_target_` import paths, checked without importing them (the control plane imports no torch
and never runs a user's module).

A target is `package.module.attribute` (Hydra's spelling), e.g. `my_lab.nets.build`: the longest
prefix that is a module, then the attribute inside it. `find` locates the module file with the
import machinery's finders, which read directories and never execute a package's `__init__`
(importlib.util.find_spec("a.b") would import `a`), and looks the attribute up in the module's
source (a top-level def, class, assignment or import). The compute plane imports the module when a
stage builds the object (sslprune.compute.factory).
"""
from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import re
import sys
from pathlib import Path
from typing import Optional

from .errors import ConfigError

PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _spec(name: str, parent) -> Optional[importlib.machinery.ModuleSpec]:
    """The spec of module `name` (a dotted name whose parent's spec is `parent`), without importing."""
    if name in sys.modules and getattr(sys.modules[name], "__spec__", None) is not None:
        return sys.modules[name].__spec__
    if parent is None:
        return importlib.util.find_spec(name)  # a top-level name: no parent to import
    locations = parent.submodule_search_locations
    if not locations:
        return None  # the parent is a module, not a package
    return importlib.machinery.PathFinder.find_spec(name, list(locations))


def _defines(origin: str, attribute: str) -> Optional[bool]:
    """Whether the module source at `origin` binds `attribute` at its top level; None when it cannot
    be told from the source (a compiled module, `from x import *`, a module-level __getattr__)."""
    if not origin or not origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(origin).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.name == "*":
                    return None
                names.add((a.asname or a.name).split(".")[0])
    if "__getattr__" in names and attribute not in names:
        return None
    return attribute in names


def split(path: str) -> tuple[str, str]:
    """(module, attribute) of a well-formed target path, found without importing anything."""
    parts = path.split(".")
    spec, found = None, 0
    for i in range(1, len(parts)):
        try:
            nxt = _spec(".".join(parts[:i]), spec)
        except (ImportError, ValueError):
            nxt = None
        if nxt is None:
            break
        spec, found = nxt, i
    if spec is None:
        raise LookupError(f"no module {parts[0]!r} is installed")
    return ".".join(parts[:found]), ".".join(parts[found:])


def find(key: str, path) -> None:
    """Refuse a target that cannot be found, with one line naming the config key and the path."""
    if not isinstance(path, str) or not PATH.fullmatch(path):
        raise ConfigError(f"{key}={path!r} is not an import path: write package.module.name "
                          "(e.g. my_lab.nets.build)")
    try:
        module, attribute = split(path)
    except LookupError as e:
        raise ConfigError(f"{key}={path}: {e} (install the package or add it to PYTHONPATH)") from None
    origin = _spec_of(module).origin
    head = attribute.split(".")[0]  # a.b.Class.method: Class must be in module a.b
    if _defines(origin, head) is False:
        raise ConfigError(f"{key}={path}: module {module} ({origin}) has no attribute {head!r}")


def _spec_of(module: str):
    spec = None
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        spec = _spec(".".join(parts[:i]), spec)
    return spec
