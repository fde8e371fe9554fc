"""The pretext tasks beyond RotNet (Exemplar, NPID, S4L) and label subsets, on real digits.

Each test pins what the method means: two views of the same image, a triplet loss that is zero
exactly when pairs are separated by the margin, NPID's bank formula and its survival across a
resume, S4L ignoring unlabelled images, and subsets that are exact, deterministic and saved."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PIL import Image

from sslprune.core import store as files, errors
from sslprune.core.progress import Progress
from sslprune.core.schema import DataConfig, ModelConfig, RunConfig, SignalConfig, TaskConfig
from sslprune.core.stage import ImpLevel
from sslprune.core.validation import validate_task

from conftest import ROOT, tiny_config, tiny_optim


@pytest.fixture(scope="module")
def digits():
    from sslprune.compute import dataset

    return dataset.load(DataConfig(name="digits"))


def _batch(data, n=64):
    import torch
    from sslprune.compute import loader as loaders
    CPU = torch.device("cpu")

    ld = loaders.make(data, n, 0, CPU)
    return ld, next(iter(ld.batches(0)))


# ---------------------------------------------------------------- Exemplar


def test_exemplar_views_are_two_transformations_of_the_same_images(digits):
    import torch
    from torch.nn import functional as F
    from sslprune.compute import seed as seeds, task as tasks
    CPU = torch.device("cpu")

    task = tasks.make(TaskConfig("exemplar"), digits)
    assert task.num_outputs == 128
    _, (x, y) = _batch(digits)
    draws = seeds.Draws.for_batch(0, 0, len(x), CPU)
    views, target = task.prepare(x, y, draws)
    v1, v2 = views.chunk(2)
    # The draws are the batch's own: the same views again whatever the global RNG did meanwhile.
    torch.rand(7)
    assert torch.equal(task.prepare(x, y, seeds.Draws.for_batch(0, 0, len(x), CPU))[0], views)
    assert views.shape == (128, *x.shape[1:])
    assert target.tolist() == list(range(64)) * 2  # row i and row 64 + i are the same image
    assert not torch.equal(v1, v2) and not torch.equal(v1, x)  # independent draws, really transformed
    # Each view 1 correlates best with its own view 2 (correlation ignores brightness and contrast):
    # the same image under two draws. Seen 63-64 of 64 on five seeds.
    z = [F.normalize(v.flatten(1) - v.flatten(1).mean(1, keepdim=True), dim=1) for v in (v1, v2)]
    assert ((z[0] @ z[1].T).argmax(1) == torch.arange(64)).sum() >= 60
    # With jitter and rotation switched off a view is the image itself (the grid samples pixel centres).
    task.jitter, task.max_degrees = 0.0, 0.0
    assert torch.allclose(task.view(x, torch.rand(len(x), 4)), x, atol=1e-5)
    # Jitter is per image, not per channel: a grey colour image stays grey (saturation blends to luma).
    colour = tasks.Exemplar(TaskConfig("exemplar"), (0.5,) * 3, (0.25,) * 3)
    grey = torch.rand(8, 1, 12, 12).expand(8, 3, 12, 12) * 4 - 2
    out = colour.view(grey, torch.rand(8, 4))
    assert not torch.allclose(out, grey, atol=1e-3)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 0], out[:, 2], atol=1e-5)


def test_exemplar_triplet_loss_is_zero_exactly_when_pairs_are_separated(digits):
    import torch
    from torch.nn import functional as F
    from sslprune.compute import task as tasks

    task = tasks.make(TaskConfig("exemplar", embedding=8, margin=0.5), digits)
    e = torch.eye(8)[:6] * 3  # six orthogonal embeddings (any scale: the loss normalises)
    target = torch.arange(6).repeat(2)
    same = torch.cat([e, e])
    assert task.loss(same, target).item() == 0.0  # d(a, p) = 0, every negative at sqrt(2) > margin
    assert task.score(same, target) == (6, 6)
    # Positives that are other images: d(a, p) = sqrt(2) and the hardest negative is the anchor's twin.
    swapped = torch.cat([e, e.roll(1, 0)])
    assert task.loss(swapped, target).item() == pytest.approx(math.sqrt(2) + 0.5, abs=1e-4)
    assert task.score(swapped, target)[0].item() == 0
    # The negative is the hardest of the batch: the other image's view 2 nearest the anchor.
    torch.manual_seed(0)
    out = torch.randn(12, 8, requires_grad=True)
    a, p = F.normalize(out[:6], dim=1), F.normalize(out[6:], dim=1)
    sim = (a @ p.T).detach().fill_diagonal_(-2)
    expected = F.triplet_margin_loss(a, p, p[sim.argmax(1)], margin=0.5)
    assert torch.equal(task.loss(out, target), expected)
    task.loss(out, target).backward()
    assert out.grad.abs().sum() > 0
    # Evaluation retrieves each pair among the whole test set, however it was batched.
    e = torch.eye(8)
    views = [torch.cat([e[:3], e[:3]]), torch.cat([e[3:], e[3:].roll(1, 0)])]  # 3 right pairs, 5 swapped
    whole, split = task.metric(), task.metric()
    whole.add(torch.cat([e, e[:3], e[3:].roll(1, 0)]), None)
    for v in views:
        split.add(v, None)
    assert whole.result() == split.result()
    r = whole.result()
    assert r["accuracy"] == 3 / 8 and r["count"] == 8 and r["metric"] == "pair_top1"
    assert r["loss"] == pytest.approx(5 / 8 * (math.sqrt(2) + 0.5), abs=1e-4)


# ---------------------------------------------------------------- NPID


def _npid(digits, train_limit=None, embedding=8, **kw):
    import torch
    from sslprune.compute import dataset, loader as loaders, task as tasks
    CPU = torch.device("cpu")

    data = replace(digits, train=dataset.Split(digits.train.images[:train_limit], digits.train.labels[:train_limit]))
    task = tasks.make(TaskConfig("npid", embedding=embedding, **kw), data)
    ld = loaders.make(data, 32, 0, CPU, index_targets=True)
    task.bind(ld)
    return task, ld


def test_npid_batches_carry_indices_and_the_bank_follows_its_formula(digits):
    import torch
    from torch.nn import functional as F
    from sslprune.compute import loader as loaders, seed as seeds
    CPU = torch.device("cpu")

    task, ld = _npid(digits, train_limit=256, negatives=10 ** 6, bank_momentum=0.5, temperature=0.1)
    assert task.index_targets and task.num_outputs == 8 and task.bank.shape == (256, 8)
    assert torch.equal(ld.train_labels, digits.train.labels[:256])
    x, idx = next(iter(ld.batches(0)))
    _, y = next(iter(loaders.make(ld.data, 32, 0, CPU).batches(0)))  # the same batch, with labels
    assert idx.dtype == torch.int64 and torch.equal(ld.train_labels[idx], y)
    out = torch.randn(32, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    before = task.bank.clone()
    draws = seeds.Draws.for_batch(1, 0, 32, CPU)
    task.prepare(x, idx, draws)  # the step's negatives are drawn from the batch's draws
    loss = task.loss(out, idx)
    # The loss: softmax over the own (old) bank row and N - 1 = 255 drawn rows, the own row left out.
    drawn = torch.randperm(256, generator=draws.generator("npid-negatives"))[:255]
    f = F.normalize(out.detach(), dim=1)
    logits = torch.cat([(f * before[idx]).sum(1, keepdim=True), f @ before[drawn].T], 1) / 0.1
    logits[:, 1:][drawn.view(1, -1) == idx.view(-1, 1)] = -math.inf
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.zeros(32, dtype=torch.long)).item(), rel=1e-6)
    # v_i <- normalize(m v_i + (1 - m) f_i) for the batch's rows, every other row untouched.
    expected = F.normalize(0.5 * before[idx] + 0.5 * f, dim=1)
    assert torch.allclose(task.bank[idx], expected, atol=1e-6)
    others = torch.ones(256, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(task.bank[others], before[others])
    assert torch.allclose(task.bank.norm(dim=1), torch.ones(256), atol=1e-5)
    # A loss computed without autograd (evaluation) leaves the bank alone.
    with torch.no_grad():
        task.loss(out, idx)
    assert torch.allclose(task.bank[idx], expected, atol=1e-6)


def test_npid_knn_votes_with_the_bank_and_training_labels(digits):
    import torch
    from torch.nn import functional as F

    task, ld = _npid(digits, train_limit=256, embedding=10)
    # A bank whose rows are the one-hot of their image's label: a test feature on class c's axis
    # is nearest the ~25 rows of class c, whose weights exp(1 / T) outvote the rest of the k = 200.
    task.bank = F.one_hot(ld.train_labels, 10).float()
    metric = task.metric()
    metric.add(torch.eye(10)[[3, 5, 7]] * 4, torch.tensor([3, 5, 0]))
    assert metric.result() == {"accuracy": 2 / 3, "count": 3, "metric": "knn_top1"}


def test_npid_resume_is_bit_identical_including_the_bank(tmp_path):
    from sslprune.compute import runner

    import torch
    from sslprune.compute import runner
    from sslprune.compute import loader as loaders
    from sslprune.compute.runtime import local
    from sslprune.compute.trainer import Fit, Interrupted, evaluate, fit
    CPU = torch.device("cpu")

    cfg = tiny_config(tmp_path / "s")
    cfg.signals = {"npid": SignalConfig(TaskConfig("npid", embedding=16, negatives=300), tiny_optim(epochs=2))}
    rt = local(cfg.run)
    run = RunConfig(quiet=True, log_every=5)

    def job(ckpt, interrupt=None):
        s = runner.prepare(ImpLevel(cfg, "npid", 0, 0), rt)
        ld = loaders.make(s.data, 128, 0, CPU, index_targets=s.task.index_targets)
        s.task.bind(ld)
        return Fit(model=s.net, task=s.task, loader=ld, optim=s.optim, mask=s.mask, checkpoint=ckpt,
                   interrupt=interrupt)

    straight = job(tmp_path / "a.pt")
    torch.manual_seed(0)
    fit(straight, run, Progress("a", quiet=True))
    polls = iter(range(100))
    stopped = job(tmp_path / "b.pt", interrupt=lambda: next(polls) == 13)
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        fit(stopped, run, Progress("b", quiet=True))
    assert not torch.equal(stopped.task.bank, straight.task.bank)
    torch.manual_seed(12345)  # the resumed process starts from another random state
    resumed = job(tmp_path / "b.pt")
    fit(resumed, run, Progress("b", quiet=True))
    assert torch.equal(resumed.task.bank, straight.task.bank)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.allclose(resumed.task.bank.norm(dim=1), torch.ones(len(resumed.task.bank)), atol=1e-5)
    assert evaluate(resumed.model, resumed.task, resumed.loader, 1024) == evaluate(
        straight.model, straight.task, straight.loader, 1024)


def _ranks_update(rank, world, out_dir):
    import torch
    from torch.nn import functional as F
    from sslprune.compute import task as tasks

    torch.distributed.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank,
                                         world_size=world)
    task = tasks.NPID(TaskConfig("npid", embedding=4, bank_momentum=0.3), 10)
    g = torch.Generator().manual_seed(0)
    task.bank = F.normalize(torch.randn(20, 4, generator=g), dim=1)
    f = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    idx = torch.randperm(20, generator=g)[:8]
    task.update(f[rank * 4:(rank + 1) * 4], idx[rank * 4:(rank + 1) * 4])  # each rank holds half the batch
    torch.save(task.bank, f"{out_dir}/bank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_npid_banks_of_all_ranks_stay_identical(tmp_path):
    """Under torch.distributed every rank applies the global batch's update (gloo, two processes)."""
    import torch
    from torch.nn import functional as F
    from sslprune.compute import task as tasks

    torch.multiprocessing.start_processes(_ranks_update, args=(2, str(tmp_path)), nprocs=2, start_method="fork")
    b0, b1 = torch.load(tmp_path / "bank0.pt"), torch.load(tmp_path / "bank1.pt")
    assert torch.equal(b0, b1)
    task = tasks.NPID(TaskConfig("npid", embedding=4, bank_momentum=0.3), 10)
    g = torch.Generator().manual_seed(0)
    task.bank = F.normalize(torch.randn(20, 4, generator=g), dim=1)
    f = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    task.update(f, torch.randperm(20, generator=g)[:8])  # one process, the whole batch
    assert torch.allclose(b0, task.bank, atol=1e-7)


