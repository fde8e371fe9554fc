"""Your own network, task and data set (issue 23): Hydra `_target_` nodes, the example plugin of
examples/patchpos (found through sys.path in this process, PYTHONPATH in the processes it starts),
identity, the torch-free control plane's checks and the stage's own check of keyword arguments."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslprune import api
from sslprune.core.errors import ConfigError
from sslprune.core.identity import chain_digest, chain_identity
from sslprune.core.schema import DataConfig, ModelConfig, TaskConfig

from conftest import ROOT, cli

PLUGIN = ROOT / "examples" / "patchpos"
SEARCH = "hydra.searchpath=[pkg://patchpos.conf]"
NET = ["model._target_=patchpos.nets.tiny_cnn", "model.name=tiny_cnn", "+model.channels=4"]
TASK = ["+task@signals.patch.task=rotnet", "+optim@signals.patch.optim=demo",
        "signals.patch.task._target_=patchpos.tasks.PatchPosition", "signals.patch.task.name=patch_position"]


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLUGIN), os.environ.get("PYTHONPATH", "")]))


def _config(tmp_path, *overrides):
    return api.config("demo", "seeds=[0]", "prune.levels=1", *overrides, store=tmp_path / "store")


def test_a_target_and_its_keyword_arguments_compose_into_the_typed_config(plugin, tmp_path):
    cfg = _config(tmp_path, *NET, "+model.depth=3", *TASK, "+signals.patch.task.grid=3")
    assert cfg.model == ModelConfig(name="tiny_cnn", width=8, _target_="patchpos.nets.tiny_cnn",
                                    kwargs={"channels": 4, "depth": 3})
    assert cfg.signals["patch"].task == TaskConfig(name="patch_position", _target_="patchpos.tasks.PatchPosition",
                                                   kwargs={"grid": 3})
    # Without a name of its own, a target is named after its last part, not the preset's built-in.
    assert _config(tmp_path, "model._target_=patchpos.nets.tiny_cnn").model.name == "tiny_cnn"
    # The plugin's own experiment file composes the same nodes.
    own = api.config("patch_position", SEARCH, store=tmp_path / "s")
    assert (own.experiment, own.model.kwargs, own.signals["patch"].task.kwargs) == (
        "patch_position", {"channels": 8, "depth": 2}, {"grid": 2})


def test_the_target_path_and_its_arguments_are_chain_identity(plugin, tmp_path):
    base = _config(tmp_path, *NET, *TASK)
    assert chain_identity(base, "patch")["model"] == {"name": "tiny_cnn", "width": 8, "init": "per_signal",
                                                      "_target_": "patchpos.nets.tiny_cnn",
                                                      "kwargs": {"channels": 4}}
    assert chain_identity(base, "patch")["task"] == {"name": "patch_position", "_target_": "patchpos.tasks.PatchPosition"}
    other = _config(tmp_path, *NET[:-1], "+model.channels=5", *TASK)
    assert chain_digest(other, "patch") != chain_digest(base, "patch")
    again = _config(tmp_path, *NET, *TASK)
    assert chain_digest(again, "patch") == chain_digest(base, "patch")
    # A config without targets keeps its name (tests/test_store.py's golden hashes check every field).
    assert chain_digest(_config(tmp_path), "rotnet") == chain_digest(_config(tmp_path, "model._target_=null"), "rotnet")


@pytest.mark.parametrize("override, message", [
    ("model._target_=no_such_lab.nets.build",
     "model._target_=no_such_lab.nets.build: no module 'no_such_lab' is installed (install the package or add it "
     "to PYTHONPATH)"),
    ("model._target_=patchpos.nets.resnet26", "model._target_=patchpos.nets.resnet26: module patchpos.nets ({}) has "
                                              "no attribute 'resnet26'"),
    ("model._target_=patchpos nets", "model._target_='patchpos nets' is not an import path: write "
                                     "package.module.name (e.g. my_lab.nets.build)"),
])
def test_a_target_that_cannot_be_found_is_one_line_naming_key_and_path(plugin, tmp_path, override, message):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, override)
    assert str(e.value) == message.format(PLUGIN / "patchpos" / "nets.py")
    assert not (tmp_path / "store").exists()


def test_keyword_arguments_need_a_target_and_a_target_its_own_name(plugin, tmp_path):
    with pytest.raises(ConfigError) as e:  # no target: a misspelt schema key is still named as one
        api.config("demo", "+model.depth=3")
    assert str(e.value) == "model.depth=3: model has no key 'depth'; did you mean model.width?"
    with pytest.raises(ConfigError, match=r"^model.width='wide' must be an integer$"):
        _config(tmp_path, *NET, "model.width=wide")
    cfg = _config(tmp_path)
    cfg.model = ModelConfig(name="resnet_small", _target_="patchpos.nets.tiny_cnn")  # the Python API names it itself
    from sslprune.core.validation import validate

    with pytest.raises(ConfigError, match=r"^model.name='resnet_small' is a built-in name but model._target_="):
        validate(cfg)


def test_the_control_plane_plans_a_plugin_experiment_without_torch_or_the_plugin(plugin, tmp_path):
    code = f"""
