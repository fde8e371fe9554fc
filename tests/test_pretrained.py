"""Pruning a pretrained network (issue 23): `model.weights=<file>` in every common layout, written here
from torchvision's ResNet-50 and a small network with random weights, loads tensor for tensor; bad
files are one line; a crafted pickle runs nothing; the file's sha256 is chain identity; a short
chain runs from a loaded file."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest

from sslprune import api
from sslprune.core.errors import ConfigError
from sslprune.core.identity import chain_digest, chain_identity
from sslprune.core.schema import ModelConfig
from sslprune.core.stage import Retrain

# torch, torchvision and the compute plane are imported by the first test, not at collection (issue
# 21: collection imports no torch; it was 2 s of the default tier's 6 s collection).
torch = torchvision = checkpoint = models = pretrained = None


@pytest.fixture(autouse=True, scope="module")
def _heavy_imports():
    global torch, torchvision, checkpoint, models, pretrained
    import torch
    import torchvision

    from sslprune.compute import checkpoint, model as models, pretrained


def _head(state: dict, features: int) -> dict:
    """A projection head of the kind each method keeps beside its encoder (ignored when loading)."""
    return {"fc.0.weight": torch.randn(8, features), "fc.0.bias": torch.randn(8), "fc.2.weight": torch.randn(4, 8)}


def _prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


# layout name -> (backbone state, features) -> what the method's own code saves
LAYOUTS = {
    "torchvision": lambda s, f: {**s, "fc.weight": torch.randn(10, f), "fc.bias": torch.randn(10)},
    "timm": lambda s, f: {"epoch": 3, "arch": "resnet50", "state_dict": {**s, "fc.weight": torch.randn(10, f)},
                          "optimizer": {"state": {}, "param_groups": []}},
    "mocov1": lambda s, f: {"epoch": 200, "arch": "resnet50", "state_dict": {
        **_prefixed("module.encoder_q.", {**s, "fc.weight": torch.randn(4, f), "fc.bias": torch.randn(4)}),
        **_prefixed("module.encoder_k.", {k: v + 1 for k, v in list(s.items())[:3]}),
        "module.queue": torch.randn(4, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}},
    "mocov2": lambda s, f: {"epoch": 800, "state_dict": {
        **_prefixed("module.encoder_q.", {**s, **_head(s, f)}),
        **_prefixed("module.encoder_k.", {k: v + 1 for k, v in list(s.items())[:3]}),
        "module.queue": torch.randn(4, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}},
    "mocov3": lambda s, f: {"epoch": 300, "state_dict": {
        **_prefixed("module.base_encoder.", {**s, **_head(s, f)}),
        **_prefixed("module.momentum_encoder.", {k: v + 1 for k, v in list(s.items())[:3]}),
        "module.predictor.0.weight": torch.randn(4, 4)}},
    "dino": lambda s, f: {"epoch": 100,
                          "teacher": {**_prefixed("backbone.", s), "head.mlp.0.weight": torch.randn(8, f)},
                          "student": {**_prefixed("module.backbone.", {k: v + 1 for k, v in s.items()}),
                                      "module.head.mlp.0.weight": torch.randn(8, f)}},
    "vissl": lambda s, f: {"phase_idx": 3, "classy_state_dict": {"base_model": {"model": {
        "trunk": _prefixed("_feature_blocks.", s), "heads": {"0.clf.0.weight": torch.randn(4, f)}}}}},
    "swav": lambda s, f: {**_prefixed("module.", s), "module.projection_head.0.weight": torch.randn(8, f),
                          "module.prototypes.weight": torch.randn(16, 8)},
    "simclr": lambda s, f: {"epoch": 100,
                            "state_dict": {**_prefixed("module.", s), "module.fc.weight": torch.randn(4, f)}},
}
# What the report says of each: (entry, prefix, ignored heads, other parts ignored)
MAPPINGS = {
    "torchvision": ("", "", {"fc": 2}, {}),
    "timm": ("state_dict", "", {"fc": 1}, {}),
    "mocov1": ("state_dict", "module.encoder_q.", {"fc": 2}, {"module.encoder_k": 3, "module.queue": 1,
                                                              "module.queue_ptr": 1}),
    "mocov2": ("state_dict", "module.encoder_q.", {"fc": 3}, {"module.encoder_k": 3, "module.queue": 1,
                                                              "module.queue_ptr": 1}),
    "mocov3": ("state_dict", "module.base_encoder.", {"fc": 3}, {"module.momentum_encoder": 3, "module.predictor": 1}),
    "dino": ("teacher", "backbone.", {}, {"head.mlp": 1}),
    "vissl": ("classy_state_dict.base_model.model.trunk", "_feature_blocks.", {}, {}),
    "swav": ("", "module.", {"projection_head": 1, "prototypes": 1}, {}),
    "simclr": ("state_dict", "module.", {"fc": 1}, {}),
}


@pytest.fixture(scope="module")
def resnet50():
    """torchvision's ResNet-50 with random weights (its state dict without fc), and sslprune's resnet50
    network to load it into (built once: both take a second or two)."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    for name, b in tv.named_buffers():  # batch-norm statistics other than the defaults, so loading them shows
        if b.is_floating_point():
            b.copy_(torch.rand_like(b) + 0.5)
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    return state, 2048, models.build(ModelConfig("resnet50", width=64), 3, 10, 1)