# ---------------------------------------------------------------- S4L


def test_s4l_head_and_loss_ignore_unlabelled_images_exactly(digits):
    import torch
    from torch.nn import functional as F
    from sslprune.compute import model as models, task as tasks

    task = tasks.make(TaskConfig("s4l", rotation_weight=1.0), digits)
    assert task.num_outputs == 14
    assert models.build(ModelConfig("resnet_small", 4), 1, task.num_outputs, 0).head.out_features == 14
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([4, -1, 7])
    xr, t = task.prepare(x, y)
    assert torch.equal(xr, tasks.RotNet().prepare(x, y)[0])
    assert t[:, 0].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert t[:, 1].tolist() == [4, -1, 7] + [-1] * 9  # labels on the un-rotated copies only
    torch.manual_seed(0)
    out = torch.randn(12, 14)
    rotation = F.cross_entropy(out[:, :4], t[:, 0])
    # No labels at all: the loss is the rotation loss, exactly (not NaN from an empty mean).
    _, none = task.prepare(x, torch.full((3,), -1))
    assert torch.equal(task.loss(out, none), rotation)
    # Labels: the mean cross-entropy of the labelled un-rotated copies plus weight x rotation.
    labelled = F.cross_entropy(out[[0, 2], 4:], torch.tensor([4, 7]))
    assert task.loss(out, t).item() == pytest.approx((labelled + rotation).item(), rel=1e-6)
    other = out.clone()
    other[[1, 3, 4, 5], 4:] = torch.randn(4, 10) * 100  # the class outputs of images without a label
    assert torch.equal(task.loss(other, t), task.loss(out, t))
    half = tasks.make(TaskConfig("s4l", rotation_weight=0.5), digits)
    assert half.loss(out, t).item() == pytest.approx((labelled + 0.5 * rotation).item(), rel=1e-6)
    # Evaluation: the class outputs of un-rotated test images, top-1 on the test labels.
    ex, ey = task.eval_prepare(x, torch.tensor([4, 5, 7]))
    assert torch.equal(ex, x)
    scores = torch.zeros(3, 14)
    scores[:, 0] = 50  # a confident rotation output does not count as a class
    scores[[0, 1, 2], [8, 9, 4]] = 1  # classes 4, 5, 0
    m = task.metric()
    m.add(scores, ey)
    r = m.result()
    assert r["accuracy"] == pytest.approx(2 / 3) and r["metric"] == "top1" and r["count"] == 3


