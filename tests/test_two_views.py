"""SimCLR, MoCo v2 and BYOL (issue 24): views, losses by their formulas, the momentum target's
update and mask, the queue, the EMA schedule, rewinding and resuming with the whole task state."""
from __future__ import annotations

import dataclasses
import math

import pytest

from sslprune.core.errors import ConfigError
from sslprune.core.progress import Progress
from sslprune.core.schema import RunConfig, SignalConfig, TaskConfig
from sslprune.core.stage import ImpLevel
from sslprune.core.validation import validate_task

from conftest import tiny_config, tiny_optim

SMALL = dict(hidden=32, embedding=16, queue=256, temperature=0.2)  # a tiny head and queue for digits


def _cfg(root, name, epochs=1, **task):
    cfg = tiny_config(root)
    cfg.signals = {name: SignalConfig(TaskConfig(name, **{**SMALL, **task}), tiny_optim(epochs=epochs))}
    cfg.retrain = dataclasses.replace(cfg.retrain, schemes=[])
    cfg.probe = dataclasses.replace(cfg.probe, signals=[])
    return cfg


class _Loader:
    """What bind reads of a loader."""

    def __init__(self, n=10, device="cpu", seed=0):
        import torch

        self.train_labels, self.device, self.seed = torch.arange(n) % 3, torch.device(device), seed


class _Data:
    num_classes, mean, std, flip = 3, (0.5,), (0.25,), True


def _task(name, **task):
    from sslprune.compute import task as tasks

    t = tasks.make(TaskConfig(name, **{**SMALL, **task}), _Data())
    t.bind(_Loader())
    return t


# ---------------------------------------------------------------- views


def test_views_scale_crop_and_blur_to_the_image_size():
    from sslprune.compute.views import blur_kernel, min_crop_area

    assert min_crop_area(8) == 0.25 and min_crop_area(14) > 0.08 and min_crop_area(15) == 0.08 and min_crop_area(224) == 0.08
    assert (blur_kernel(8), blur_kernel(28), blur_kernel(32), blur_kernel(224)) == (0, 0, 3, 21)


def test_a_view_drawn_as_the_identity_is_the_image_and_a_flip_is_a_flip():
    import torch
    from sslprune.compute.views import DRAWS, View

    g = torch.Generator().manual_seed(0)
    raw = torch.rand(2, 1, 8, 8, generator=g)
    x = (raw - 0.5) / 0.25
    view = View((0.5,), (0.25,), flip=True, jitter=0.4, blur=1.0, solarize=0.0)
    u = torch.full((2, DRAWS), 0.9)  # no jitter (>= 0.8), no blur at 8 px, no flip (>= 0.5)
    u[:, 0], u[:, 1], u[:, 2], u[:, 3] = 1.0, 0.5, 0.5, 0.5  # the whole image, square, centred
    assert torch.allclose(view(x, u), x, atol=1e-5)
    u[:, 4] = 0.1
    assert torch.allclose(view(x, u), x.flip(3), atol=1e-5)
    solar = View((0.5,), (0.25,), flip=True, jitter=0.4, blur=0.0, solarize=1.0)
    u[:, 4], u[:, 12] = 0.9, 0.0
    assert torch.allclose(solar(x, u) * 0.25 + 0.5, torch.where(raw >= 0.5, 1 - raw, raw), atol=1e-5)


# ---------------------------------------------------------------- losses by their formulas


def test_simclr_loss_is_nt_xent_over_both_views_of_the_batch():
    import torch
    from torch import nn

    t = _task("simclr", temperature=0.5, embedding=4)
    t.tail = nn.Identity()  # the loss on the embeddings themselves
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = t.loss(z.clone().requires_grad_(), torch.arange(3))
    u = torch.nn.functional.normalize(z, dim=1)
    want = 0.0
    for i in range(6):
        pos = (i + 3) % 6
        den = sum(math.exp(float(u[i] @ u[k]) / 0.5) for k in range(6) if k != i)
        want += -math.log(math.exp(float(u[i] @ u[pos]) / 0.5) / den) / 6
    assert float(got.detach()) == pytest.approx(want, rel=1e-12)
    assert torch.equal(t.bank[:3], u[:3].float())  # the first views' embeddings, at their images' rows