import sys
from sslprune import api
from sslprune.control import experiment
cfg = api.config("patch_position", {SEARCH!r}, "prune.levels=1", store={str(tmp_path / 's')!r})
experiment.check_inputs(cfg)
print(len(api.stages(cfg)), sorted(m for m in ("torch", "patchpos.nets", "patchpos.tasks") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(PLUGIN)})
    assert out.returncode == 0, out.stderr
    # Hydra reads the experiment file from the package patchpos.conf; the modules the targets name
    # (and torch) are imported by no one. The plan: 8 IMP levels, 16 re-training starts (each seed's
    # random start is one network per level for both signals), 6 probes.
    assert out.stdout.split("\n")[0] == "30 []"


def test_a_missing_target_is_refused_by_the_app_before_any_work(tmp_path):
    p = cli("sslprune-run", f"store={tmp_path / 's'}", "model._target_=no_such_lab.nets.build", check=False)
    assert p.returncode == 2
    assert p.stderr == ("sslprune: error: model._target_=no_such_lab.nets.build: no module 'no_such_lab' is "
                        "installed (install the package or add it to PYTHONPATH)\n")
    assert not (tmp_path / "s").exists()


def test_unknown_keyword_arguments_stop_the_stage_before_it_touches_its_folder(plugin, tmp_path):
    from sslprune.compute import runner

    cfg = _config(tmp_path, *NET, "+model.dept=3", "+model.widht=2", *TASK)
    stage = api.stage(cfg, "imp patch seed=0 level=0")
    with pytest.raises(ConfigError) as e:
        runner.run(stage)
    assert str(e.value) == ("model._target_: patchpos.nets.tiny_cnn does not accept dept, widht "
                            "(its keyword arguments: channels, depth)")
    assert not Path(stage.dir).exists() and not (tmp_path / "store").exists()
    cfg = _config(tmp_path, *NET, *TASK, "+signals.patch.task.grids=3")
    with pytest.raises(ConfigError, match=r"^signals.patch.task._target_: patchpos.tasks.PatchPosition does not "
                                          r"accept grids \(its keyword arguments: grid\)$"):
        runner.run(api.stage(cfg, "retrain patch winning_ticket seed=0 level=0"))


def test_a_scope_the_target_network_lacks_stops_the_stage_before_it_touches_its_folder(plugin, tmp_path):
    """A target's cut points are its own (planning cannot know them): a bad prune.scope is one line at the
    stage's start naming the key and the value, not a traceback from inside the built mask."""
    from sslprune.compute import runner

    cfg = _config(tmp_path, *NET, "prune.scope=conv9")
    stage = api.stage(cfg, "imp rotnet seed=0 level=0")
    with pytest.raises(ConfigError) as e:
        runner.run(stage)
    assert str(e.value) == ("prune.scope=conv9 is not a cut point of model._target_=patchpos.nets.tiny_cnn "
                            "(its cut points: all, conv1, conv2)")
    assert not Path(stage.dir).exists() and not (tmp_path / "store").exists()
    cfg = _config(tmp_path, *NET, "+signals.rotnet.scope=conv3", "prune.levels=2")
    with pytest.raises(ConfigError, match=r"^signals.rotnet.scope=conv3 is not a cut point of "):
        runner.run(api.stage(cfg, "retrain random mask up to conv3 seed=0 level=2"))
    runner.check_network(api.stage(_config(tmp_path, *NET, "prune.scope=conv2"), "imp rotnet seed=0 level=0"))
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "plain_nets.py").write_text(
        "from torch import nn\n\n\nclass Flat(nn.Sequential):\n    out_features = 4\n\n"
        "    def __init__(self, in_channels):\n        super().__init__(nn.Flatten(), nn.LazyLinear(4))\n")
    sys.path.insert(0, str(lab))
    try:
        cfg = _config(tmp_path, "model._target_=plain_nets.Flat", "prune.scope=conv1")
        with pytest.raises(ConfigError) as e:
            runner.run(api.stage(cfg, "imp labels seed=0 level=0"))
    finally:
        sys.path.remove(str(lab))
    assert str(e.value) == ("prune.scope=conv1: model._target_=plain_nets.Flat names no cut points (a `cuts` "
                            "attribute, docs/extending.md), so only `all` can be pruned")


