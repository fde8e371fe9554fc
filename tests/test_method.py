"""The method's meaning: exact rotations, the density law, what is never pruned, rewinding, the three starts."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from sslprune.core import store as files
from sslprune.core.progress import Progress
from sslprune.core.schema import ModelConfig, RunConfig
from sslprune.core.stage import ImpLevel, Probe, Retrain

from conftest import tiny_config, tiny_optim


def test_rotnet_uses_exact_quarter_turns():
    import torch
    from sslprune.compute import task as tasks

    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    y = torch.tensor([7, 8])
    xr, target = tasks.RotNet().prepare(x, y)
    assert xr.shape == (8, 1, 3, 3)
    assert target.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        for i in range(2):
            expected = np.rot90(x[i, 0].numpy(), k)  # counter-clockwise quarter turns, pixel-exact
            assert np.array_equal(xr[k * 2 + i, 0].numpy(), expected)
    # A 90-degree turn moves the top-right pixel to the top-left: no interpolation, no random angle.
    assert xr[2, 0, 0, 0] == x[0, 0, 0, 2]
    # Four turns of any image are a permutation of its pixels.
    assert torch.equal(torch.sort(xr[6].flatten()).values, torch.sort(x[0].flatten()).values)


def test_labels_task_is_identity():
    import torch
    from sslprune.compute import task as tasks

    x, y = torch.randn(3, 1, 4, 4), torch.tensor([1, 2, 3])
    xo, yo = tasks.Labels(10).prepare(x, y)
    assert xo is x and yo is y


def _net(width=4, outputs=10):
    from sslprune.compute import model as models

    return models.build(ModelConfig("resnet_small", width), 1, outputs, seed=0)


def test_head_and_batchnorm_are_never_prunable():
    import torch
    from sslprune.compute import mask as masks

    net = _net()
    names = masks.prunable(net)
    params = dict(net.named_parameters())
    assert names and all(params[n].dim() > 1 for n in names)  # conv/linear weights only: no BN, no bias
    assert not any(n.startswith("head.") for n in names)
    assert all(n.startswith("backbone.") for n in names)
    bn = [n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and not any(n.startswith(b + ".") for b in bn for n in names)
    # `ignore` removes more layers (by name prefix).
    fewer = masks.prunable(net, ignore=["backbone.stem."])
    assert "backbone.stem.0.weight" in names and "backbone.stem.0.weight" not in fewer


def test_magnitude_pruning_density_law_and_nesting():
    import torch
    from sslprune.compute import mask as masks

    net = _net(width=8)
    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    m = masks.ones(net)
    _, total = masks.count(m)
    kept_expected = total
    for level in range(1, 21):
        new = masks.magnitude(weights, m, 0.2)
        kept_expected -= math.ceil(0.2 * kept_expected)
        assert masks.count(new)[0] == kept_expected
        assert abs(masks.density(new) - 0.8 ** level) < level / total + 1e-12  # 0.8^L up to rounding
        assert masks.is_nested(new, m)
        # Survivors are exactly the largest-magnitude weights among the previous survivors.
        flat_w = torch.cat([weights[n].abs().flatten() for n in m])
        flat_new = torch.cat([new[n].flatten() for n in m]).bool()
        flat_old = torch.cat([m[n].flatten() for n in m]).bool()
        assert flat_w[flat_new].min() >= flat_w[flat_old & ~flat_new].max()
        m = new


def test_drawn_mask_keeps_imps_count_but_moves_weights():
    import torch
    from sslprune.compute import mask as masks

    net = _net(width=8)
    weights = {k: v.detach() for k, v in net.state_dict().items()}
    m = masks.ones(net)
    total = masks.count(m)[1]
    for level in range(1, 6):  # the random baseline's count is IMP's at every level, whatever the weights
        m = masks.magnitude(weights, m, 0.2)
        assert masks.survivors(total, 0.2, level) == masks.count(m)[0]
    r = masks.drawn(masks.ones(net), masks.count(m)[0], torch.Generator().manual_seed(0))
    assert masks.count(r) == masks.count(m)
    assert any(not torch.equal(r[n], m[n]) for n in m)
    assert set(r) == set(m) and all(r[n].shape == m[n].shape for n in m)
    again = masks.drawn(masks.ones(net), masks.count(m)[0], torch.Generator().manual_seed(0))
    assert all(torch.equal(r[n], again[n]) for n in r)  # a function of the count and the draw alone


def test_applier_zeroes_pruned_weights_in_place():
    import torch
    from sslprune.compute import mask as masks

    net = _net()
    weights = {k: v.detach() for k, v in net.state_dict().items()}
    m = masks.magnitude(weights, masks.ones(net), 0.7)
    masks.Applier(net, m)()
    params = dict(net.named_parameters())
    for n, mk in m.items():
        assert torch.all(params[n][mk == 0] == 0)
        assert torch.all(params[n][mk == 1] != 0)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A labels IMP chain of 3 levels with constant lr (so the first epoch does not depend on the length)."""
    from sslprune.compute import runner

    from sslprune.compute.runtime import local

    store = tmp_path_factory.mktemp("chain") / "store"
    cfg = tiny_config(store)
    cfg.signals["labels"].optim = tiny_optim(epochs=2)
    cfg.prune = replace(cfg.prune, rewind="1ep", levels=2)
    rt = local(cfg.run)
    for level in range(3):
        runner.run(ImpLevel(cfg, "labels", 0, level), rt)
    return cfg, rt