@pytest.fixture(scope="module")
def small():
    net = models.build(ModelConfig("resnet_small", width=8), 1, 10, 7)
    with torch.no_grad():
        for b in net.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand_like(b) + 0.5)
    return {k: v.clone() for k, v in net.backbone.state_dict().items()}, 32, \
        models.build(ModelConfig("resnet_small", width=8), 1, 4, 2)


def _zero(net):
    with torch.no_grad():
        for t in net.backbone.state_dict().values():
            t.zero_()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_of_resnet50_loads_the_saved_tensors_exactly(layout, resnet50, tmp_path):
    _loads_exactly(layout, resnet50, tmp_path, "net.")  # sslprune's resnet50 keeps torchvision's network as `net`


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_of_a_small_network_loads_the_saved_tensors_exactly(layout, small, tmp_path):
    _loads_exactly(layout, small, tmp_path, "")


def _loads_exactly(layout, network, tmp_path, inner):
    state, features, net = network
    path = tmp_path / f"{layout}.pth"
    torch.save(LAYOUTS[layout](state, features), path)
    _zero(net)  # whatever the network held before: every backbone tensor must come from the file
    m = pretrained.load(str(path), None, net.backbone)
    mine = net.backbone.state_dict()
    assert sorted(mine) == sorted(inner + k for k in state)
    for k, v in state.items():
        assert mine[inner + k].dtype == v.dtype and torch.equal(mine[inner + k], v), k
    s = m.summary()
    assert (s["entry"] or "", s["prefix"], s["ignored_heads"], s["ignored_other"]) == MAPPINGS[layout]
    assert (s["matched"], s["kept_as_built"]) == (len(state), 0)


def test_dino_student_is_read_when_named(small, tmp_path):
    state, features, net = small
    path = tmp_path / "dino.pth"
    torch.save(LAYOUTS["dino"](state, features), path)
    m = pretrained.load(str(path), "student", net.backbone)
    assert (m.entry, m.prefix) == ("student", "module.backbone.")
    mine = net.backbone.state_dict()
    assert all(torch.equal(mine[k], v + 1) for k, v in state.items())
    with pytest.raises(ConfigError) as e:
        pretrained.load(str(path), "ema", net.backbone)
    assert str(e.value) == f"model.weights_key=ema: {path} has no entry 'ema' (its entries: epoch, teacher, student)"


def test_a_port_without_batch_norm_counters_keeps_the_built_ones(small, tmp_path):
    state, features, net = small
    path = tmp_path / "port.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    m = pretrained.load(str(path), None, net.backbone)
    assert m.summary()["kept_as_built"] == sum(k.endswith("num_batches_tracked") for k in state) > 0


