"""Every paper experiment as a preset: each composes (also with launcher=slurm) with the paper's
hyper-parameters, each reduced-scale twin runs every one of its stage kinds for a few steps here,
and the reduced Figure 3 runs to completion with a report that makes sense."""
from __future__ import annotations

import csv
import dataclasses
import re
import subprocess

import pytest
import yaml

from sslprune.control.local import run_local
from sslprune.control import experiment, report
from sslprune.core import store as files
from sslprune.core.rewind import REWIND, rewind_steps
from sslprune.core.schema import DataConfig, OptimConfig
from sslprune.core.sweep import signal_data, signal_prune

from conftest import ROOT, cli, cli_env, fashion_mnist_configs, numbers
from sslprune.api import compute
from sslprune.api import uses_cuda
from sslprune.core.stage import ImpLevel

# The default tier's longest tests here (seconds on its 2 cores, idle): handed out first (conftest).
LONGEST = {"test_transfer_chain_starts_from_the_source_network_and_waits_for_it": 18,
           "test_reduced_twin_runs_every_stage_for_a_few_steps": 10,
           "test_reduced_figure_5_runs_to_completion_and_its_report_makes_sense": 380}  # alone, -m twin

CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
PAPER = [e for e in EXPERIMENTS if re.match(r"(fig\d|table\d)_", e) and not e.endswith("_small")]
SMALL = [e for e in EXPERIMENTS if re.match(r"(fig\d|table\d)_", e) and e.endswith("_small")]


def load(name: str, *overrides: str):
    from hydra import compose, initialize_config_dir
    from sslprune.launch.compose import CONF_DIR, typed

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return typed(compose("config", overrides=[f"experiment={name}", *overrides]))


def with_fashion_mnist(cfg, request):
    """cfg reading Fashion-MNIST (where it does) from the `fashion_mnist` fixture's root: the
    Debian package, installed by the fixture when it can be, or the test skips naming it."""
    found = fashion_mnist_configs(cfg)
    if found:
        root = str(request.getfixturevalue("fashion_mnist"))
        for d in found:
            d.root = root
    return cfg


def test_every_figure_and_table_1_has_a_preset_and_a_reduced_twin():
    figures = {int(m.group(1)) for e in PAPER if (m := re.match(r"fig(\d)_", e))}
    assert figures == set(range(1, 10))
    assert any(e.startswith("table1_") for e in PAPER)
    assert sorted(SMALL) == sorted(e + "_small" for e in PAPER)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_preset_composes_with_the_slurm_launcher(name, tmp_path):
    cfg = load(name, "launcher=slurm", f"store={tmp_path}")
    assert cfg.launcher.name == "slurm" and cfg.experiment == name
    assert experiment.stages(cfg)  # the experiment plans a non-empty set of stages


def _optim(cfg, signal) -> OptimConfig:
    return cfg.signals[signal].optim