# ---------------------------------------------------------------- label subsets


def test_image_subset_takes_that_fraction_of_every_class(digits):
    import torch
    from sslprune.compute import subset as subsets

    labels = digits.train.labels
    counts = torch.bincount(labels, minlength=10)
    idx = subsets.select(labels, 10, 0.1, "images", 0)
    assert torch.equal(idx, idx.unique())  # sorted, no repeats
    assert torch.equal(torch.bincount(labels[idx], minlength=10), torch.ceil(counts * 0.1).long())
    assert torch.equal(idx, subsets.select(labels, 10, 0.1, "images", 0))
    assert not torch.equal(idx, subsets.select(labels, 10, 0.1, "images", 1))
    tiny = subsets.select(labels, 10, 1e-6, "images", 0)
    assert torch.bincount(labels[tiny], minlength=10).tolist() == [1] * 10  # at least one per class
    assert torch.equal(subsets.select(labels, 10, 1.0, "images", 3), torch.arange(len(labels)))


def test_class_subset_takes_all_images_of_that_fraction_of_classes(digits):
    import torch
    from sslprune.compute import subset as subsets

    labels = digits.train.labels
    counts = torch.bincount(labels, minlength=10)
    for fraction, n in ((0.1, 1), (0.25, 3), (0.3, 3)):  # ceil(0.3 x 10) is 3, not 4 from 3.0000000000000004
        idx = subsets.select(labels, 10, fraction, "classes", 0)
        chosen = labels[idx].unique()
        assert len(chosen) == n
        assert len(idx) == int(counts[chosen].sum())  # every image of the chosen classes
    draws = {tuple(labels[subsets.select(labels, 10, 0.3, "classes", s)].unique().tolist()) for s in range(5)}
    assert len(draws) > 1
    assert torch.equal(subsets.select(labels, 10, 0.3, "classes", 2), subsets.select(labels, 10, 0.3, "classes", 2))