def test_builtins_and_the_plugin_meet_the_protocols_through_one_door(plugin):
    import torch

    from sslprune.compute import dataset, model, protocol, task
    from sslprune.compute.model import CifarResNet

    from sslprune.core.schema import MODELS, TASKS

    data = dataset.load(DataConfig(name="digits"))
    assert tuple(model.BUILTIN) == MODELS and tuple(task.BUILTIN) == TASKS  # every built-in name is built here
    for name, path in model.BUILTIN.items():
        assert path == f"sslprune.compute.model.{name}"
        net = model.build(ModelConfig(name=name, width=2), 1, 4, 0)
        assert isinstance(net.backbone, protocol.Backbone) and net.head.out_features == 4
    for name, path in task.BUILTIN.items():
        assert isinstance(task.make(TaskConfig(name, embedding=8, negatives=8), data), protocol.Task), name
    # The built-in door draws the same weights as the class itself under the same seed.
    torch.manual_seed(3)
    direct = CifarResNet(1, [1, 1, 1], [4, 8, 16])
    built = model.build(ModelConfig("resnet_small", 4), 1, 10, 3).backbone
    assert all(torch.equal(a, b) for a, b in zip(direct.state_dict().values(), built.state_dict().values()))
    net = model.build(ModelConfig("tiny_cnn", _target_="patchpos.nets.tiny_cnn", kwargs={"channels": 4, "depth": 3}),
                      1, 4, 0)
    assert isinstance(net.backbone, protocol.Backbone) and net.backbone.out_features == 16
    assert [n for n in model.weights(net)] == ["backbone.features.0.weight", "backbone.features.4.weight",
                                               "backbone.features.8.weight"]
    assert list(model.cut_points(net)) == ["conv1", "conv2", "conv3"]
    pp = task.make(TaskConfig("patch_position", _target_="patchpos.tasks.PatchPosition", kwargs={"grid": 2}), data)
    assert isinstance(pp, protocol.Task) and pp.num_outputs == 4
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    inputs, target = pp.prepare(x, torch.zeros(2, dtype=torch.long))
    assert target.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert inputs[1, 0].tolist() == [[16, 16, 17, 17], [16, 16, 17, 17], [20, 20, 21, 21], [20, 20, 21, 21]]
    assert inputs[7, 0].tolist() == [[26, 26, 27, 27], [26, 26, 27, 27], [30, 30, 31, 31], [30, 30, 31, 31]]


def test_a_data_set_target_is_loaded_with_its_limits_and_checked_by_nothing_else(plugin, tmp_path):
    from sslprune.compute import dataset

    d = dataset.load(DataConfig(name="stripes", _target_="patchpos.data.stripes", kwargs={"n_train": 300},
                                test_limit=50))
    assert (d.name, d.num_classes, tuple(d.train.images.shape), tuple(d.test.images.shape)) == (
        "stripes", 4, (300, 1, 8, 8), (50, 1, 8, 8))
    cfg = _config(tmp_path, "data._target_=patchpos.data.stripes", "data.name=stripes", "+data.n_train=300")
    assert (cfg.data.name, cfg.data.kwargs) == ("stripes", {"n_train": 300})


def test_findings_count_a_target_task_among_the_self_supervised_signals(plugin, tmp_path):
    from sslprune.control.claims import CLAIMS
    from sslprune.control.findings import _Signals

    cfg = _config(tmp_path, *NET, *TASK)
    ssl = next(c for c in CLAIMS if c.key == "ssl_reinit_matches_labels")
    assert _Signals(cfg).subjects(ssl) == ["patch", "rotnet"]
    assert "labels" not in _Signals(cfg).subjects(ssl)


# ---------------------------------------------------------------- the plugin end to end


def _run_args(store: Path, *extra: str) -> list[str]:
    return [SEARCH, "experiment=patch_position", f"store={store}", "seeds=[0]", "prune.levels=1", "run.threads=1",
            "model.channels=4", "retrain.schemes=[winning_ticket]", *extra]