def test_paper_scale_presets_carry_the_published_hyper_parameters():
    fig1 = load("fig1_transfer_resnet50")
    ex, npid, rot = _optim(fig1, "exemplar"), _optim(fig1, "npid"), _optim(fig1, "rotnet")
    assert (ex.epochs, ex.batch_size, ex.lr, ex.weight_decay, ex.milestones) == (40, 1536, 0.3, 1e-5, [20, 30])
    assert (npid.epochs, npid.batch_size, npid.lr, npid.weight_decay, npid.schedule) == (150, 1024, 0.03, 1e-4, "cosine")
    assert fig1.signals["npid"].task.negatives == 16384
    assert (rot.lr, rot.warmup_epochs, rot.weight_decay) == (1.0, 5, 1e-5)
    assert [d.name for d in fig1.svm.datasets] == ["voc07"]
    assert [d.name for d in fig1.probe.datasets] == ["imagenet", "places205"]
    assert fig1.prune.rate == 0.2 and fig1.prune.levels == 30 and fig1.prune.rewind == "3ep"

    fig2 = load("fig2_voc07_finetune_resnet50")
    ft = fig2.finetune.optim
    assert (ft.epochs, ft.lr, ft.milestones) == (90, 0.01, [50, 65, 80])
    assert fig2.signals["transfer"].init_from == "rotnet" and fig2.signals["transfer"].data.name == "voc07"

    fig5 = load("fig5_alexnet_imagenet")
    a_lab, a_rot, a_ex = (_optim(fig5, s) for s in ("labels", "rotnet", "exemplar"))
    assert fig5.model.name == "alexnet"
    assert (a_lab.epochs, a_lab.batch_size, a_lab.lr, a_lab.weight_decay, a_lab.milestones) == (90, 4096, 0.4, 1e-4, [30, 60])
    assert (a_rot.epochs, a_rot.batch_size, a_rot.lr, a_rot.warmup_epochs, a_rot.weight_decay) == (90, 8192, 0.5, 2, 1e-5)
    assert (a_ex.epochs, a_ex.batch_size, a_ex.lr, a_ex.weight_decay, a_ex.milestones) == (30, 4096, 0.1, 1e-4, [20])

    fig6 = load("fig6_cifar10_vgg19")
    c_ex = _optim(fig6, "exemplar")
    assert fig6.model.name == "vgg19" and "random_adjusted" in fig6.retrain.schemes
    assert (c_ex.optimizer, c_ex.epochs, c_ex.batch_size, c_ex.lr, c_ex.milestones) == ("adam", 180, 512, 3e-4, [120])

    fig8 = load("fig8_semisupervised_resnet50")
    s4l, ten = _optim(fig8, "s4l"), _optim(fig8, "labels_10pct")
    assert (s4l.epochs, s4l.batch_size, s4l.lr, s4l.warmup_epochs, s4l.weight_decay, s4l.milestones) == (
        200, 2048, 0.1, 5, 3e-4, [140, 160, 180])
    assert (ten.batch_size, ten.lr, ten.weight_decay) == (768, 0.1, 1e-3)
    assert (_optim(fig8, "labels_10pct_classes").lr, _optim(fig8, "labels_10pct_classes").weight_decay) == (0.3, 3e-4)
    assert fig8.signals["s4l"].task.label_fraction == 0.1 and fig8.signals["s4l_classes"].task.label_subset == "classes"
    assert signal_prune(fig8, "labels_10pct").rewind == "30ep"  # 5000 updates at batch 768 on the 10% subset

    fig4 = load("fig4_layerwise_resnet50")
    assert sorted(fig4.signals) == sorted(f"{s}@{c}" for s in ("labels", "rotnet")
                                          for c in ("conv1", "layer1", "layer2", "layer3", "all"))
    assert signal_prune(fig4, "rotnet@layer2").scope == "layer2"
    fig7 = load("fig7_rewind_resnet50")
    assert {signal_prune(fig7, s).rewind for s in fig7.signals} == {"0it", "1ep", "2500it", "5ep", "10ep"}

    # Issue 24: SimCLR, MoCo v2 and BYOL with their papers' ImageNet values (LARS replaced by SGD).
    modern = load("fig3_modern_resnet50")
    assert sorted(modern.signals) == ["byol", "labels", "mocov2", "rotnet", "simclr"]
    assert modern.prune.levels == 30 and modern.retrain.schemes == ["winning_ticket", "random_reinit", "random"]
    sim, moco, byol = (_optim(modern, s) for s in ("simclr", "mocov2", "byol"))
    assert (sim.batch_size, sim.lr, sim.weight_decay, sim.warmup_epochs, sim.epochs, sim.schedule) == (
        4096, 4.8, 1e-6, 10, 100, "cosine")
    assert (moco.batch_size, moco.lr, moco.weight_decay, moco.epochs, moco.schedule) == (256, 0.03, 1e-4, 200, "cosine")
    assert (byol.batch_size, byol.lr, byol.weight_decay, byol.warmup_epochs, byol.epochs) == (4096, 3.2, 1.5e-6, 10, 1000)
    t = {s: modern.signals[s].task for s in ("simclr", "mocov2", "byol")}
    assert (t["simclr"].temperature, t["simclr"].hidden, t["simclr"].embedding) == (0.1, 2048, 128)
    assert (t["mocov2"].temperature, t["mocov2"].queue, t["mocov2"].target_momentum) == (0.2, 65536, 0.999)
    assert (t["byol"].target_momentum, t["byol"].hidden, t["byol"].embedding) == (0.996, 4096, 256)
    for name in ("simclr", "mocov2", "byol"):  # every value with its source
        for group in ("task", "optim"):
            text = (CONF / group / f"{name if group == 'task' else 'imagenet_' + name}.yaml").read_text()
            assert "2020" in text and ("LARS" in text or name == "mocov2" or group == "task"), (group, name)


