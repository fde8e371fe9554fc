"""Shared helpers: a tiny but real experiment on scikit-learn digits."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sslprune.core import catalog
from sslprune.core.schema import (Config, DataConfig, ModelConfig, OptimConfig, ProbeConfig, PruneConfig,
                                  RetrainConfig, RunConfig, SignalConfig, TaskConfig)

ROOT = Path(__file__).resolve().parent.parent

# Tests never log to W&B, whatever the developer's credentials (tests/test_wandb.py sets its own env).
os.environ["WANDB_MODE"] = "disabled"

# Idle OpenMP threads sleep instead of spinning, in this process and every command, pool worker and
# SLURM job it starts (set before torch loads). The two xdist workers share 2 cores, and a stage
# computing on 2 threads beside the other worker spun its idle threads: the default tier took 7 min
# 00 s and 13 min 24 s of CPU, with PASSIVE 5 min 56 s and 11 min 29 s (2026-12-06, back to back).
# How threads wait changes no number: the golden tests pass either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# The entries of a stage's result.json that say how long it took, not what it computed: the only
# ones two runs of the same stage may differ in.
TIMES = ("seconds", "setup_s", "startup_s")


def numbers(result: dict) -> dict:
    """A result.json's content without its TIMES: what must be equal when a stage is computed again."""
    return {k: v for k, v in result.items() if k not in TIMES}


def tiny_optim(epochs: int = 2, **kw) -> OptimConfig:
    return OptimConfig(**{"optimizer": "sgd", "lr": 0.05, "batch_size": 128, "epochs": epochs, **kw})


