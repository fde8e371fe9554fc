"""Every kind of stage's start record (sslprune.core.start), pinned as one table and built without torch.

The table is the answer to "what does a winning ticket start from, and how does a random re-init or
a random mask differ": read the rows retrain ... L2 side by side. A change to what any stage starts
from (a seed's parts, a file, the mask rule, the head, the schedule) changes a row here; a change
that keeps the rows keeps the numbers (the interpreter is sslprune.compute.runner.build)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_config

# The demo's stages of seed 0 (RotNet's chain; SVMs and fine-tuning of its level 2 on digits, which
# the demo does not plan but builds the same way), then the variants other presets add: pruning
# during transfer (fig2 twin), a probe on standardised features (fig1 twin), layerwise pruning (fig4 twin).
BUILD = r"""
import json, sys
from sslprune import api
from sslprune.core import start
from sslprune.core.stage import Finetune, ImpLevel, Probe, Retrain, Svm

cfg = api.config("demo", store="/s")
digits = cfg.retrain.data
demo = [ImpLevel(cfg, "rotnet", 0, 0), ImpLevel(cfg, "rotnet", 0, 2), Retrain(cfg, "rotnet", 0, 0, "random_reinit")]
demo += [Retrain(cfg, "rotnet", 0, 2, s) for s in ("winning_ticket", "random_reinit", "random", "random_adjusted")]
demo += [Probe(cfg, "rotnet", 0, 0, digits, at_init=True), Probe(cfg, "rotnet", 0, 2, digits),
         Svm(cfg, "rotnet", 0, 0, digits, at_init=True), Svm(cfg, "rotnet", 0, 2, digits),
         Finetune(cfg, "rotnet", 0, 2, digits)]
fig2 = api.config("fig2_voc07_finetune_resnet50_small", store="/s")
fig1 = api.config("fig1_transfer_resnet50_small", store="/s")
fig4 = api.config("fig4_layerwise_resnet50_small", store="/s")
variants = [ImpLevel(fig2, "transfer", 0, 0), ImpLevel(fig2, "transfer", 0, 1),
            Probe(fig1, "npid", 0, 2, fig1.probe.datasets[1]), ImpLevel(fig4, "rotnet@stage1", 0, 0),
            Retrain(fig4, "rotnet@stage1", 0, 4, "random")]
records = {s.label: start.of(s) for s in demo + variants}
json.dump({"demo": start.table(demo), "variants": start.table(variants),
           "configs": {k: r.config for k, r in records.items()}, "saves": {k: r.saves for k, r in records.items()},
           "heavy": sorted(m for m in ("torch", "torchvision", "sklearn", "scipy") if m in sys.modules)}, sys.stdout)