def test_sweeps_name_one_chain_per_variant_and_share_nothing():
    fig7 = load("table1_rewind_resnet50_small", "store=/s")
    dirs = {experiment.chains(fig7)[i][0].chain_dir for i in range(len(experiment.chains(fig7)))}
    assert len(dirs) == len(fig7.signals) == 4  # labels/rotnet x 0it/1ep: four different chains


# ------------------------------------------------------------------ reduced twins, a few steps each


def _shrink_data(d: DataConfig) -> DataConfig:
    return dataclasses.replace(d, train_limit=min(d.train_limit or 10 ** 9, 160),
                               test_limit=min(d.test_limit or 10 ** 9, 64))


def _shrink_optim(o: OptimConfig) -> OptimConfig:
    return dataclasses.replace(o, epochs=2, warmup_epochs=0, milestones=[1], batch_size=min(o.batch_size, 32))


def shrink(cfg):
    """The same experiment (every signal, stage kind and evaluation) with tiny data and 2 levels."""
    rewinds = sorted({signal_prune(cfg, s).rewind for s in cfg.signals})

    def rewind(r: str) -> str:  # distinct points stay distinct (distinct chains), all within 2 epochs
        return r if r.startswith("0") and REWIND.match(r).group(2) == "it" else f"{10 + rewinds.index(r)}%"

    signals = {n: dataclasses.replace(s, optim=_shrink_optim(s.optim), rewind=rewind(signal_prune(cfg, n).rewind),
                                      data=_shrink_data(s.data) if s.data else None)
               for n, s in cfg.signals.items()}
    return dataclasses.replace(
        cfg, seeds=[0], signals=signals, data=_shrink_data(cfg.data),
        prune=dataclasses.replace(cfg.prune, levels=1),
        retrain=dataclasses.replace(cfg.retrain, data=_shrink_data(cfg.retrain.data), optim=_shrink_optim(cfg.retrain.optim),
                                    levels=None),
        probe=dataclasses.replace(cfg.probe, datasets=[_shrink_data(d) for d in cfg.probe.datasets],
                                  optim=_shrink_optim(cfg.probe.optim), levels=None),
        svm=dataclasses.replace(cfg.svm, datasets=[_shrink_data(d) for d in cfg.svm.datasets], folds=2, levels=None,
                                costs=cfg.svm.costs[:2]),
        finetune=dataclasses.replace(cfg.finetune, datasets=[_shrink_data(d) for d in cfg.finetune.datasets],
                                     optim=_shrink_optim(cfg.finetune.optim), levels=None),
        run=dataclasses.replace(cfg.run, quiet=True, workers=1, threads=1, log_every=1))