# What the end-to-end test checks (which stages, rows, claims and W&B runs exist, what loads into
# what) does not depend on how long each stage trains: 2 epochs for the pruned signals (rewinding to
# the preset's 1ep comes before their end), 1 for re-training and probes, not the demo's 8 and 10.
SHORT = [*(f"signals.{s}.optim.{o}" for s in ("labels", "patch") for o in ("epochs=2", "milestones=[]")),
         *(f"{k}.optim.{o}" for k in ("retrain", "probe") for o in ("epochs=1", "milestones=[]"))]


@pytest.mark.slow
def test_the_plugin_runs_end_to_end_through_report_findings_and_offline_wandb(plugin, tmp_path):
    from test_wandb import WANDB, env_for, offline_dirs

    from sslprune.control import dashboard

    store = tmp_path / "store"
    env = env_for(tmp_path / "home", PYTHONPATH=str(PLUGIN))
    cli("sslprune-run", *_run_args(store, *SHORT, "wandb=offline", "wandb.system_metrics=false"), env=env,
        timeout=1200)
    out = store / "reports" / "patch_position"
    rows = (out / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    seen = {(r["signal"], r["task"], r["evaluation"], r["level"])
            for r in (dict(zip(header, line.split(","))) for line in rows[1:])}
    assert seen == {(s, t, e, lv) for s, t in (("labels", "labels"), ("patch", "patch_position"))
                    for e in ("pretext", "winning_ticket") for lv in "01"} | {
        ("patch", "patch_position", "probe:digits", lv) for lv in "01"} | {
        ("patch", "patch_position", "probe:digits@init", "0")}, seen
    findings = (out / "findings.md").read_text()
    # A claim about self-supervised signals is tested on the plugin's task, as on RotNet.
    assert "| ssl_ticket_below_labels | patch | winning_ticket |" in findings
    assert "| features_above_random | patch | probe:digits |" in findings
    cfg = api.config("patch_position", SEARCH, *_run_args(store, *SHORT)[2:])
    stage = api.stage(cfg, "imp patch seed=0 level=0")
    (run_dir,) = offline_dirs(Path(stage.dir))
    got = json.loads(subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)], env=env,
                                    capture_output=True, text=True, timeout=60, check=True, cwd=env["HOME"]).stdout)
    assert got["state"] == "finished" and got["name"] == dashboard.run_name(stage)
    assert got["config"]["model"]["_target_"] == "patchpos.nets.tiny_cnn"
    assert got["config"]["model"]["kwargs"] == {"channels": 4, "depth": 2}
    assert got["config"]["signals"]["patch"]["task"]["_target_"] == "patchpos.tasks.PatchPosition"
    assert got["summary"]["accuracy"] == stage.result()["accuracy"]
    status = json.loads(cli("sslprune-status", *_run_args(store, *SHORT), "--json").stdout)
    assert status["complete"]
    # An exported ticket of the plugin's network says what it loads into, and loads into it exactly.
    import torch

    from sslprune.compute import checkpoint, model
    from sslprune.core.schema import ModelConfig  # noqa: F401 (the loads_into expression names it)

    record = api.export(cfg, "patch", seed=0, level=1, out=tmp_path / "export")
    assert record["model"] == {"name": "tiny_cnn", "_target_": "patchpos.nets.tiny_cnn",
                               "kwargs": {"channels": 4, "depth": 2}}
    net = eval(record["loads_into"], {"sslprune": __import__("sslprune.compute.model"), "ModelConfig": ModelConfig})
    state = torch.load(tmp_path / "export" / "model.pt", weights_only=True)
    net.load_state_dict(state)
    stored = checkpoint.load(api.where(cfg, "imp patch seed=0 level=1") / "model.pt")
    assert all(torch.equal(net.state_dict()[k], stored[k]) for k in stored) and isinstance(net, model.Network)


@pytest.mark.slow
def test_a_stage_trains_on_a_data_set_target(plugin, tmp_path):
    cfg = _config(tmp_path, "data._target_=patchpos.data.stripes", "data.name=stripes", "+data.n_train=512",
                  "retrain.data._target_=patchpos.data.stripes", "retrain.data.name=stripes",
                  "signals.labels.optim.epochs=15", "signals.labels.optim.milestones=[]", "model.width=4")
    result = api.run_stage(cfg, "imp labels seed=0 level=0")
    assert result["accuracy"] > 0.5  # 4 stripe orientations: chance is 0.25
    assert chain_identity(cfg, "labels")["data"] == {"name": "stripes", "_target_": "patchpos.data.stripes",
                                                     "kwargs": {"n_train": 512}}