def _subset_cfg(store, name, **kw):
    cfg = tiny_config(store)
    cfg.signals = {name: SignalConfig(TaskConfig(name, label_fraction=0.1, **kw), tiny_optim(epochs=6, batch_size=32))}
    cfg.signal = name
    return cfg


def test_subset_is_saved_at_level_0_read_back_and_checked(tmp_path, digits):
    from sslprune.compute import runner

    import torch
    from sslprune.compute import runner
    from sslprune.compute import subset as subsets
    from sslprune.compute.runtime import local

    rt = local(RunConfig(quiet=True))
    cfg = _subset_cfg(tmp_path / "s", "labels")
    with pytest.raises(FileNotFoundError, match="label_subset.json"):
        runner.prepare(ImpLevel(cfg, "labels", 0, 1), rt)  # a later level never draws its own subset
    setup = runner.prepare(ImpLevel(cfg, "labels", 0, 0), rt)
    runner.run(ImpLevel(cfg, "labels", 0, 0), rt)
    path = ImpLevel(cfg, "labels", 0, 0).dir / "label_subset.json"
    saved = files.read_json(path)
    idx = subsets.select(digits.train.labels, 10, 0.1, "images", 0)
    assert saved["indices"] == idx.tolist() and saved["label_fraction"] == 0.1 and saved["label_subset"] == "images"
    assert torch.equal(setup.data.train.labels, digits.train.labels[idx])  # labels: the subset alone
    assert torch.equal(setup.data.train.images, digits.train.images[idx])
    # The file is the truth: a later level (and a resumed run) uses the indices it holds.
    saved["indices"] = saved["indices"][1:]
    files.write_json(saved, path)
    assert torch.equal(runner.prepare(ImpLevel(cfg, "labels", 0, 1), rt).data.train.labels, digits.train.labels[idx[1:]])
    # A file made for another subset is refused, naming what differs.
    files.write_json({**saved, "subset_seed": 7}, path)
    with pytest.raises(errors.SubsetMismatch, match="subset_seed"):
        runner.prepare(ImpLevel(cfg, "labels", 0, 1), rt)
    # S4L keeps every image; those outside the subset have label -1.
    s4l = runner.prepare(ImpLevel(_subset_cfg(tmp_path / "t", "s4l"), "s4l", 0, 0), rt).data.train
    assert torch.equal(s4l.images, digits.train.images)
    assert torch.equal(s4l.labels[idx], digits.train.labels[idx])
    assert int((s4l.labels == -1).sum()) == len(digits.train.labels) - len(idx)