@pytest.mark.parametrize("name", SMALL)
def test_reduced_twin_runs_every_stage_for_a_few_steps(name, tmp_path, request):
    cfg = with_fashion_mnist(shrink(load(name, f"store={tmp_path}")), request)
    run_local(cfg, compute, uses_cuda)
    out, summary = report.write(cfg)
    every = experiment.stages(cfg)
    assert all(s.done() for s in every)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == len(experiment.measurements(cfg))  # the shared dense stage under each name
    # Every signal, and every evaluation the preset asks for, made it into the report.
    assert {r["signal"] for r in rows} == set(cfg.signals)
    expected = {"pretext"} | set(cfg.retrain.schemes) | {f"probe:{d.name}" for d in cfg.probe.datasets} \
        | {f"svm:{d.name}" for d in cfg.svm.datasets} | {f"finetune:{d.name}" for d in cfg.finetune.datasets}
    # ... and each probe and SVM its random-features reference (the initial weights).
    expected |= {f"{kind}:{d.name}@init" for kind, ev in (("probe", cfg.probe), ("svm", cfg.svm)) if ev.signals
                 for d in ev.datasets}
    assert {r["evaluation"] for r in rows} == expected
    assert (out / "findings.md").exists()
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0, r
    assert (out / "rewind.md").exists() and (out / "natural_sparsity.csv").exists()
    if any(signal_prune(cfg, s).scope != "all" for s in cfg.signals):
        assert (out / "layerwise.md").exists() and (out / "layerwise.png").exists()
    if any(s.task.name == "s4l" or s.task.label_fraction < 1 for s in cfg.signals.values()):
        assert (out / "semi_supervised.md").exists() and (out / "semi_supervised.png").exists()


# ------------------------------------------------------------------ the twins' proportions (issue 13)

# The paper's late-resetting point as a fraction of training, per twin and chain: ImageNet 3 of 90
# epochs (3.3 %), CIFAR-10 1 of 160 (0.6 %), the 10 % subsets 30 of 200 (15 %); the Figure-7 twin sweeps
# 0 and 10 epochs (11.1 %), Table 1 0 and 3 epochs; pruning during transfer starts from the pretrained weights.
CIFAR_TWINS = {"fig3_cifar10_resnet18_small", "fig6_cifar10_vgg19_small"}
SWEEPS = {"fig7_rewind_resnet50_small": {0.0, 10 / 90}, "table1_rewind_resnet50_small": {0.0, 3 / 90}}


def _paper_rewind(name: str, cfg, signal: str) -> set:
    if name in SWEEPS:
        return SWEEPS[name]
    if cfg.signals[signal].init_from:
        return {0.0}
    if cfg.signals[signal].task.label_fraction < 1 and cfg.signals[signal].task.name == "labels":
        return {30 / 200}
    return {1 / 160} if name in CIFAR_TWINS else {3 / 90}


def _updates(cfg, signal: str) -> tuple[int, int]:
    """(steps per epoch, batch size) of the signal's IMP training on its real data (label subsets included)."""
    from sslprune.compute import dataset, subset

    data, task, optim = dataset.load(signal_data(cfg, signal)), cfg.signals[signal].task, cfg.signals[signal].optim
    n = len(data.train.labels)
    if task.name == "labels" and task.label_fraction < 1:
        n = len(subset.select(data.train.labels, data.num_classes, task.label_fraction, task.label_subset,
                              task.subset_seed))
    return n // optim.batch_size, optim.batch_size


@pytest.mark.parametrize("name", SMALL)
def test_twins_rewind_at_the_papers_fraction_of_training_in_updates(name, request):
    cfg = with_fashion_mnist(load(name), request)
    seen = set()
    for signal in cfg.signals:
        spe, batch = _updates(cfg, signal)
        total = spe * cfg.signals[signal].optim.epochs
        k = rewind_steps(signal_prune(cfg, signal).rewind, spe, batch, total)
        # to the update: k within one update of the paper's fraction of this chain's real update count
        match = [f for f in _paper_rewind(name, cfg, signal) if abs(k - f * total) < 1]
        assert match, (signal, k, total, k / total)
        seen |= set(match)
    assert seen == set().union(*(_paper_rewind(name, cfg, s) for s in cfg.signals))  # every sweep point is there


