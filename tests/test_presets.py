"""The experiment presets: they compose into valid configs holding the paper's hyper-parameters,
they run end to end through the real CLI on data in the real on-disk layouts, and bad input is
refused before anything is written or trained."""
from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from sslprune.core.schema import DATASETS, DEFAULT_SCHEMES as SCHEMES, MODELS, Config

from conftest import ROOT, cli
from test_dataset import write_cifar10, write_image_folder

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def composed(*overrides: str) -> Config:
    from hydra import compose, initialize_config_dir

    import launch.compose
    from sslprune.launch.compose import typed

    with initialize_config_dir(config_dir=launch.compose.CONF_DIR, version_base=None):
        return typed(compose("config", overrides=list(overrides)))


def optim(c, **want):
    got = {k: getattr(c, k) for k in want}
    assert got == want


# ---------------------------------------------------------------- composition


def test_the_known_presets_are_there():
    assert {"demo", "cifar10_resnet18", "imagenet_resnet50"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_and_validates(name):
    c = composed(f"experiment={name}")  # typed() validates
    assert c.experiment == name  # reports land under reports/<preset name>
    assert c.signals and c.seeds
    assert Path(c.store).is_absolute()


def test_cifar10_resnet18_has_the_paper_hyper_parameters():
    c = composed("experiment=cifar10_resnet18")
    assert set(c.signals) == {"labels", "rotnet"}
    assert c.signals["labels"].task.name == "labels" and c.signals["rotnet"].task.name == "rotnet"
    for o in (c.signals["labels"].optim, c.signals["rotnet"].optim, c.retrain.optim):
        optim(o, optimizer="adam", epochs=160, batch_size=512, lr=1e-3, weight_decay=1e-4, milestones=[80, 120],
              warmup_epochs=0, gamma=0.1)
    assert (c.prune.rewind, c.prune.levels, c.prune.rate) == ("1ep", 30, 0.2)
    assert c.seeds == [0, 1, 2, 3, 4, 5]
    assert (c.model.name, c.model.width) == ("resnet18_cifar", 64)
    assert c.data.name == "cifar10" and c.retrain.data.name == "cifar10"
    assert c.retrain.schemes == list(SCHEMES) and c.retrain.levels is None
    assert c.probe.signals == ["rotnet"] and [d.name for d in c.probe.datasets] == ["cifar10"]


def test_imagenet_resnet50_has_the_paper_hyper_parameters():
    c = composed("experiment=imagenet_resnet50")
    assert set(c.signals) == {"labels", "rotnet"}
    labels, rotnet = c.signals["labels"].optim, c.signals["rotnet"].optim
    for o in (labels, c.retrain.optim):
        optim(o, optimizer="sgd", momentum=0.9, epochs=90, batch_size=1536, lr=0.1, weight_decay=1e-4,
              milestones=[50, 65, 80], warmup_epochs=0, gamma=0.1)
    optim(rotnet, optimizer="sgd", momentum=0.9, epochs=90, batch_size=1536, lr=1.0, warmup_epochs=5,
          weight_decay=1e-5, milestones=[50, 65, 80], gamma=0.1)
    assert c.signals["rotnet"].task.name == "rotnet" and c.signals["labels"].task.name == "labels"
    assert (c.prune.rewind, c.prune.levels, c.prune.rate) == ("3ep", 30, 0.2)
    assert c.seeds == [0, 1, 2]
    assert c.model.name == "resnet50" and c.model.width == 64  # torchvision's standard ResNet-50
    assert c.data.name == "imagenet" and c.data.image_size == 224 and c.retrain.data.name == "imagenet"
    assert c.retrain.schemes == list(SCHEMES)
    assert c.probe.signals == ["rotnet"]
    assert [d.name for d in c.probe.datasets] == ["imagenet", "places205"]


def test_demo_preset():
    c = composed("experiment=demo")
    assert c.data.name == "digits" and c.retrain.data.name == "digits"
    assert set(c.signals) == {"labels", "rotnet"}
    assert len(c.seeds) == 2
    assert (1 - c.prune.rate) ** c.prune.levels <= 0.05
    assert c.retrain.schemes == list(SCHEMES)
    assert c.probe.signals == ["rotnet"] and c.probe.datasets


def test_demo_is_the_default():
    assert composed() == composed("experiment=demo")


def test_cli_group_and_value_overrides_win_over_the_preset():
    c = composed("experiment=demo", "model=resnet18_cifar")
    assert (c.model.name, c.model.width) == ("resnet18_cifar", 64)
    c = composed("model=resnet18_cifar", "experiment=demo")  # order on the command line does not matter
    assert c.model.name == "resnet18_cifar"
    c = composed("experiment=cifar10_resnet18", "model=resnet_small", "prune.levels=3",
                 "signals.rotnet.optim.lr=0.01")
    assert c.model.name == "resnet_small" and c.prune.levels == 3
    assert c.signals["rotnet"].optim.lr == 0.01 and c.signals["labels"].optim.lr == 1e-3


# ---------------------------------------------------------------- end to end through sslprune-run


def quick(*optims: str, epochs=1, batch_size=64) -> list[str]:
    return [f"{o}.{k}" for o in optims for k in (f"batch_size={batch_size}", f"epochs={epochs}", "milestones=[]")]


def report(store: Path, experiment: str) -> list[dict]:
    out = store / "reports" / experiment
    for f in ("results.csv", "summary.csv", "summary.md", "accuracy_vs_remaining.png"):
        assert (out / f).is_file(), f"missing {out / f}"
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def check_rows(rows: list[dict], signals: set, evaluations: dict, levels=(0, 1)) -> None:
    """Every (signal, evaluation, level) once, level L with 0.8**L of the weights left; every probe
    and SVM also once at level 0 on the initial weights (`<evaluation>@init`, the random reference)."""
    seen = {(r["signal"], r["evaluation"], int(r["level"])) for r in rows}
    want = {(s, e, lv) for s in signals for e in evaluations[s] for lv in levels}
    want |= {(s, e + "@init", 0) for s in signals for e in evaluations[s] if e.startswith(("probe:", "svm:"))}
    assert seen == want and len(rows) == len(want)
    for r in rows:
        assert abs(float(r["remaining"]) - 0.8 ** int(r["level"])) < 1e-3
        assert 0.0 <= float(r["accuracy"]) <= 1.0


def chain_configs(store: Path) -> list[dict]:
    """What each IMP chain recorded as its identity (values equal to the schema default left out)."""
    return [json.loads(f.read_text())["chain"] for f in sorted((store / "imp").glob("*/seed_0/level_0/config.json"))]


@pytest.mark.slow
def test_cifar10_resnet18_preset_runs_end_to_end(tmp_path):
    root = tmp_path / "cifar10"
    write_cifar10(root, per_batch=52, n_test=64)  # 260 train / 64 test images, the real pickle layout
    store = tmp_path / "store"
    p = cli("sslprune-run", "experiment=cifar10_resnet18", f"data.root={root}", f"retrain.data.root={root}",
            f"probe.datasets=[{{name:cifar10,root:'{root}'}}]", f"store={store}", "seeds=[0]", "prune.levels=1",
            "model.width=4", *quick("signals.labels.optim", "signals.rotnet.optim", epochs=2),
            *quick("retrain.optim", "probe.optim"), "run.workers=1", "run.threads=1", "run.quiet=true")
    rows = report(store, "cifar10_resnet18")
    pretext_and_schemes = ["pretext", *SCHEMES]
    check_rows(rows, {"labels", "rotnet"},
               {"labels": pretext_and_schemes, "rotnet": pretext_and_schemes + ["probe:cifar10"]})
    assert {r["seed"] for r in rows} == {"0"} and {r["experiment"] for r in rows} == {"cifar10_resnet18"}
    # the chains ran with the preset's recipe (Adam, rewind 1ep), only shortened
    chains = chain_configs(store)
    assert len(chains) == 2
    for chain in chains:
        assert chain["optim"]["optimizer"] == "adam" and chain["optim"]["lr"] == 1e-3
        assert chain["model"]["name"] == "resnet18_cifar" and chain["data"]["name"] == "cifar10"
        assert chain["prune"].get("rewind", "1ep") == "1ep"  # 1ep is the schema default, left out of identity
    assert "report written to" in p.stdout


@pytest.mark.slow
def test_imagenet_resnet50_preset_runs_end_to_end(tmp_path):
    """ResNet-50 (width_per_group 8) at 32 px on a 2-class ImageFolder tree: about 30 s of one core.

    The RotNet learning rate is lowered from the preset's 1.0 (5 warm-up epochs) to 0.1 without
    warm-up: a handful of steps at lr 1.0 leaves batch-norm statistics so far off that the frozen
    features of the linear probe overflow. Everything else keeps the preset's recipe."""
    root = tmp_path / "imagenet"
    write_image_folder(root, train={"n01440764": 8, "n01443537": 8}, val={"n01440764": 8, "n01443537": 8},
                       size=(40, 48))
    store = tmp_path / "store"
    cli("sslprune-run", "experiment=imagenet_resnet50", f"data.root={root}", "data.image_size=32", "data.workers=0",
        f"retrain.data.root={root}", "retrain.data.image_size=32", "retrain.data.workers=0",
        f"probe.datasets=[{{name:imagenet,root:'{root}',image_size:32,workers:0}},"
        f"{{name:places205,root:'{root}',image_size:32,workers:0}}]",
        f"store={store}", "seeds=[0]", "prune.levels=1", "model.width=8",
        # 16 training images in batches of 2: 8 updates an epoch, 4 epochs so the 3ep rewind point lies inside
        *quick("signals.labels.optim", "signals.rotnet.optim", epochs=4, batch_size=2),
        "signals.rotnet.optim.warmup_epochs=0", "signals.rotnet.optim.lr=0.1",
        *quick("retrain.optim", "probe.optim", epochs=1, batch_size=8),
        "run.workers=1", "run.threads=1", "run.quiet=true", "run.eval_batch_size=16")
    rows = report(store, "imagenet_resnet50")
    pretext_and_schemes = ["pretext", *SCHEMES]
    check_rows(rows, {"labels", "rotnet"},
               {"labels": pretext_and_schemes,
                "rotnet": pretext_and_schemes + ["probe:imagenet", "probe:places205"]})
    chains = chain_configs(store)
    assert len(chains) == 2
    for chain in chains:
        # model.init is named: the default differs from what ran before the field (shared)
        assert chain["model"] == {"name": "resnet50", "width": 8, "init": "per_signal"} and chain["prune"]["rewind"] == "3ep"
    # level 1 was rewound to 3 epochs (24 of 32 updates) and trained the rest
    results = [json.loads(f.read_text()) for f in (store / "imp").glob("*/seed_0/level_1/result.json")]
    assert [(r["start_step"], r["steps"]) for r in results] == [(24, 32), (24, 32)]


# ---------------------------------------------------------------- bad input through the real CLI


BAD = {
    "unknown-preset": (["experiment=nope"], ["nope", *PRESETS]),
    "unknown-key": (["foo=1"], ["foo"]),
    "wrong-type": (["prune.rate=abc"], ["prune.rate", "abc"]),
    "rate-outside-0-1": (["prune.rate=1.5"], ["prune.rate", "1.5"]),
    "negative-level": (["level=-1"], ["level=-1"]),
    "unknown-model": (["model.name=vgg99"], ["vgg99", *MODELS]),
    "unknown-dataset": (["data.name=mnist2"], ["mnist2", *DATASETS]),
    "rewind-beyond-training": (["prune.rewind=20ep"], ["prune.rewind=20ep", "beyond"]),
    "rewind-updates-beyond-training": (["prune.rewind=5000it"], ["prune.rewind=5000it", "beyond"]),
    "batch-larger-than-data": (["retrain.optim.batch_size=5000"], ["retrain.optim.batch_size=5000", "1438"]),
    # data that is not there fails at the up-front check ({tmp} is the test's own empty folder)
    "empty-data-root": (["experiment=cifar10_resnet18", "data.root={tmp}"], ["{tmp}", "data_batch_1"]),
    "missing-probe-root": (["experiment=imagenet_resnet50", "data.root={tmp}/in", "retrain.data.root={tmp}/in",
                            "probe.datasets.0.root={tmp}/in", "probe.datasets.1.root={tmp}/places"],
                           ["{tmp}/places", "places205"]),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory) -> dict:
    """Every bad command at once (each is mostly interpreter start-up), collected by case."""
    procs = {}
    images = tmp_path_factory.mktemp("imagefolder")
    for split in ("train", "val"):
        (images / split / "n01").mkdir(parents=True)
    for case, (args, _) in BAD.items():
        tmp = tmp_path_factory.mktemp(case)
        if case == "missing-probe-root":  # ImageNet itself is there (class folders suffice for the check)
            (tmp / "in").symlink_to(images)
        store = tmp / "store"
        cmd = ["sslprune-run", f"store={store}", *(a.format(tmp=tmp) for a in args)]
        procs[case] = (store, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    out = {}
    for case, (store, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[case] = (store, proc.returncode, stdout + stderr, store.parent)
    return out


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_before_any_work(bad_runs, case):
    store, returncode, out, tmp = bad_runs[case]
    assert returncode != 0, out
    for w in BAD[case][1]:
        w = w.format(tmp=tmp)
        assert w in out, f"{w!r} not in the error:\n{out}"
    assert "Traceback" not in out  # one clear message, not a stack trace
    assert not store.exists(), f"{store} was created"
    assert "[sslprune] experiment" not in out and " step " not in out  # no stage was planned or trained