def test_a_mismatch_is_one_line_naming_the_file_and_the_first_unmatched_names(small, tmp_path):
    state, features, net = small
    path = tmp_path / "other.pth"
    bad = dict(state)
    bad["layers.1.conv3.weight"] = torch.zeros(1)  # a layer the network does not have
    for k in ("layers.2.bn2.running_var", "layers.2.bn2.weight"):
        del bad[k]
    torch.save({"state_dict": _prefixed("module.encoder_q.", bad)}, path)
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    with pytest.raises(ConfigError) as e:
        pretrained.load(str(path), None, net.backbone)
    assert str(e.value) == (
        f"model.weights={path} does not fit the network: 1 names of the file match no backbone tensor (prefix "
        "'module.encoder_q.'): module.encoder_q.layers.1.conv3.weight; 2 backbone tensors are not in the file: "
        "layers.2.bn2.weight, layers.2.bn2.running_var")
    assert all(torch.equal(before[k], v) for k, v in net.backbone.state_dict().items())  # untouched
    wide = models.build(ModelConfig("resnet_small", width=16), 1, 4, 2)
    torch.save(wide.backbone.state_dict(), path)
    with pytest.raises(ConfigError) as e:
        pretrained.load(str(path), None, net.backbone)
    assert str(e.value) == (
        f"model.weights={path}: 45 tensors differ in shape from the network's: stem.0.weight is (16, 1, 3, 3), the "
        "network's stem.0.weight (8, 1, 3, 3); stem.1.weight is (16,), the network's stem.1.weight (8,); stem.1.bias "
        "is (16,), the network's stem.1.bias (8,); stem.1.running_mean is (16,), the network's stem.1.running_mean "
        "(8,); stem.1.running_var is (16,), the network's stem.1.running_var (8,) ...")


def test_a_local_run_refuses_a_file_that_does_not_fit_before_any_stage_runs(small, tmp_path, capsys):
    state, _, _ = small
    path = tmp_path / "wide.pth"
    torch.save(models.build(ModelConfig("resnet_small", width=16), 1, 4, 2).backbone.state_dict(), path)
    cfg = _config(tmp_path, f"model.weights={path}", "retrain.schemes=[random_reinit]")
    with pytest.raises(ConfigError, match=rf"^model.weights={path}: 45 tensors differ in shape from the network's: "):
        api.run(cfg)
    assert "stages" not in capsys.readouterr().out  # refused before the run's first line
    store = tmp_path / "store"
    assert not (store / "imp").exists() and not (store / "dense").exists()