def test_mocov2_loss_is_infonce_against_the_queue_and_the_keys_then_join_it():
    import torch
    from torch import nn
    from sslprune.compute import model as models

    t = _task("mocov2", queue=4, temperature=0.5, embedding=32)
    t.tail = nn.Identity()
    net = models.build(models_cfg(), 1, 32, 0)
    t.begin(net, {}, 0, 10)
    q = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    t._keys = torch.nn.functional.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(3)), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(4)), dim=1)
    t.queue = queue.clone()
    got = t.loss(q.clone().requires_grad_(), torch.arange(3))
    u = torch.nn.functional.normalize(q, dim=1)
    logits = torch.cat([(u * t._keys).sum(1, keepdim=True), u @ queue.T], 1) / 0.5
    assert float(got.detach()) == pytest.approx(float(-torch.log_softmax(logits, 1)[:, 0].mean()), rel=1e-6)
    t.after_step(net, {}, 1)  # the 3 keys replace the oldest rows; the next ones wrap around
    assert torch.equal(t.queue[:3], t._keys) and torch.equal(t.queue[3], queue[3]) and t.at == 3
    t._push = t._keys.flip(0)
    t.after_step(net, {}, 2)
    assert torch.equal(t.queue[3], t._keys[2]) and torch.equal(t.queue[:2], t._keys.flip(0)[1:]) and t.at == 2


def models_cfg():
    from sslprune.core.schema import ModelConfig

    return ModelConfig("resnet_small", 4)