def test_twins_run_at_least_4_seeds_and_share_their_random_baseline():
    """Issue 22: two runs of a twin with 2 seeds each, disjoint, flipped 24 of 50 per-level flags. Every
    twin runs 4 seeds; the random start of a pruned level is one stage per seed for every signal."""
    for name in SMALL:
        cfg = load(name)
        assert len(cfg.seeds) >= 4 and len(set(cfg.seeds)) == len(cfg.seeds), (name, cfg.seeds)
        randoms = [s for s in experiment.stages(cfg) if getattr(s, "scheme", None) == "random" and s.level > 0]
        scopes = {signal_prune(cfg, n).scope for n in cfg.signals}
        levels = [lv for lv in (cfg.retrain.levels or range(cfg.prune.levels + 1)) if lv > 0]
        assert len(randoms) == (len(cfg.seeds) * len(levels) * len(scopes) if "random" in cfg.retrain.schemes
                                else 0), name


@pytest.mark.parametrize("name", SMALL)
def test_twins_prune_as_far_as_the_paper_looks(name):
    """Re-training twins reach about 1 % of the weights (20 levels), transfer twins go below the 5 %
    where the paper sees transfer drop; the last level is evaluated. The Figure-6 twin stops at
    4.4 % (14 levels): its three signals' 20-level chains took 42 min at 4 seeds, and its level 20
    read one class from every start but the adjusted random (the preset says more)."""
    cfg = load(name)
    left = (1 - cfg.prune.rate) ** cfg.prune.levels
    evaluated = [e.levels for e in (cfg.probe, cfg.svm, cfg.finetune) if e.signals]
    if name == "fig6_cifar10_vgg19_small":
        assert cfg.prune.levels == 14 and cfg.retrain.levels == [0, 8, 11, 14], cfg.retrain.levels
    elif cfg.retrain.schemes:
        assert cfg.prune.levels >= 20 and left < 0.012, left
        evaluated.append(cfg.retrain.levels)
    else:
        assert evaluated and left < 0.05, left
    for levels in evaluated:
        assert levels is None or cfg.prune.levels in levels, levels