def test_chain_masks_follow_density_law_and_nest(chain):
    import torch
    from sslprune.compute import checkpoint, mask as masks

    cfg, _ = chain
    prev = None
    for level in range(3):
        d = ImpLevel(cfg, "labels", 0, level).dir
        m = checkpoint.load(d / "mask.pt")
        report = files.read_json(d / "sparsity_report.json")
        assert report["global"]["density"] == pytest.approx(masks.density(m))
        assert abs(masks.density(m) - 0.8 ** level) < 2 * level / report["global"]["total"] + 1e-12
        assert files.read_json(d / "result.json")["remaining"] == pytest.approx(masks.density(m))
        trained = checkpoint.load(d / "model.pt")
        for n, mk in m.items():
            assert torch.all(trained[n][mk == 0] == 0), f"{n} has pruned weights that are not zero"
        assert not any(n.startswith("head.") for n in m)
        if prev is not None:
            assert masks.is_nested(m, prev)
        prev = m


def test_rewind_point_holds_the_weights_after_k_updates(chain, tmp_path):
    from sslprune.compute import runner

    import torch
    from sslprune.compute import checkpoint
    from sslprune.compute import dataset

    cfg, rt = chain
    rewind = checkpoint.load(ImpLevel(cfg, "labels", 0, 0).rewind_file())
    # An independent run trained for exactly one epoch (same seed, constant lr) ends at W_k.
    one = tiny_config(tmp_path / "one")
    one.signals["labels"].optim = tiny_optim(epochs=1)
    one.prune = replace(one.prune, rewind="1ep", levels=0)
    runner.run(ImpLevel(one, "labels", 0, 0), rt)
    w_k = checkpoint.load(ImpLevel(one, "labels", 0, 0).dir / "model.pt")
    spe = len(dataset.load(cfg.data).train.labels) // 128
    assert rewind["step"] == spe
    for k, v in w_k.items():
        assert torch.equal(rewind["model"][k], v), k


def test_level_starts_from_rewound_weights_under_the_new_mask(chain):
    from sslprune.compute import runner

    import torch
    from sslprune.compute import runner
    from sslprune.compute import checkpoint, mask as masks
    from sslprune.compute import loader as loaders

    cfg, rt = chain
    lv = ImpLevel(cfg, "labels", 0, 2)
    setup = runner.prepare(lv, rt)
    rewind = checkpoint.load(lv.rewind_file())["model"]
    parent = ImpLevel(cfg, "labels", 0, 1).dir
    expected_mask = masks.magnitude(checkpoint.load(parent / "model.pt"), checkpoint.load(parent / "mask.pt"), 0.2)
    assert all(torch.equal(setup.mask[n], expected_mask[n]) for n in expected_mask)
    state = setup.net.state_dict()
    assert all(torch.equal(state[k], rewind[k]) for k in rewind)  # every tensor, head and BN included
    # The loop applies the mask on load: W_k under the mask is where training starts.
    masks.Applier(setup.net, setup.mask)()
    params = dict(setup.net.named_parameters())
    for n, mk in setup.mask.items():
        assert torch.equal(params[n].detach(), rewind[n] * mk)
    loader = loaders.make(setup.data, setup.optim.batch_size, 0, rt.device)
    assert runner.first_step(setup.record, loader) == loader.steps_per_epoch  # the schedule resumes at step k