def test_byol_ema_rate_is_a_cosine_function_of_the_step():
    from sslprune.compute.momentum import byol_momentum

    assert byol_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert byol_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert byol_momentum(100, 100, 0.996) == 1.0
    assert byol_momentum(25, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_the_target_follows_the_online_network_and_is_pruned_with_it():
    """theta_t <- m theta_t + (1 - m) theta on every parameter, then zero where the mask prunes."""
    import torch
    from sslprune.compute import mask as masks, model as models

    t = _task("mocov2", target_momentum=0.9)
    net = models.build(models_cfg(), 1, 32, 0)
    mask = masks.ones(net, [], "all")
    name = next(iter(mask))
    mask[name].view(-1)[:5] = 0
    net.state_dict()[name].view(-1)[:5] = 0  # the online network under the mask, as the trainer keeps it
    t.begin(net, mask, 0, 10)
    before = {k: v.clone() for k, v in t.target["net"].named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    t.after_step(net, mask, 1)
    online = dict(net.named_parameters())
    for k, v in t.target["net"].named_parameters():
        want = 0.9 * before[k] + 0.1 * online[k]
        if k in mask:
            want = want * mask[k]
        assert torch.allclose(v, want), k
    assert (t.target["net"].state_dict()[name].view(-1)[:5] == 0).all()
    assert not any(p.requires_grad for p in t.target.parameters())


def test_two_view_settings_are_checked_with_one_line_errors():
    for key, value in (("hidden", 0), ("queue", -1), ("target_momentum", 1.0)):
        with pytest.raises(ConfigError, match=f"^t.{key}={value!r} must be "):
            validate_task("t", TaskConfig("byol", **{key: value}))
    with pytest.raises(ConfigError, match="label_fraction=0.5 needs labels"):
        validate_task("t", TaskConfig("simclr", label_fraction=0.5))


# ---------------------------------------------------------------- rewinding and resuming


def test_rewind_point_carries_target_queue_tail_and_predictor(tmp_path):
    """rewind.pt holds the whole task state after k updates, and level 1 starts from it: the target
    (then masked with level 1's mask), the queue, the tail and the predictor."""
    import torch
    from sslprune.compute import checkpoint, loader as loaders, runner, seed as seeds
    from sslprune.compute.runtime import local

    for name, keys in (("mocov2", {"tail", "bank", "target", "queue", "queue_at"}),
                       ("byol", {"tail", "bank", "target", "predictor"})):
        cfg = _cfg(tmp_path / name, name)
        rt = local(cfg.run)
        runner.run(ImpLevel(cfg, name, 0, 0), rt)
        rewound = checkpoint.load(ImpLevel(cfg, name, 0, 1).rewind_file())
        assert rewound["step"] == 3 and set(rewound["task"]) == keys
        s = runner.prepare(ImpLevel(cfg, name, 0, 1), rt)
        loader = loaders.make(s.data, s.optim.batch_size, seeds.derive(*s.record.batches), rt.device, index_targets=True)
        s.task.bind(loader)
        fresh = {k: v.clone() for k, v in s.task.state_dict()["tail"].items()}
        s.task.load_state_dict(s.task_state)
        s.task.begin(s.net, s.train_mask, 3, 11)
        state = s.task.state_dict()
        for k, v in rewound["task"]["tail"].items():
            assert torch.equal(state["tail"][k], v)
        assert any(not torch.equal(fresh[k], v) for k, v in rewound["task"]["tail"].items())  # trained by then
        for k, v in rewound["task"]["target"].items():
            m = s.train_mask.get(k[len("net."):]) if k.startswith("net.") else None
            assert torch.equal(state["target"][k], v if m is None else v * m), k
        assert any(bool((m == 0).any()) for m in s.train_mask.values())
        if name == "mocov2":
            assert torch.equal(state["queue"], rewound["task"]["queue"]) and s.task.at == int(rewound["task"]["queue_at"])
        else:
            assert all(torch.equal(state["predictor"][k], v) for k, v in rewound["task"]["predictor"].items())


# BYOL (target, predictor, tail, bank) in the default tier; the others slow, as their kill -9 tests.
@pytest.mark.parametrize("name", [pytest.param("simclr", marks=pytest.mark.slow),
                                  pytest.param("mocov2", marks=pytest.mark.slow), "byol"])
def test_interrupted_then_resumed_equals_uninterrupted_including_the_task_state(tmp_path, name):
    import torch
    from sslprune.compute import loader as loaders, runner
    from sslprune.compute.runtime import local
    from sslprune.compute.trainer import Fit, Interrupted, evaluate, fit

    cpu = torch.device("cpu")
    cfg = _cfg(tmp_path / "s", name, epochs=2)
    rt = local(cfg.run)
    run = RunConfig(quiet=True, log_every=5)

    def job(ckpt, interrupt=None):
        s = runner.prepare(ImpLevel(cfg, name, 0, 0), rt)
        ld = loaders.make(s.data, 128, 0, cpu, index_targets=True)
        s.task.bind(ld)
        return Fit(model=s.net, task=s.task, loader=ld, optim=s.optim, mask=s.mask, checkpoint=ckpt,
                   interrupt=interrupt)

    straight = job(tmp_path / "a.pt")
    fit(straight, run, Progress("a", quiet=True))
    polls = iter(range(100))
    stopped = job(tmp_path / "b.pt", interrupt=lambda: next(polls) == 13)
    with pytest.raises(Interrupted):
        fit(stopped, run, Progress("b", quiet=True))
    torch.manual_seed(12345)  # the resumed process starts from another random state
    resumed = job(tmp_path / "b.pt")
    fit(resumed, run, Progress("b", quiet=True))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    def flat(state):
        for k, v in state.items():
            if isinstance(v, dict):
                yield from ((f"{k}.{j}", w) for j, w in flat(v))
            else:
                yield k, v

    sa, sb = dict(flat(straight.task.state_dict())), dict(flat(resumed.task.state_dict()))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert evaluate(resumed.model, resumed.task, resumed.loader, 1024) == evaluate(
        straight.model, straight.task, straight.loader, 1024)