def test_twins_train_their_dense_networks_in_the_papers_schedule_shape():
    """Every twin signal trained with twin_digits: 30 epochs (90 where a signal named below does not
    converge in 30), /10 at the ImageNet schedule's 50, 65, 80 of 90 epochs (the dense accuracy each
    reaches is measured in docs/reproduction.md)."""
    twin = OptimConfig(**yaml.safe_load((CONF / "optim" / "twin_digits.yaml").read_text()))
    assert [round(m / twin.epochs * 90) for m in twin.milestones] == [51, 66, 81]
    # Fine-tuning (VOC07: /10 at 50, 65, 80 of 90 epochs) in the same shape, and at least the 930
    # updates on 1000 images that brought the Figure-2 twin's dense fine-tuning from 62.7 % (225 updates)
    # to 80.7 % (docs/reproduction.md).
    finetune = OptimConfig(**yaml.safe_load((CONF / "optim" / "twin_finetune.yaml").read_text()))
    assert [round(m / finetune.epochs * 90) for m in finetune.milestones] == [51, 66, 81]
    fig2 = load("fig2_voc07_finetune_resnet50_small")
    images = fig2.finetune.datasets[0].train_limit
    assert fig2.finetune.optim == fig2.signals["transfer"].optim == finetune
    assert finetune.epochs * (images // finetune.batch_size) >= 930  # the loader drops the last partial batch
    longer = {("fig6_cifar10_vgg19_small", "exemplar"): 90}  # narrow VGG-19: 23.4 % pair retrieval at 30 (docs/reproduction.md)
    for name in SMALL:
        cfg = load(name)
        for signal, s in cfg.signals.items():
            if s.init_from or s.task.label_fraction < 1:
                continue  # fine-tuning (twin_finetune) and the 10 % subsets (their own update count)
            epochs = longer.get((name, signal), twin.epochs)
            assert s.optim.epochs == epochs, (name, signal, s.optim.epochs)
            assert [round(m / s.optim.epochs * 90) for m in s.optim.milestones] == [51, 66, 81], (name, signal)


# ------------------------------------------------------------------ Figure 3, reduced, to completion


@pytest.mark.reproduction  # 28-30 minutes at its 4 seeds on an AMD EPYC, about 55 on an Intel Xeon: run by hand (`-m reproduction`), not in CI's tiers
def test_reduced_modern_figure_3_runs_to_completion_and_tests_the_claims_for_each_new_signal(tmp_path):
    """Issue 24's twin: every signal at every level, every start at every re-trained level, and
    findings.md testing the paper's self-supervised claims for SimCLR, MoCo v2 and BYOL."""
    store = tmp_path / "store"
    p = cli("sslprune-run", "experiment=fig3_modern_resnet50_small", f"store={store}", timeout=6000)
    assert "ran " in p.stdout
    cfg = load("fig3_modern_resnet50_small", f"store={store}")
    out = store / "reports" / cfg.experiment
    summary = list(csv.DictReader(open(out / "summary.csv")))
    levels = list(range(cfg.prune.levels + 1))
    for signal in ("labels", "rotnet", "simclr", "mocov2", "byol"):
        for evaluation in ["pretext"] + cfg.retrain.schemes:
            got = sorted(int(s["level"]) for s in summary if s["signal"] == signal and s["evaluation"] == evaluation)
            assert got == (levels if evaluation == "pretext" else cfg.retrain.levels), (signal, evaluation, got)
    assert all(int(s["count"]) == len(cfg.seeds) for s in summary)
    text = (out / "findings.md").read_text()
    for claim in ("ssl_reinit_matches_labels", "ssl_ticket_below_labels", "ssl_ticket_above_random"):
        for name in ("simclr", "mocov2", "byol"):
            assert f"| {claim} | {name} |" in text, (claim, name)



# The levels each twin run to completion here re-trains (Figure 3's left out level 4 for time).
RETRAINED = {"fig5_alexnet_imagenet_small": [0, 4, 8, 12, 16, 20], "fig3_imagenet_resnet50_small": [0, 8, 12, 16, 20]}


def _twin_to_completion(tmp_path, experiment, seeds):
    """Runs a twin to completion at `seeds` and checks its report: every signal at every level of
    IMP, every re-training start at every re-trained level, each the mean of the seeds run; the
    fraction remaining; the paper's sanity check at the sparsest level; the findings."""
    store = tmp_path / "store"
    p = cli("sslprune-run", f"experiment={experiment}", f"store={store}", f"seeds={seeds}", timeout=3000)
    assert "ran " in p.stdout
    cfg = load(experiment, f"store={store}", f"seeds={seeds}")
    summary = list(csv.DictReader(open(store / "reports" / cfg.experiment / "summary.csv")))
    levels = list(range(cfg.prune.levels + 1))
    assert cfg.prune.levels == 20 and cfg.retrain.levels == RETRAINED[experiment]
    for signal in ("labels", "rotnet", "exemplar"):
        for evaluation in ["pretext"] + cfg.retrain.schemes:
            got = sorted(int(s["level"]) for s in summary if s["signal"] == signal and s["evaluation"] == evaluation)
            assert got == (levels if evaluation == "pretext" else cfg.retrain.levels), (signal, evaluation, got)
    assert load(experiment).seeds == [0, 1, 2, 3]  # the preset's own
    assert cfg.seeds == seeds and all(int(s["count"]) == len(seeds) for s in summary)
    # Fraction remaining is 0.8^L, up to the one weight per level that ceil() may round.
    total = files.read_json(next(store.glob("imp/*/seed_0/level_0/sparsity_report.json")))["global"]["total"]
    for s in summary:
        L = int(s["level"])
        assert abs(float(s["remaining"]) - 0.8 ** L) <= (L + 1) / total, s
    # The paper's sanity check: winning tickets of label-pruned masks are not below random pruning
    # at the sparsest level.
    last = str(cfg.prune.levels)
    mean = {(s["signal"], s["evaluation"]): float(s["mean"]) for s in summary if s["level"] == last}
    assert mean[("labels", "winning_ticket")] >= mean[("labels", "random")], mean
    for f in ("results.csv", "summary.md", "findings.md", "accuracy_vs_remaining.png", "rewind.md",
              "natural_sparsity.csv"):
        assert (store / "reports" / cfg.experiment / f).exists(), f
    # The findings name the experiment and test the re-training claims of the figure (as
    # test_findings pins for a tiny run).
    text = (store / "reports" / cfg.experiment / "findings.md").read_text()
    assert text.startswith(f"# {cfg.experiment}: the paper's claims"), text[:200]
    assert "labels_ticket_above_reinit" in text


def _rerun_args(name, seeds, levels=2):
    """prune.levels is a path part, not identity, so the twin at prune.levels=`levels` computes
    exactly the stages of levels 0..`levels` of the full run; the re-trained levels up to `levels`
    with it (a path part too: the others would be beyond the chain)."""
    return [f"seeds={seeds}", f"prune.levels={levels}",
            f"retrain.levels={[lv for lv in load(name).retrain.levels if lv <= levels]}"]


def _start_rerun(tmp_path, name, seeds, levels=2) -> subprocess.Popen:
    """The re-run of issue 22, into a fresh store (tmp_path/again), started beside the full run:
    both on the same 2 cores at once, each with its own workers, so the re-run also checks that
    what else runs on the machine and in which order its workers take stages leave no trace in
    the bytes. (It also fills the cores the full run's chains leave idle.)"""
    with open(tmp_path / "again.log", "w") as log:  # a file, not a pipe nobody reads while the twin runs
        return subprocess.Popen(["sslprune-run", f"experiment={name}", f"store={tmp_path / 'again'}",
                                 *_rerun_args(name, seeds, levels)], cwd=ROOT, env=cli_env(), stdout=log,
                                stderr=subprocess.STDOUT)


def _rerun_gives_the_same_bytes(tmp_path, name, seeds, rerun: subprocess.Popen, levels=2):
    """Issue 22: a re-run on the same machine gives the same numbers byte for byte. Each stage of
    the re-run (`_start_rerun`) must record the same numbers as the full run in tmp_path/store,
    and the same bytes in every file it wrote (weights, mask, rewind point, sparsity report)."""
    full, again = tmp_path / "store", tmp_path / "again"
    rerun.wait(timeout=1800)
    assert rerun.returncode == 0, (tmp_path / "again.log").read_text()[-4000:]
    args = _rerun_args(name, seeds, levels)
    stages = experiment.stages(load(name, f"store={again}", *args))
    kinds = {type(s).__name__ for s in stages}
    assert {"ImpLevel", "Retrain"} <= kinds, kinds
    for s in stages:
        rel = s.dir.relative_to(again)
        a, b = files.read_json(full / rel / "result.json"), files.read_json(again / rel / "result.json")
        assert numbers(a) == numbers(b), rel
        assert "model.pt" in a["outputs"], (rel, a["outputs"])
        for f in a["outputs"]:
            assert (full / rel / f).read_bytes() == (again / rel / f).read_bytes(), (rel, f)


@pytest.mark.twin
def test_reduced_figure_5_runs_to_completion_and_its_report_makes_sense(tmp_path):
    """CI's reproduction check: the Figure-5 twin (the cheapest twin: AlexNet at width 4, three
    starts) to completion at one of its 4 seeds, seed 0. A stage's numbers are a function of its
    config and thread count, so this is a regression check of the whole twin (every stage, the
    report, the findings, the paper's sanity inequality), not a scientific sample: the seeds, the
    standard errors and the verdicts' stability are docs/reproduction.md's 4-seed runs'. One seed
    brought `.ci/run` from 43 min 52 s (the twin at 2 seeds: 12 min 21 s) to 35 min 25 s. Then
    the re-run of its levels 0-2 (issue 22), started beside the full run; one after the other,
    both took 6 min 20 s alone on 2 cores (2026-12-07)."""
    rerun = _start_rerun(tmp_path, "fig5_alexnet_imagenet_small", [0])
    try:
        _twin_to_completion(tmp_path, "fig5_alexnet_imagenet_small", [0])
    except BaseException:
        rerun.kill()
        rerun.wait()
        raise
    _rerun_gives_the_same_bytes(tmp_path, "fig5_alexnet_imagenet_small", [0], rerun)


@pytest.mark.reproduction  # about 14 minutes here at 2 seeds: run by hand (`-m reproduction`)
def test_reduced_figure_3_runs_to_completion_and_its_report_makes_sense(tmp_path):
    """The Figure-3 twin to completion at 2 of its 4 seeds; CI's check until the Figure-5 twin took
    its place for time."""
    _twin_to_completion(tmp_path, "fig3_imagenet_resnet50_small", [0, 1])


# ------------------------------------------------------------------ pruning during transfer


def test_transfer_chain_starts_from_the_source_network_and_waits_for_it(tmp_path):
    import torch

    from sslprune.compute import checkpoint, runner
    from sslprune.core.schema import SignalConfig, TaskConfig, RunConfig
    from sslprune.compute.runtime import local

    from conftest import tiny_config, tiny_optim

    cfg = tiny_config(tmp_path / "store", retrain=dataclasses.replace(tiny_config(tmp_path).retrain, schemes=[]))
    cfg.signals = {"transfer": SignalConfig(TaskConfig("labels"), tiny_optim(), init_from="rotnet", rewind="0it",
                                            data=DataConfig(name="digits")),
                   "rotnet": SignalConfig(TaskConfig("rotnet"), tiny_optim())}
    cfg.probe = dataclasses.replace(cfg.probe, signals=[])
    cfg.run = RunConfig(quiet=True, threads=1, workers=2)
    # The transfer chain is listed (and run) after its source even though it is named first.
    assert [c[0].signal for c in experiment.chains(cfg)] == ["rotnet", "transfer"]
    first = ImpLevel(cfg, "transfer", 0, 0)
    assert [p.label for p in first.parents()] == ["imp rotnet seed=0 level=0"]
    run_local(cfg, compute, uses_cuda)  # two workers: the transfer chain must not start before rotnet's level 0
    assert all(s.done() for s in experiment.stages(cfg))
    source = checkpoint.load(ImpLevel(cfg, "rotnet", 0, 0).dir / "model.pt")
    setup = runner.prepare(first, local(cfg.run))
    start = setup.net.state_dict()
    backbone = [k for k in source if k.startswith("backbone.")]
    assert backbone and all(torch.equal(start[k], source[k]) for k in backbone)
    assert start["head.weight"].shape[0] == 10 and source["head.weight"].shape[0] == 4  # fresh label head
    # Its identity names the source chain: another source config is another transfer chain.
    other = dataclasses.replace(cfg, signals={**cfg.signals, "rotnet": SignalConfig(
        TaskConfig("rotnet"), tiny_optim(lr=0.07))})
    assert ImpLevel(other, "transfer", 0, 0).dir != first.dir


def test_rewind_units_are_equivalent_as_the_paper_states():
    # ImageNet: 1,281,167 images at batch 1536 is 834 updates per epoch, 90 epochs of training.
    spe, total = 1281167 // 1536, 90 * (1281167 // 1536)
    three = report.equivalence("3ep", spe, 1536, total)
    assert (three["updates"], three["samples"]) == (2502, 2502 * 1536)
    assert round(three["percent"], 1) == 3.3
    for same in ("2502it", f"{2502 * 1536}sa"):
        assert report.equivalence(same, spe, 1536, total)["updates"] == 2502
    assert report.equivalence("3.3%", spe, 1536, total)["updates"] == 2476  # floor(0.033 x 75060)
    assert report.equivalence("2500it", spe, 1536, total)["epochs"] == pytest.approx(2.998, abs=1e-3)
    # The 10% subset: about 128,116 images at batch 768, 200 epochs; 30 epochs = 4980 updates (the
    # paper rounds to 5000) = 15% of training.
    spe10 = 128116 // 768
    ten = report.equivalence("30ep", spe10, 768, 200 * spe10)
    assert (ten["updates"], ten["percent"]) == (4980, 15.0)