def test_retrain_starts_differ_as_they_should(chain):
    from sslprune.compute import runner

    import torch
    from sslprune.compute import runner
    from sslprune.compute import checkpoint, mask as masks

    cfg, rt = chain
    imp = ImpLevel(cfg, "labels", 0, 2)
    imp_mask = checkpoint.load(imp.dir / "mask.pt")
    rewind = checkpoint.load(imp.rewind_file())["model"]
    wt, ri, rnd = (runner.prepare(Retrain(cfg, "labels", 0, 2, s), rt) for s in ("winning_ticket", "random_reinit", "random"))
    # Winning ticket and random re-init: the same mask as IMP, different weights.
    for n in imp_mask:
        assert torch.equal(wt.mask[n], imp_mask[n]) and torch.equal(ri.mask[n], imp_mask[n])
    wt_state, ri_state, rnd_state = wt.net.state_dict(), ri.net.state_dict(), rnd.net.state_dict()
    backbone = [k for k in rewind if k.startswith("backbone.") and rewind[k].is_floating_point()]
    assert all(torch.equal(wt_state[k], rewind[k]) for k in backbone)
    assert any(not torch.equal(ri_state[k], rewind[k]) for k in backbone)
    # A fresh label head on the winning ticket.
    assert wt_state["head.weight"].shape == (10, wt.net.backbone.out_features)
    # Random: same global density, a different mask, the same fresh weights as random re-init.
    assert masks.count(rnd.mask) == masks.count(imp_mask)
    assert any(not torch.equal(rnd.mask[n], imp_mask[n]) for n in imp_mask)
    assert all(torch.equal(rnd_state[k], ri_state[k]) for k in ri_state)


def test_probe_keeps_backbone_frozen_and_in_eval_mode(chain, tmp_path):
    from sslprune.compute import runner

    import torch
    from sslprune.compute import runner
    from sslprune.compute.trainer import Fit, fit
    from sslprune.compute import loader as loaders

    cfg, rt = chain
    probe = Probe(cfg, "labels", 0, 1, cfg.retrain.data)
    setup = runner.prepare(probe, rt)
    net = setup.net
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    head_before = net.head.weight.detach().clone()
    loader = loaders.make(setup.data, 128, 0, rt.device)
    job = Fit(model=net, task=setup.task, loader=loader, optim=tiny_optim(epochs=1), mask={},
              checkpoint=tmp_path / "ckpt.pt", params=net.head.parameters())
    fit(job, RunConfig(quiet=True), Progress("t", quiet=True))
    assert not net.backbone.training and net.training
    after = net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running statistics
    assert not torch.equal(head_before, net.head.weight)
    # The stage itself checks the same and records an accuracy of the label head.
    result = runner.run(probe, rt)
    assert result["evaluation"] == "probe:digits" and 0.1 < result["accuracy"] <= 1.0


def test_rewind_units_convert_to_updates():
    from sslprune.core.errors import ConfigError
    from sslprune.core.rewind import rewind_steps

    spe, batch, total = 834, 1536, 90 * 834  # ImageNet at batch 1536: 834 updates per epoch
    assert rewind_steps("3ep", spe, batch, total) == 2502
    assert rewind_steps("3840000sa", spe, batch, total) == 2500  # 3 x 1.28M samples
    assert rewind_steps("2500it", spe, batch, total) == 2500
    assert rewind_steps("3.3%", spe, batch, total) == int(0.033 * total)
    assert rewind_steps("0it", spe, batch, total) == 0
    with pytest.raises(ConfigError, match="beyond"):
        rewind_steps("91ep", spe, batch, total)


def test_rewind_to_zero_keeps_the_initial_weights(tmp_path):
    from sslprune.compute import runner

    import torch
    from sslprune.compute import runner
    from sslprune.compute import checkpoint
    from sslprune.compute.runtime import local

    cfg = tiny_config(tmp_path / "s")
    cfg.prune = replace(cfg.prune, rewind="0it", levels=0)
    rt = local(cfg.run)
    lv = ImpLevel(cfg, "labels", 0, 0)
    init = runner.prepare(lv, rt).net.state_dict()
    runner.run(lv, rt)
    rewound = checkpoint.load(lv.rewind_file())
    assert rewound["step"] == 0
    assert all(torch.equal(rewound["model"][k], init[k]) for k in init)
    trained = checkpoint.load(lv.dir / "model.pt")
    assert any(not torch.equal(trained[k], init[k]) for k in init)