def test_task_presets_are_valid_and_cite_the_paper():
    files = {"exemplar", "npid", "s4l", "s4l_10pct_classes", "labels_10pct_images", "labels_10pct_classes"}
    for name in files:
        text = (ROOT / "conf" / "task" / f"{name}.yaml").read_text()
        assert "Caron et al. 2020" in text
        t = TaskConfig(**yaml.safe_load(text))
        validate_task(name, t)
        assert t.label_fraction == (0.1 if "10pct" in name or name == "s4l" else 1.0)
        assert t.label_subset == ("classes" if "classes" in name else "images")


# ---------------------------------------------------------------- short real chains


CHAINS = {  # signal: task, optim, lowest accuracy accepted at levels 0 and 1 (observed on 3 seeds, with margin)
    "exemplar": (TaskConfig("exemplar"), tiny_optim(epochs=2), "pair_top1", 0.2),  # seen 0.44-0.65; chance 1/359
    "npid": (TaskConfig("npid"), tiny_optim(epochs=10, lr=0.1), "knn_top1", 0.25),  # seen 0.42-0.57; chance 0.1
    "s4l": (TaskConfig("s4l", label_fraction=0.1), tiny_optim(epochs=6), "top1", 0.18),  # seen 0.25-0.57
    # seen 0.26-0.40; 10% of digits is 147 images, so batches of 32 for a few steps per epoch
    "labels10": (TaskConfig("labels", label_fraction=0.1), tiny_optim(epochs=6, batch_size=32), "top1", 0.18),
}