@pytest.mark.slow
def test_the_plugin_installs_as_a_package_and_is_found_there(tmp_path):
    import shutil

    from test_install import _builder

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    src = tmp_path / "src"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    builder, isolation = _builder(env)
    subprocess.run([builder, "-m", "pip", "install", "-q", "--no-deps", *isolation, "--target", tmp_path / "site", src],
                   check=True, env=env, cwd=tmp_path, timeout=600)
    code = f"""
import patchpos
from sslprune import api
from sslprune.compute import dataset, model, task
cfg = api.config("patch_position", {SEARCH!r}, store={str(tmp_path / 'store')!r})
net = model.build(cfg.model, 1, 4, 0)
pp = task.make(cfg.signals["patch"].task, dataset.load(cfg.data))
print(patchpos.__file__, net.backbone.out_features, pp.num_outputs)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**env, "PYTHONPATH": str(tmp_path / "site")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "site" / "patchpos" / "__init__.py"), "16", "4"]


@pytest.mark.slow
def test_a_kill_9_of_the_plugin_stage_resumes_bit_for_bit(plugin, tmp_path):
    import torch

    from sslprune.compute import checkpoint
    from test_store import _kill_when

    def imp(store):
        return ["sslprune-imp", *_run_args(store, "signal=patch", "run.checkpoint_steps=1",
                                           "signals.patch.optim.epochs=4", "signals.patch.optim.milestones=[]",
                                           "prune.rewind=5it")]

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    cli(*imp(ref))
    _kill_when(imp(killed), lambda: any((killed / "imp").glob("*/seed_0/level_0/checkpoint.pt")), 0.5)
    (chain,) = (killed / "imp").iterdir()
    assert not (chain / "seed_0" / "level_1" / "result.json").exists(), "killed too late"
    out = cli(*imp(killed)).stdout
    assert "resumed from" in out
    (ref_chain,) = (ref / "imp").iterdir()
    assert ref_chain.name == chain.name
    for level in (0, 1):
        a, b = ref_chain / "seed_0" / f"level_{level}", chain / "seed_0" / f"level_{level}"
        wa, wb = checkpoint.load(a / "model.pt"), checkpoint.load(b / "model.pt")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        assert json.loads((a / "result.json").read_text())["accuracy"] == json.loads(
            (b / "result.json").read_text())["accuracy"]


@pytest.fixture
def slurm_cluster():
    """The local SLURM cluster (slurm/local-cluster.sh start; tests/test_slurm.py starts it the same way)."""
    p = subprocess.run(["bash", str(ROOT / "slurm" / "local-cluster.sh"), "start"], capture_output=True, text=True,
                       timeout=1200)
    if p.returncode != 0:
        pytest.fail(f"local SLURM cluster did not start:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")


# In seconds (the SLURM tier at load 16 on 2 cores): conftest hands the longest tests out first.
LONGEST = {"test_the_plugin_runs_on_slurm_as_it_runs_locally": 121}


@pytest.mark.slurm
def test_the_plugin_runs_on_slurm_as_it_runs_locally(plugin, slurm_cluster, tmp_path):
    from test_slurm import SLURM, wait_complete

    slurm, local = tmp_path / "slurm", tmp_path / "local"
    setup = f"launcher.setup=['export PYTHONPATH={PLUGIN}']"
    args = _run_args(slurm, "signals.patch.optim.epochs=1", "signals.labels.optim.epochs=1",
                     "signals.patch.optim.milestones=[]", "signals.labels.optim.milestones=[]",
                     "retrain.optim.epochs=1", "retrain.optim.milestones=[]", "probe.optim.epochs=1",
                     "probe.optim.milestones=[]")
    p = cli("sslprune-run", *args, *SLURM, setup)
    assert "submitted" in p.stdout, p.stdout
    # The local reference runs while the jobs wait on one another and on SLURM, not after them.
    local_args = [a if not a.startswith("store=") else f"store={local}" for a in args]
    reference = subprocess.Popen(["sslprune-run", *local_args, "run.workers=1"], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_complete([*args, "launcher=slurm_local"], timeout=900)
    finally:
        out, _ = reference.communicate(timeout=1200)
    assert reference.returncode == 0, out[-3000:]
    cli("sslprune-report", *args)
    assert (slurm / "reports" / "patch_position" / "results.csv").read_text() == (
        local / "reports" / "patch_position" / "results.csv").read_text()
