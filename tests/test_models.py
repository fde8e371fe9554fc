"""The architectures, layerwise scope, natural sparsity and the adjusted random baseline."""
from __future__ import annotations

import csv
import math
from dataclasses import replace

import pytest

from sslprune.control.local import run_local
from sslprune.control import naturals
from sslprune.api import compute, uses_cuda
from sslprune.control.local import run_local

from sslprune.core.schema import CUT_POINTS, MODELS, ModelConfig, RetrainConfig, ProbeConfig, DataConfig
from sslprune.core.stage import ImpLevel, Retrain

from conftest import tiny_config, tiny_optim

SMALL = {"resnet_small": 4, "resnet18_cifar": 4, "resnet50": 8, "alexnet": 8, "alexnet_cifar": 8, "vgg19": 4}


def _build(name, width=None, channels=1, outputs=7):
    from sslprune.compute import model as models

    return models.build(ModelConfig(name, width or SMALL[name]), channels, outputs, seed=0)


def _map_into(module: nn.Module, x: torch.Tensor, net: nn.Module) -> tuple:
    """Spatial size of the map entering `module` during a forward pass of `net`."""

    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    net(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_forward_shapes(name, shape):
    import torch

    import torch

    net = _build(name, channels=shape[0])
    x = torch.randn(2, *shape)
    assert net(x).shape == (2, 7)
    assert net.backbone(x).shape == (2, net.backbone.out_features)
    assert net.head.in_features == net.backbone.out_features


def test_published_geometry_at_the_published_input_sizes():
    import torch

    import torch

    alex = _build("alexnet", channels=3).eval()
    assert alex(torch.randn(2, 3, 224, 224)).shape == (2, 7)
    assert _map_into(alex.backbone.pool, torch.randn(1, 3, 224, 224), alex) == (6, 6)  # the 256x6x6 of fc6
    cifar = _build("alexnet_cifar", channels=3).eval()
    assert _map_into(cifar.backbone.pool, torch.randn(1, 3, 32, 32), cifar) == (4, 4)
    vgg = _build("vgg19", channels=3).eval()
    assert _map_into(vgg.backbone.block5, torch.randn(1, 3, 32, 32), vgg) == (2, 2)  # four 2x2 pools


def _layers(net, kind):
    return [m for m in net.backbone.modules() if isinstance(m, kind)]


def test_width_64_is_the_published_network():
    from torch import nn

    from torch import nn
    from sslprune.compute import model as models

    for name in ("alexnet", "alexnet_cifar"):
        net = models.build(ModelConfig(name, 64), 3, 1000, seed=0)
        assert [c.out_channels for c in _layers(net, nn.Conv2d)] == [96, 256, 384, 384, 256]
        fc6, fc7 = _layers(net, nn.Linear)
        assert (fc6.out_features, fc7.in_features, fc7.out_features) == (4096, 4096, 4096)
        assert net.backbone.out_features == 4096 and net.head.weight.shape == (1000, 4096)
        assert len(_layers(net, nn.BatchNorm2d)) == 5 and len(_layers(net, nn.BatchNorm1d)) == 2
    assert _layers(models.build(ModelConfig("alexnet", 64), 3, 10, 0), nn.Linear)[0].in_features == 256 * 6 * 6
    vgg = models.build(ModelConfig("vgg19", 64), 3, 10, seed=0)
    convs = _layers(vgg, nn.Conv2d)
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    assert all(c.kernel_size == (3, 3) for c in convs) and not _layers(vgg, nn.Linear)  # the head is the only FC
    assert vgg.backbone.out_features == 512
    half = models.build(ModelConfig("vgg19", 32), 3, 10, seed=0)
    assert [c.out_channels for c in _layers(half, nn.Conv2d)][-1] == 256  # width scales every layer


@pytest.mark.parametrize("name", MODELS)
def test_cut_points_cover_the_prunable_weights_in_order(name):
    from sslprune.compute import mask as masks, model as models

    net = _build(name)
    points = models.cut_points(net, name)
    assert tuple(points) == CUT_POINTS[name]
    assert all(points.values())
    assert [n for names in points.values() for n in names] == masks.prunable(net)
    assert not any(n.startswith(models.HEAD) for n in masks.prunable(net))
    # Each scope prunes a growing prefix of the network; the last cut is the whole network.
    scoped = [masks.prunable(net, scope=cut) for cut in points]
    assert all(a == b[:len(a)] and len(a) < len(b) for a, b in zip(scoped, scoped[1:]))
    assert scoped[-1] == masks.prunable(net, scope="all")


def test_scope_holds_only_layers_up_to_the_cut():
    import torch

    import torch
    from sslprune.compute import mask as masks, model as models

    net = _build("resnet_small")
    points = models.cut_points(net, "resnet_small")
    m = masks.ones(net, scope="stage1")
    assert list(m) == points["stem"] + points["stage1"]
    with pytest.raises(ValueError, match="stage9"):
        masks.ones(net, scope="stage9")
    # The random control draws within the same layers: same names, same count, other positions.
    weights = {k: v.detach() for k, v in net.state_dict().items()}
    pruned = masks.magnitude(weights, m, 0.5)
    r = masks.drawn(m, masks.count(pruned)[0], torch.Generator().manual_seed(0))
    assert list(r) == list(m) and masks.count(r) == masks.count(pruned)
    assert any(not torch.equal(r[n], pruned[n]) for n in r)


def _chain_cfg(store, name, width, levels, **prune):
    cfg = tiny_config(store, model=ModelConfig(name, width))
    cfg.signals = {"labels": cfg.signals["labels"]}
    cfg.signals["labels"].optim = tiny_optim(epochs=1)
    cfg.signal = "labels"
    cfg.prune = replace(cfg.prune, levels=levels, rewind="3it", **prune)
    return cfg


def test_scoped_imp_prunes_only_the_scope(tmp_path):
    import torch

    import torch
    from sslprune.compute import runner
    from sslprune.compute import checkpoint, mask as masks
    from sslprune.compute.runtime import local

    cfg = _chain_cfg(tmp_path / "s", "resnet_small", 4, 2, scope="stage1")
    rt = local(cfg.run)
    for level in range(3):
        runner.run(ImpLevel(cfg, "labels", 0, level), rt)
    lv = ImpLevel(cfg, "labels", 0, 2)
    net = _build("resnet_small", 4, outputs=10)
    scoped, everything = masks.prunable(net, scope="stage1"), masks.prunable(net)
    m, trained = checkpoint.load(lv.dir / "mask.pt"), checkpoint.load(lv.dir / "model.pt")
    assert list(m) == scoped
    kept, total = masks.count(m)
    assert kept == total - math.ceil(0.2 * total) - math.ceil(0.2 * (total - math.ceil(0.2 * total)))
    assert abs(kept / total - 0.8 ** 2) < 2 / total
    assert lv.result()["remaining"] == pytest.approx(kept / total)
    for n in scoped:
        assert torch.all(trained[n][m[n] == 0] == 0)
    outside = [n for n in everything if n not in m]
    assert outside and all(bool((trained[n] != 0).all()) for n in outside)  # the other layers stay dense
    rnd = runner.prepare(Retrain(cfg, "labels", 0, 2, "random"), rt).mask
    assert list(rnd) == scoped and masks.count(rnd) == (kept, total)


def test_natural_sparsity_counts_exactly():
    import torch

    import torch
    from sslprune.compute import sparsity

    eps = sparsity.ZERO
    assert eps == torch.finfo(torch.float32).eps
    w = {"a.weight": torch.tensor([0.0, 1e-8, -1e-8, eps, -eps / 2, 1.0, 1e5]),
         "b.weight": torch.tensor([[1e-3, 0.0], [2.0, -1e-7]]),
         "c.weight": torch.zeros(5)}  # not named: not counted
    stats = sparsity.natural(w, ["a.weight", "b.weight"])
    assert stats["layers"]["a.weight"] == {"total": 7, "zero": 4, "fraction": 4 / 7}  # eps itself is not < eps
    assert stats["layers"]["b.weight"] == {"total": 4, "zero": 2, "fraction": 0.5}
    assert stats["global"] == {"total": 11, "zero": 6, "fraction": 6 / 11}
    h = sparsity.histogram(w, ["a.weight", "b.weight"], [-9, -6, -3, 0, 3])
    assert h["zeros"] == 2  # exact zeros apart; 1e5 is beyond the last edge and counted in the last bin
    assert h["counts"] == [5, 0, 1, 3] and sum(h["counts"]) + h["zeros"] == 11


def test_sparsity_report_of_a_tiny_run(tmp_path):
    from sslprune.compute import checkpoint, sparsity

    cfg = tiny_config(tmp_path / "s", retrain=RetrainConfig(schemes=[], data=DataConfig("digits"), optim=tiny_optim()),
                      probe=ProbeConfig())
    cfg.prune = replace(cfg.prune, levels=0)
    run_local(cfg, compute, uses_cuda)
    dense = ImpLevel(cfg, "rotnet", 0, 0)
    names = list(checkpoint.load(dense.dir / "mask.pt"))
    state = checkpoint.load(dense.dir / "model.pt")
    cfg.seeds = [0, 1]  # seed 1 never ran: its chains are skipped
    rows = naturals.write(cfg, tmp_path / "out")
    with open(tmp_path / "out" / "natural_sparsity.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == naturals.COLUMNS and len(table) == len(rows) == 2 * (len(names) + 1)
    assert {(r["signal"], r["seed"], r["dataset"]) for r in table} == {("labels", "0", "digits"),
                                                                      ("rotnet", "0", "digits")}
    # The report reads the statistics the stage computed from the weights it trained (weights.json),
    # and they are exactly those of the stored model.pt.
    mine = {r["layer"]: r for r in rows if r["signal"] == "rotnet"}
    stored = sparsity.natural(state, names)["layers"]
    assert {n: {k: mine[n][k] for k in ("total", "zero", "fraction")} for n in names} == stored
    assert mine["global"]["total"] == sum(state[n].numel() for n in names)
    assert mine["global"]["zero"] == sum(mine[n]["zero"] for n in names)
    assert (tmp_path / "out" / "weight_magnitudes.png").stat().st_size > 0


def test_adjusted_random_removes_natural_zeros_first():
    import torch

    import torch
    from sslprune.compute import mask as masks, sparsity

    mask = {"a": torch.ones(10, 6), "b": torch.ones(40)}
    mask["a"][:5] = 0  # 30 + 40 = 70 kept
    trained = {"a": torch.rand(10, 6) + 1, "b": -torch.rand(40) - 1}
    trained["a"][:, :2] = 0.0
    trained["b"][:30] = 1e-9  # 20 + 30 = 50 naturally zero, 50 not
    zero = {n: sparsity.naturally_zero(trained[n]) for n in trained}
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    # Feasible: keep 40 of the 50 non-zero weights, every natural zero pruned.
    small = {"a": torch.zeros(10, 6), "b": torch.ones(40)}
    r = masks.adjusted_random(small, trained, g(0))
    assert masks.count(r) == (40, 100)
    assert all(bool((r[n][zero[n]] == 0).all()) for n in r)
    assert all(torch.equal(r[n], masks.adjusted_random(small, trained, g(0))[n]) for n in r)  # a function of the seed
    assert any(not torch.equal(r[n], masks.adjusted_random(small, trained, g(1))[n]) for n in r)
    # Natural zeros alone remove more than IMP: every non-zero weight kept, 20 zero ones make up the 70.
    r = masks.adjusted_random(mask, trained, g(0))
    assert masks.count(r) == (70, 100)
    assert all(bool((r[n][~zero[n]] == 1).all()) for n in r)
    assert sum(int(r[n][zero[n]].sum()) for n in r) == 20


@pytest.mark.parametrize("name,width", [("vgg19", 4), ("alexnet_cifar", 4)])
def test_imp_chain_on_new_models(tmp_path, name, width):
    import torch

    import torch
    from sslprune.compute import runner
    from sslprune.compute import checkpoint, mask as masks, seed as seeds
    from sslprune.compute.runtime import local

    cfg = _chain_cfg(tmp_path / "s", name, width, 1)
    rt = local(cfg.run)
    for level in range(2):
        result = runner.run(ImpLevel(cfg, "labels", 0, level), rt)
    lv = ImpLevel(cfg, "labels", 0, 1)
    m, trained = checkpoint.load(lv.dir / "mask.pt"), checkpoint.load(lv.dir / "model.pt")
    kept, total = masks.count(m)
    assert kept == total - math.ceil(0.2 * total) and result["remaining"] == pytest.approx(0.8, abs=1 / total)
    assert list(m) == masks.prunable(_build(name, width, outputs=10)) and "head.weight" not in m
    assert all(bool((trained[n][m[n] == 0] == 0).all()) for n in m)
    # The adjusted random start: the IMP mask's count, drawn from level 0's weights with its own seed.
    adjusted = runner.prepare(Retrain(cfg, "labels", 0, 1, "random_adjusted"), rt)
    expected = masks.adjusted_random(m, checkpoint.load(ImpLevel(cfg, "labels", 0, 0).dir / "model.pt"),
                                     seeds.generator(0, "adjusted-mask", 1))
    assert masks.count(adjusted.mask) == (kept, total)
    assert all(torch.equal(adjusted.mask[n], expected[n]) for n in m)
    reinit = runner.prepare(Retrain(cfg, "labels", 0, 1, "random_reinit"), rt).net.state_dict()
    assert all(torch.equal(v, reinit[k]) for k, v in adjusted.net.state_dict().items())  # fresh weights, as random