@pytest.mark.parametrize("signal", list(CHAINS))
def test_short_imp_chain(tmp_path, signal):
    from sslprune.compute import runner

    from sslprune.compute.runtime import local

    task, optim, metric, low = CHAINS[signal]
    cfg = tiny_config(tmp_path / "s")
    cfg.signals = {signal: SignalConfig(task, optim)}
    cfg.signal = signal
    cfg.prune = replace(cfg.prune, levels=1)
    rt = local(cfg.run)
    for level in (0, 1):
        stage = ImpLevel(cfg, signal, 0, level)
        runner.run(stage, rt)
        r = files.read_json(stage.dir / "result.json")
        assert r["metric"] == metric and r["signal_task"] == task.name and r["count"] == 359
        assert low < r["accuracy"] <= 1.0, r
        assert r["remaining"] == pytest.approx(0.8 ** level, abs=1e-3)
        assert not (stage.dir / "checkpoint.pt").exists()
    assert (ImpLevel(cfg, signal, 0, 0).dir / "label_subset.json").exists() == (task.label_fraction < 1)


# ---------------------------------------------------------------- ImageFolder data


def _image_folder(root: Path, train: int, val: int, classes=("a", "b", "c")) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("val", val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_label_subset_of_an_image_folder(tmp_path):
    from sslprune.compute import runner

    import torch
    from sslprune.compute import runner
    from sslprune.compute import dataset, loader as loaders, subset as subsets
    from sslprune.compute.runtime import local
    CPU = torch.device("cpu")

    _image_folder(tmp_path / "data", train=10, val=2)
    data_cfg = DataConfig(name="imagenet", root=str(tmp_path / "data"), image_size=16, workers=0)
    cfg = tiny_config(tmp_path / "s", data=data_cfg)
    cfg.signals = {n: SignalConfig(TaskConfig(n, label_fraction=0.2), tiny_optim(epochs=1, batch_size=3))
                   for n in ("labels", "s4l")}
    rt = local(cfg.run)
    scanned = loaders.train_labels(dataset.load(data_cfg))
    idx = subsets.select(scanned, 3, 0.2, "images", 0)
    # labels: two images per class remain, in scan order, and index batches point at them.
    s = runner.prepare(ImpLevel(cfg, "labels", 0, 0), rt)
    ld = loaders.make(s.data, 3, 0, CPU, index_targets=True)
    assert ld.train_labels.tolist() == scanned[idx].tolist() == [0, 0, 1, 1, 2, 2]
    assert [p for p, _ in ld.train.samples] == [loaders.folder_train(s.data)[i][0] for i in idx.tolist()]
    seen = torch.cat([i for _, i in ld.batches(0)])
    assert sorted(seen.tolist()) == list(range(6))
    # s4l: all 30 images, 24 of them unlabelled; a level-0 stage trains on them and evaluates on val/.
    s = runner.prepare(ImpLevel(cfg, "s4l", 0, 0), rt)
    ld = loaders.make(s.data, 3, 0, CPU)
    assert len(ld.train_labels) == 30 and int((ld.train_labels == -1).sum()) == 24
    assert torch.equal(ld.train_labels[idx], scanned[idx])
    ys = torch.cat([y for _, y in ld.batches(0)])
    assert sorted(ys.tolist()) == [-1] * 24 + [0, 0, 1, 1, 2, 2]
    result = runner.run(ImpLevel(cfg, "s4l", 0, 0), rt)
    assert result["count"] == 6 and result["metric"] == "top1"


def test_npid_bank_is_rewound_with_the_weights(tmp_path):
    """Level 1 starts from W_k and from the memory bank as it was after those k updates."""
    from sslprune.compute import runner

    import torch
    from sslprune.compute import runner
    from sslprune.compute import checkpoint, loader as loaders, seed as seeds
    from sslprune.compute.runtime import local

    import dataclasses

    import torch

    from sslprune.core.schema import SignalConfig, TaskConfig
    from sslprune.core.stage import ImpLevel
    from sslprune.compute import checkpoint, loader as loaders, seed as seeds
    from sslprune.compute.runtime import local

    from conftest import tiny_config, tiny_optim

    cfg = tiny_config(tmp_path / "store")
    cfg.signals = {"npid": SignalConfig(TaskConfig("npid", negatives=64), tiny_optim(epochs=1))}
    cfg.retrain = dataclasses.replace(cfg.retrain, schemes=[])
    cfg.probe = dataclasses.replace(cfg.probe, signals=[])
    rt = local(cfg.run)
    runner.run(ImpLevel(cfg, "npid", 0, 0), rt)
    rewound = checkpoint.load(ImpLevel(cfg, "npid", 0, 1).rewind_file())
    assert rewound["step"] == 3 and rewound["task"]["bank"].shape[1] == 128
    setup = runner.prepare(ImpLevel(cfg, "npid", 0, 1), rt)
    assert torch.equal(setup.task_state["bank"], rewound["task"]["bank"])
    # What was saved is the bank after k updates, not level 0's random starting bank.
    start = runner.prepare(ImpLevel(cfg, "npid", 0, 0), rt)
    start.task.bind(loaders.make(start.data, start.optim.batch_size, seeds.derive(*start.record.batches), rt.device,
                                 index_targets=True))
    changed = (start.task.state_dict()["bank"].cpu() != rewound["task"]["bank"].cpu()).any(dim=1)
    assert int(changed.sum()) == 3 * 128  # exactly the rows of the 3 batches seen so far


def _ranks_accuracy(rank, world, out_dir):
    import torch
    from sslprune.compute import task as tasks

    torch.distributed.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank,
                                         world_size=world)
    metric = tasks.Labels(3).metric()
    if rank == 0:  # rank 1's share of the test set is empty: it adds nothing but joins the sum
        metric.add(torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0]]), torch.tensor([0, 1, 2]))
    torch.save(metric.result(), f"{out_dir}/acc{rank}.pt")
    torch.distributed.destroy_process_group()


def test_accuracy_sums_over_ranks_when_a_rank_saw_no_test_image(tmp_path):
    import torch

    torch.multiprocessing.start_processes(_ranks_accuracy, args=(2, str(tmp_path)), nprocs=2, start_method="fork")
    r0, r1 = torch.load(tmp_path / "acc0.pt"), torch.load(tmp_path / "acc1.pt")
    assert r0 == r1
    assert (r0["accuracy"], r0["count"]) == (2 / 3, 3)
