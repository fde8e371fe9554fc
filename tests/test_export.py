"""Exported tickets (sslprune.compute.export, sslprune-export, api.export): standalone files that
load without the store, into torchvision where the network is torchvision's, and reproduce the
stage's stored accuracy."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from sslprune import api
from sslprune.core.errors import ConfigError
from sslprune.core.schema import ModelConfig

from conftest import cli, tiny_config, tiny_optim


def test_bits_pack_and_unpack_any_shape():
    import torch
    from sslprune.compute import export

    g = torch.Generator().manual_seed(0)
    for shape in [(1,), (7,), (8,), (9,), (3, 5, 3, 3)]:
        m = torch.rand(shape, generator=g) < 0.3
        bits = export.pack(m)
        assert bits.dtype == torch.uint8 and bits.numel() == -(-m.numel() // 8)
        assert torch.equal(export.unpack(bits, list(shape)), m)
    # most significant bit first: 1,0,0,0,0,0,0,1 | 1 -> 0b10000001, 0b10000000
    assert export.pack(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1])).tolist() == [129, 128]


def test_resnet50_export_loads_into_torchvisions_resnet50_and_computes_the_same():
    import torch
    import torchvision
    from sslprune.compute import export, model as models

    net = models.build(ModelConfig(name="resnet50", width=8), 3, 10, 0)
    g = torch.Generator().manual_seed(1)
    mask = {n: (torch.rand(p.shape, generator=g) < 0.2).float() for n, p in net.named_parameters()
            if n in models.weights(net)}
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n in mask:
                p.mul_(mask[n])
    state, bits, loads_into = export.standalone(net.state_dict(), mask, "resnet50", 8)
    assert loads_into == "torchvision.models.resnet50(num_classes=10, width_per_group=8)"
    tv = torchvision.models.resnet50(num_classes=10, width_per_group=8)
    tv.load_state_dict(state)  # strict: every key matches
    x = torch.randn(2, 3, 64, 64, generator=g)
    assert torch.equal(tv.eval()(x), net.eval()(x))
    assert set(bits) == {n[len("backbone.net."):] for n in mask} and "fc.weight" not in bits
    back, back_mask = export.expand(export.compact(state, bits))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    assert all(torch.equal(back_mask[k], bits[k]) for k in bits)


def test_the_other_networks_load_into_the_projects_class_only():
    from sslprune.compute import export, model as models

    for name in ("alexnet", "vgg19", "resnet18_cifar"):
        net = models.build(ModelConfig(name=name, width=8), 3, 10, 0)
        _, _, loads_into = export.standalone(net.state_dict(), {}, name, 8)
        assert loads_into == f"sslprune.compute.model.build(ModelConfig(name={name!r}, width=8), 3, 10, 0)"
    net = models.build(ModelConfig(name="resnet50", width=8), 1, 10, 0)  # a 1-channel stem is not torchvision's
    assert export.standalone(net.state_dict(), {}, "resnet50", 8)[2].startswith("sslprune.compute.model.build(")


# Run in a fresh interpreter with the store moved away: plain torch plus sslprune's network class and
# digits split, no store and no evaluation code of sslprune.
FRESH = r"""
import json, sys, torch
from sslprune.compute import dataset, export, model
from sslprune.core.schema import ModelConfig
torch.set_num_threads(1)
folder = sys.argv[1]
meta = json.load(open(f"{folder}/export.json"))
state = torch.load(f"{folder}/model.pt", weights_only=True)
mask = torch.load(f"{folder}/mask.pt", weights_only=True)
back, back_mask = export.expand(torch.load(f"{folder}/compact.pt", weights_only=True))
net = model.build(ModelConfig(**meta["model"]), meta["in_channels"], meta["num_outputs"], 0)
net.load_state_dict(state)  # strict
_, test = dataset.digits()
x = (test.images.to(torch.float32) / 255 - 0.3) / 0.4  # digits' normalisation (sslprune.compute.dataset)
with torch.no_grad():
    right = int((net.eval()(x).argmax(1) == test.labels).sum())
print(json.dumps({
    "accuracy": right / len(test.labels),
    "pruned_are_zero": all(not bool(state[k][~m].any()) for k, m in mask.items()),
    "kept": sum(int(m.sum()) for m in mask.values()),
    "compact_equal": set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
                     and all(torch.equal(back_mask[k], mask[k]) for k in mask),
}))
"""


@pytest.mark.slow
def test_an_exported_ticket_reproduces_its_accuracy_in_a_fresh_process_without_the_store(tmp_path):
    from sslprune.api import compute, uses_cuda
    from sslprune.control import local

    cfg = tiny_config(tmp_path / "store", signals={"labels": tiny_config(tmp_path).signals["labels"]})
    cfg.prune.levels, cfg.retrain.schemes, cfg.probe.signals = 1, ["winning_ticket"], []
    cfg.signals["labels"].optim = tiny_optim(epochs=3)
    local.run_local(cfg, compute, uses_cuda)
    wanted = {}
    for scheme in (None, "winning_ticket"):
        stage = api.export_stage(cfg, "labels", 0, 1, scheme)
        result = json.loads((stage.dir / "result.json").read_text())
        record = api.export(cfg, "labels", 0, 1, scheme, out=tmp_path / f"ticket_{scheme}")
        assert record["accuracy"] == result["accuracy"] and record["macs"] == result["macs"]
        b = record["bytes"]
        assert record["compact_vs_dense"] == b["compact.pt"] / b["model.pt"] < 1
        wanted[scheme] = result
    shutil.move(tmp_path / "store", tmp_path / "moved")  # the files must stand alone
    for scheme, result in wanted.items():
        p = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / f"ticket_{scheme}")], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
        assert p.returncode == 0, p.stderr[-3000:]
        got = json.loads(p.stdout)
        assert got["accuracy"] == result["accuracy"], scheme  # exactly: the same 359 test digits right
        assert got["pruned_are_zero"] and got["compact_equal"]
        assert got["kept"] == result["prunable_kept"]
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_sslprune_export_names_a_stage_that_is_not_done_or_a_bad_selector(tmp_path):
    store = tmp_path / "store"
    p = cli("sslprune-export", f"store={store}", "signal=rotnet", "seed=0", "level=1", check=False)
    assert p.returncode == 2 and p.stderr.startswith("sslprune: error: imp rotnet seed=0 level=1 is not done:")
    p = cli("sslprune-export", f"store={store}", "signal=rotnte", "level=1", check=False)
    assert p.returncode == 2 and p.stderr.strip() == "sslprune: error: signal='rotnte' is not one of labels, rotnet"
    p = cli("sslprune-export", f"store={store}", "signal=rotnet", check=False)
    assert p.returncode == 2 and "level=<L> is required" in p.stderr
    assert not store.exists()  # nothing written


def test_api_export_rejects_a_level_outside_the_chain(tmp_path):
    cfg = tiny_config(tmp_path / "store")
    with pytest.raises(ConfigError, match=r"level=5 must be an IMP level 0..2 \(prune.levels\)"):
        api.export(cfg, "labels", 0, 5)
    with pytest.raises(ConfigError, match="scheme='lottery' is not one of"):
        api.export(cfg, "labels", 0, 1, "lottery")