"""

DEMO = """\
stage                             | weights                                        | head                        | mask                                                                                 | trains | data                                       | schedule            | checks
----------------------------------+------------------------------------------------+-----------------------------+--------------------------------------------------------------------------------------+--------+--------------------------------------------+---------------------+-----------------
imp rotnet L0                     | draw 0/init/rotnet                             | keep                        | ones                                                                                 | all    | digits images rotnet (0/imp/0)             | from 0, saves k=1ep | -
imp rotnet L2                     | draw 0/init/rotnet, all <- rotnet L0 rewind.pt | keep                        | rotnet L1 mask.pt less 0.2 by |rotnet L1 model.pt|                                   | all    | digits images rotnet (0/imp/2)             | from k=1ep          | -
retrain dense L0                  | draw 0/reinit                                  | keep                        | ones                                                                                 | all    | digits images labels (0/retrain/0)         | from 0              | -
retrain rotnet winning_ticket L2  | draw 0/reinit, backbone <- rotnet L0 rewind.pt | draw 0/head                 | rotnet L2 mask.pt                                                                    | all    | digits images labels (0/retrain/2)         | from 0              | -
retrain rotnet random_reinit L2   | draw 0/reinit                                  | keep                        | rotnet L2 mask.pt                                                                    | all    | digits images labels (0/retrain/2)         | from 0              | -
retrain random (shared) L2        | draw 0/reinit                                  | keep                        | IMP's count after 2 x 0.2 of ones (draw 0/random-mask/2)                             | all    | digits images labels (0/retrain/2)         | from 0              | -
retrain rotnet random_adjusted L2 | draw 0/reinit                                  | keep                        | count of rotnet L2 mask.pt, zeros of rotnet L0 model.pt out (draw 0/adjusted-mask/2) | all    | digits images labels (0/retrain/2)         | from 0              | -
probe rotnet digits@init L0       | draw 0/init/rotnet                             | draw 0/probe-head/digits    | ones reported                                                                        | head   | digits images labels (0/probe/0/digits)    | from 0              | backbone frozen
probe rotnet digits L2            | rotnet L2 model.pt                             | draw 0/probe-head/digits    | rotnet L2 mask.pt reported                                                           | head   | digits images labels (0/probe/2/digits)    | from 0              | backbone frozen
svm rotnet digits@init L0         | draw 0/init/rotnet                             | unused                      | ones reported                                                                        | none   | digits features (0/svm)                    | -                   | -
svm rotnet digits L2              | rotnet L2 model.pt                             | unused                      | rotnet L2 mask.pt reported                                                           | none   | digits features (0/svm)                    | -                   | -
finetune rotnet digits L2         | rotnet L2 model.pt                             | draw 0/finetune-head/digits | rotnet L2 mask.pt                                                                    | all    | digits images labels (0/finetune/2/digits) | from 0              | pruned stay zero
"""

VARIANTS = """\
stage                       | weights                                              | head                            | mask                                                                  | trains | data                                                                 | schedule             | checks
----------------------------+------------------------------------------------------+---------------------------------+-----------------------------------------------------------------------+--------+----------------------------------------------------------------------+----------------------+-------
imp transfer L0             | draw 0/init/transfer, backbone <- rotnet L0 model.pt | draw 0/transfer-head            | ones                                                                  | all    | fashion_mnist images labels (0/imp/0)                                | from 0, saves k=0it  | -
imp transfer L1             | draw 0/init/transfer, all <- transfer L0 rewind.pt   | keep                            | transfer L0 mask.pt less 0.2 by |transfer L0 model.pt|                | all    | fashion_mnist images labels (0/imp/1)                                | from k=0it           | -
probe npid fashion_mnist L2 | npid L2 model.pt                                     | draw 0/probe-head/fashion_mnist | npid L2 mask.pt reported                                              | head   | fashion_mnist standardised features labels (0/probe/2/fashion_mnist) | from 0               | -
imp rotnet@stage1 L0        | draw 0/init/rotnet                                   | keep                            | ones up to stage1                                                     | all    | digits images rotnet (0/imp/0)                                       | from 0, saves k=11it | -
retrain random (shared) L4  | draw 0/reinit                                        | keep                            | IMP's count after 4 x 0.2 of ones up to stage1 (draw 0/random-mask/4) | all    | digits images labels (0/retrain/4)                                   | from 0               | -
"""


@pytest.fixture(scope="module")
def built() -> dict:
    """The records, built once in a fresh interpreter (so torch's absence means something)."""
    out = subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_stage_kind_has_a_record_built_without_torch(built):
    assert built["heavy"] == []
    print(built["demo"])
    print(built["variants"])
    assert built["demo"] == DEMO
    assert built["variants"] == VARIANTS


def test_a_record_carries_its_config_json(built):
    configs = built["configs"]
    dense = configs["retrain dense from scratch seed=0 level=0"]
    assert "chain" not in dense and dense["scheme"] == "dense"  # the dense re-training belongs to no one chain
    assert configs["imp rotnet seed=0 level=2"]["level"] == 2
    # The random mask belongs to no one chain either: its count's settings and the level name it.
    assert configs["retrain random mask seed=0 level=2"] == {
        "model": {"width": 8, "init": "per_signal"}, "prune": {}, "level": 2, "stage": "retrain", "scheme": "random",
        "data": {}, "optim": dense["optim"]}
    assert configs["retrain random mask up to stage1 seed=0 level=4"]["prune"] == {"scope": "stage1"}
    svm = configs["svm:digits rotnet seed=0 level=2"]
    assert svm["stage"] == "svm" and svm["folds"] == 3 and "costs" in svm
    assert configs["probe:fashion_mnist npid seed=0 level=2"]["features"] == "standardised"


def test_the_interpreter_refuses_a_check_it_does_not_know(tmp_path):
    import dataclasses

    from sslprune.compute import runner
    from sslprune.compute.runtime import local
    from sslprune.core.stage import Finetune
    from sslprune.core import start

    cfg = tiny_config(tmp_path / "s")
    record = start.of(Finetune(cfg, "labels", 0, 1, cfg.retrain.data))
    assert record.checks == ("pruned stay zero",)
    with pytest.raises(ValueError, match=r"finetune:digits labels seed=0 level=1: checks=\['pruned stays zero'\] "
                                         r"are not among backbone frozen, pruned stay zero"):
        runner.build(dataclasses.replace(record, checks=("pruned stays zero",)), local(cfg.run), 64)


def test_what_each_stage_kind_writes(built):
    saves = built["saves"]
    assert saves["imp rotnet seed=0 level=0"] == ["mask.pt", "model.pt", "weights.json"]  # natural sparsity of W_T
    assert saves["imp rotnet seed=0 level=2"] == saves["retrain random mask seed=0 level=2"] == ["mask.pt", "model.pt"]
    # Fine-tuning keeps its tuned network and mask; probes and SVMs only measure (result.json).
    assert saves["finetune:digits rotnet seed=0 level=2"] == ["mask.pt", "model.pt"]
    assert saves["probe:digits rotnet seed=0 level=2"] == saves["svm:digits rotnet seed=0 level=2"] == []