def tiny_config(store: Path, **kw) -> Config:
    """Digits, a width-4 ResNet, 2 epochs per stage: seconds per stage on one core."""
    cfg = Config(
        experiment="tiny", store=str(store), seeds=[0],
        data=DataConfig(name="digits"), model=ModelConfig(name="resnet_small", width=4),
        prune=PruneConfig(rate=0.2, levels=2, rewind="3it"),
        signals={"labels": SignalConfig(TaskConfig("labels"), tiny_optim()),
                 "rotnet": SignalConfig(TaskConfig("rotnet"), tiny_optim())},
        retrain=RetrainConfig(data=DataConfig(name="digits"), optim=tiny_optim()),
        probe=ProbeConfig(signals=["rotnet"], datasets=[DataConfig(name="digits")], optim=tiny_optim(lr=0.1)),
        run=RunConfig(quiet=True, threads=1, workers=1),
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


# The console scripts of the interpreter running the tests come first on PATH, for every subprocess
# the tests start: a checkout tested from its own venv must not run another install's sslprune-run
# that PATH happens to find first (each git worktree of the project has its own venv).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

def cli_env(env: dict | None = None) -> dict:
    """The environment `cli` runs a console script in; a test that starts one with Popen (to run
    beside something else) uses it too, so its numbers can be compared with a `cli` run's."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}


def cli(*args: str, timeout: float = 600, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the console scripts the way a user does, from a clean subprocess."""
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=cli_env(env), cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p


# Costly fixtures computed once per worker process under pytest-xdist (pyproject's `-n 2 --dist
# loadgroup`): the tests that use one run on one worker, so it is computed once, not once per worker.
# (test module or "*", fixture) -> group
SHARED_FIXTURES = {("*", "short_demo"): "short_demo", ("test_wandb.py", "demo"): "wandb_demo",
                   ("test_store_safety.py", "reference"): "store_safety_reference",
                   ("test_store_safety.py", "small_run"): "store_safety_small_run",
                   ("test_pretrained.py", "resnet50"): "pretrained_resnet50",
                   ("test_presets.py", "bad_runs"): "presets_bad_runs", ("test_method.py", "chain"): "method_chain",
                   ("test_records.py", "built"): "records_built"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        for (module, fixture), group in SHARED_FIXTURES.items():
            if fixture in item.fixturenames and module in ("*", item.path.name):
                item.add_marker(pytest.mark.xdist_group(group))
    # xdist's loadgroup hands tests to the workers in collection order: a long test collected last
    # leaves the other worker idle until it ends. A module's LONGEST (test name -> rough seconds on
    # the tier's 2 cores) puts those tests first, longest first; the rest keep their order.
    items.sort(key=lambda item: -getattr(getattr(item, "module", None), "LONGEST", {}).get(
        getattr(item, "originalname", item.name), 0))


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


# The one short CLI demo of the default tier: the demo preset through sslprune-run, 1 epoch per
# stage, 3 levels, both seeds. Tests that only read its store share it; a test that changes what
# is stored makes its own.
SHORT_DEMO = ["prune.levels=3", "model.width=4", "run.log_every=1000",
              "signals.labels.optim.epochs=1", "signals.labels.optim.milestones=[]",
              "signals.rotnet.optim.epochs=1", "signals.rotnet.optim.milestones=[]",
              "retrain.optim.epochs=1", "retrain.optim.milestones=[]",
              "probe.optim.epochs=1", "probe.optim.milestones=[]"]


@pytest.fixture(scope="session")
def short_demo(tmp_path_factory) -> tuple[Path, str]:
    """(store, stdout) of `sslprune-run` with SHORT_DEMO, run once per session."""
    store = tmp_path_factory.mktemp("demo") / "store"
    return store, cli("sslprune-run", f"store={store}", *SHORT_DEMO).stdout


# ---------------------------------------------------------------- Fashion-MNIST, as the cluster comes

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"


def fashion_mnist_root() -> Path:
    """Where the tests look for Fashion-MNIST: Debian's package, or SSLPRUNE_FASHION_MNIST_ROOT
    (a CI step points it at an empty folder to play a machine without the package)."""
    return Path(os.environ.get("SSLPRUNE_FASHION_MNIST_ROOT") or catalog.FASHION_MNIST_DEBIAN)


def _fashion_mnist_there(root: Path) -> bool:
    return all(catalog.find_idx(root, n) is not None for n in catalog.FASHION_MNIST_FILES)


def _apt_install(package: str) -> str:
    """apt-get install `package` (after apt-get update if the lists do not know it); '' when
    installed, else apt's last line. --reinstall: also when dpkg has it but its files are gone."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = ""
    for update in (False, True):
        if update:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env, timeout=600)
        p = subprocess.run(["apt-get", "install", "-y", "-qq", "--reinstall", package], capture_output=True,
                           text=True, env=env, timeout=600)
        if p.returncode == 0:
            return ""
        out = (p.stderr.strip() or p.stdout.strip() or f"exit {p.returncode}").splitlines()[-1]
    return out


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """The Fashion-MNIST root for the tests that need the real files: installed with apt-get when
    missing from Debian's place and this is root with apt (as tests/test_slurm.py's fixture starts
    the cluster), else those tests skip naming the package."""
    root = fashion_mnist_root()
    if _fashion_mnist_there(root):
        return root
    debian = root == Path(catalog.FASHION_MNIST_DEBIAN)
    if debian and os.geteuid() == 0 and shutil.which("apt-get"):
        error = _apt_install(FASHION_MNIST_PACKAGE) or "its files are still missing"
        if _fashion_mnist_there(root):
            return root
        pytest.skip(f"Fashion-MNIST not in {root}: apt-get install {FASHION_MNIST_PACKAGE} failed: {error}")
    how = f"install Debian's package {FASHION_MNIST_PACKAGE}" if debian else \
        f"SSLPRUNE_FASHION_MNIST_ROOT={root} does not hold it; unset it and install Debian's package " \
        f"{FASHION_MNIST_PACKAGE}"
    pytest.skip(f"Fashion-MNIST not in {root}: {how}")


def fashion_mnist_configs(cfg) -> list:
    """Every DataConfig named fashion_mnist inside a composed Config (dataclasses, lists, dicts)."""
    import dataclasses

    from sslprune.core.schema import DataConfig

    found, seen = [], set()

    def walk(x):
        if id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, DataConfig):
            if x.name == "fashion_mnist":
                found.append(x)
        elif dataclasses.is_dataclass(x):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name))
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)

    walk(cfg)
    return found


def cluster_start_lock():
    """One `slurm/*-cluster.sh start` at a time on this machine: the tiers run on two xdist workers,
    each with its own session fixtures, and two starts at once race over the daemons' pid files."""
    import tempfile

    from filelock import FileLock

    return FileLock(os.path.join(tempfile.gettempdir(), "sslprune-cluster-start.lock"))


def wait_for(predicate, timeout: float, what: str, every: float = 1.0, queue=None):
    """Poll `predicate` until it returns something true (returned) or `timeout` s pass; the failure
    names `what` and shows the queue (`queue()`: squeue's output; by default this machine's cluster)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    shown = queue() if queue else subprocess.run(["squeue"], capture_output=True, text=True).stdout
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{shown}")