class Crafted:
    """A pickle whose loading would create a file (what a malicious checkpoint does with os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_crafted_pickle_runs_nothing_and_is_not_a_checkpoint(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    obj = {"state_dict": {"conv1.weight": Crafted(marker)}}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))  # a plain pickle file, as torch's legacy format
    assert not marker.exists()
    cfg = _config(tmp_path, f"model.weights={path}")  # the control plane only sees a readable file
    stage = api.stage(cfg, "imp labels seed=0 level=0")
    with pytest.raises(ConfigError) as e:
        api.compute(stage)
    assert str(e.value) == (f"model.weights={path} is not a checkpoint: it holds objects other than tensors and "
                            "numbers (read with weights_only=True, nothing in it was run)")
    assert not marker.exists()
    assert not stage.dir.exists()  # refused before the stage's folder was made


def test_a_file_that_is_not_a_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not weights\n")
    with pytest.raises(ConfigError) as e:
        pretrained.read(str(path))
    assert str(e.value) == f"model.weights={path} is not a checkpoint (not a whole torch file: truncated or overwritten)"


SHORT = ("seeds=[0]", "prune.levels=1", "~signals.rotnet", "retrain.schemes=[]", "probe.signals=[]",
         "data.train_limit=256", "data.test_limit=128", "wandb.mode=disabled", "run.workers=1")


def _config(tmp_path, *overrides):
    return api.config("demo", *SHORT, *overrides, store=tmp_path / "store")


def cfg_overrides(path):
    return (*SHORT, f"model.weights={path}", "prune.rewinds=[0it,2it]")


@pytest.mark.parametrize("value, message", [
    ("{}/missing.pth", "model.weights={}/missing.pth: no such file"),
    ("{}", "model.weights={}: not a regular file"),
])
def test_a_missing_file_is_one_line_before_any_work(tmp_path, value, message):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, f"model.weights={value.format(tmp_path)}")
    assert str(e.value) == message.format(tmp_path)
    assert not (tmp_path / "store").exists()
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, "model.weights_key=teacher")
    assert str(e.value) == "model.weights_key='teacher' without model.weights: it names an entry of that file"


def test_the_files_sha256_is_chain_identity_and_its_path_is_not(small, tmp_path):
    state, _, _ = small
    a, b = tmp_path / "a.pth", tmp_path / "copy" / "b.pth"
    torch.save(state, a)
    b.parent.mkdir()
    shutil.copy(a, b)
    plain = _config(tmp_path)
    assert "weights" not in chain_identity(plain, "labels")  # unset: left out, every old name stays
    first = _config(tmp_path, f"model.weights={a}")
    assert chain_identity(first, "labels")["weights"] == {"sha256": checkpoint_sha(a)}
    assert chain_identity(first, "labels")["model"] == chain_identity(plain, "labels")["model"]
    assert chain_digest(first, "labels") != chain_digest(plain, "labels")
    assert chain_digest(_config(tmp_path, f"model.weights={b}"), "labels") == chain_digest(first, "labels")
    torch.save({k: v + 1 for k, v in state.items()}, a)  # the same file, other weights: a new directory
    changed = _config(tmp_path, f"model.weights={a}")
    assert chain_digest(changed, "labels") not in (chain_digest(first, "labels"), chain_digest(plain, "labels"))
    keyed = _config(tmp_path, f"model.weights={a}", "model.weights_key=state_dict")
    assert chain_identity(keyed, "labels")["weights"] == {"sha256": checkpoint_sha(a), "key": "state_dict"}
    # What never reads the file (the dense and random re-training starts) keeps its directory.
    for scheme, level in (("random_reinit", 0), ("random", 1)):
        assert Retrain(changed, "labels", 0, level, scheme).dir == Retrain(plain, "labels", 0, level, scheme).dir


def checkpoint_sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_short_chain_from_a_loaded_file(small, tmp_path):
    """Level 0 is the file's network (not trained); rewinding goes to it (0it) or to k updates after it
    (2it, saved by level 0, which trains only that far); level 1 prunes the loaded magnitudes."""
    state, features, _ = small
    path = tmp_path / "moco.pth"
    torch.save(LAYOUTS["mocov2"](state, features), path)
    cfg = api.config("demo", *cfg_overrides(path), store=tmp_path / "store")
    assert api.run(cfg) == 4
    for rewind in ("0it", "2it"):
        level0 = api.where(cfg, f"imp labels@{rewind} seed=0 level=0")
        model = checkpoint.load(level0 / "model.pt")
        assert all(torch.equal(model[f"backbone.{k}"], v) for k, v in state.items())  # W_0: the file's network
        rewound = checkpoint.load(level0 / "rewind.pt")
        same = all(torch.equal(rewound["model"][k], model[k]) for k in model)
        assert (rewound["step"], same) == ((0, True) if rewind == "0it" else (2, False))
        result = json.loads((level0 / "result.json").read_text())
        assert (result["steps"], result["end_step"], result["remaining"]) == (16, int(rewind[0]), 1.0)
        assert result["pretrained"] == {"file": str(path), "entry": "state_dict", "prefix": "module.encoder_q.",
                                        "matched": len(state), "ignored_heads": {"fc": 3},
                                        "ignored_other": {"module.encoder_k": 3, "module.queue": 1,
                                                          "module.queue_ptr": 1}, "kept_as_built": 0}
        level1 = api.where(cfg, f"imp labels@{rewind} seed=0 level=1")
        mask = checkpoint.load(level1 / "mask.pt")
        # Level 1's mask is the loaded network's magnitudes: the 20 % smallest of the file's weights go.
        expected = _magnitude({k: state[k[len("backbone."):]] for k in mask}, 0.2)
        assert all(torch.equal(mask[k], expected[k]) for k in mask)
        l1 = json.loads((level1 / "result.json").read_text())
        assert (l1["start_step"], l1["steps"]) == (int(rewind[0]), 16)
    # Level 0 stopped part-way to k and run again continues to the same W_k and keeps W_0 as its result.
    from sslprune.compute import runner
    from sslprune.core.errors import Interrupted

    again = api.config("demo", *[o for o in cfg_overrides(path)], store=tmp_path / "again")
    stage = api.stage(again, "imp labels@2it seed=0 level=0")
    polls = iter([False, True])
    with pytest.raises(Interrupted):
        runner.run(stage, interrupt=lambda: next(polls))
    assert checkpoint.load(stage.dir / "checkpoint.pt", verify=False)["step"] == 1
    assert not (stage.dir / "rewind.pt").exists()
    runner.run(stage)
    first = api.where(cfg, "imp labels@2it seed=0 level=0")
    for name in ("model.pt", "rewind.pt", "mask.pt"):
        assert (stage.dir / name).read_bytes() == (first / name).read_bytes(), name
    rows = (tmp_path / "store" / "reports" / "demo" / "results.csv").read_text().splitlines()
    assert sorted(r.split(",")[1] + " " + r.split(",")[6] for r in rows[1:]) == [
        "labels@0it 0", "labels@0it 1", "labels@2it 0", "labels@2it 1"]


def _magnitude(weights: dict, rate: float) -> dict:
    from sslprune.compute import mask as masks

    return masks.magnitude({f"{k}": v for k, v in weights.items()}, {k: torch.ones_like(v) for k, v in weights.items()},
                           rate)


def test_a_preset_names_a_pretrained_file_relative_to_where_it_runs(small, tmp_path, monkeypatch):
    state, _, _ = small
    torch.save(state, tmp_path / "mine.pth")
    folder = tmp_path / "conf" / "experiment"
    folder.mkdir(parents=True)
    demo = (Path(api.__file__).parents[1] / "conf" / "experiment" / "demo.yaml").read_text()
    (folder / "from_file.yaml").write_text(demo.replace("experiment: demo", "experiment: from_file") +
                                           "model:\n  weights: mine.pth\n")
    monkeypatch.chdir(tmp_path)
    cfg = api.config("from_file", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", store=tmp_path / "store")
    assert (cfg.experiment, cfg.model.weights) == ("from_file", str(tmp_path / "mine.pth"))  # absolute: jobs read it
    assert chain_identity(cfg, "rotnet")["weights"] == {"sha256": checkpoint_sha(tmp_path / "mine.pth")}


def test_the_start_records_of_a_pretrained_chain(small, tmp_path):
    """What each stage starts from, side by side (sslprune.core.start.table): level 0 loads the file and
    stops at k keeping W_0; level 1 rewinds to level 0's rewind.pt, its mask from level 0's magnitudes."""
    from sslprune.core import start
    from sslprune.core.stage import ImpLevel

    state, _, _ = small
    path = tmp_path / "tv.pth"
    torch.save(state, path)
    cfg = _config(tmp_path, f"model.weights={path}", "prune.rewind=3it")
    rows = start.table([ImpLevel(cfg, "labels", 0, 0), ImpLevel(cfg, "labels", 0, 1)]).splitlines()
    cells = [[c.strip() for c in r.split(" | ")] for r in rows[2:]]  # the mask cell holds |w| bars
    assert [c[1:4] + c[6:7] for c in cells] == [
        ["draw 0/init/labels, pretrained <- " + str(path), "keep", "ones", "from 0, saves k=3it, stops at k, keeps W_0"],
        ["draw 0/init/labels, all <- labels L0 rewind.pt", "keep", "labels L0 mask.pt less 0.2 by |labels L0 model.pt|",
         "from k=3it"]]


@pytest.mark.slow
def test_a_pretrained_chain_through_the_apps_status_figures_and_offline_wandb(small, tmp_path):
    """The apps treat a pretrained start as any chain: sslprune-run with W&B offline draws the
    report's figures, sslprune-status sees it complete, and level 0's W&B run records the file and
    the stage's own accuracy under the stage's run name."""
    import subprocess

    from conftest import cli
    from test_wandb import WANDB, env_for, offline_dirs

    from sslprune.control import dashboard

    state, features, _ = small
    path = tmp_path / "moco.pth"
    torch.save(LAYOUTS["mocov2"](state, features), path)
    args = [f"store={tmp_path / 'store'}", *(o for o in cfg_overrides(path) if o != "wandb.mode=disabled")]
    env = env_for(tmp_path / "home")
    cli("sslprune-run", *args, "wandb=offline", "wandb.system_metrics=false", env=env, timeout=1200)
    assert (tmp_path / "store" / "reports" / "demo" / "accuracy_vs_remaining.png").stat().st_size > 0
    assert json.loads(cli("sslprune-status", *args, "--json").stdout)["complete"]
    cfg = api.config("demo", *cfg_overrides(path), store=tmp_path / "store")
    stage = api.stage(cfg, "imp labels@0it seed=0 level=0")
    (run_dir,) = offline_dirs(Path(stage.dir))
    got = json.loads(subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)], env=env,
                                    capture_output=True, text=True, timeout=60, check=True, cwd=env["HOME"]).stdout)
    assert got["state"] == "finished" and got["name"] == dashboard.run_name(stage)
    assert got["config"]["model"]["weights"] == str(path)
    assert got["summary"]["accuracy"] == stage.result()["accuracy"]
