"""What a network costs (sslprune.compute.cost): parameters and MACs, dense and masked, checked
against counts made by hand and against the published dense counts; and the columns, tables and
figure that carry them from result.json to the report."""
from __future__ import annotations

import csv
import json

import pytest

from sslprune.core.schema import ModelConfig
from sslprune.control import figures, layout, report

from conftest import SHORT_DEMO, tiny_config


def _meta(build):
    import torch

    with torch.device("meta"):
        return build()


def test_a_small_network_costs_what_a_hand_count_says():
    import torch
    from torch import nn
    from sslprune.compute import cost

    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),  # 4x4 out: 16 positions
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(),  # 2x2 out: 4 positions, with a bias
        nn.Flatten(), nn.Linear(12, 5))
    # weights: 18, 54 (+3 bias), 60 (+5 bias); batch norm 2 + 2
    dense = 18 * 16 + 54 * 4 + 60
    assert cost.count(net, (1, 4, 4)) == {"params": 18 + 4 + 57 + 65, "params_kept": 144, "prunable": 0,
                                          "prunable_kept": 0, "macs_dense": dense, "macs": dense}
    mask = {"0.weight": torch.ones(2, 1, 3, 3), "3.weight": torch.ones(3, 2, 3, 3)}
    mask["0.weight"][0] = 0  # 9 weights at 16 positions each
    mask["3.weight"][:, :, 0, 0] = 0  # 6 weights at 4 positions each
    got = cost.count(net, (1, 4, 4), mask)
    assert got == {"params": 144, "params_kept": 144 - 15, "prunable": 72, "prunable_kept": 72 - 15,
                   "macs_dense": dense, "macs": dense - 9 * 16 - 6 * 4}


def test_the_projects_small_resnet_on_digits_costs_what_a_hand_count_says():
    # stem 1->4 3x3 at 8x8; block 4->4 (two 3x3) at 8x8; block 4->8 stride 2 (two 3x3 + 1x1 shortcut) at 4x4;
    # block 8->16 stride 2 at 2x2; head 16 -> 10.
    from sslprune.compute import cost, model as models

    hand = (1 * 4 * 9 * 64 + 2 * 4 * 4 * 9 * 64 + (4 * 8 * 9 + 8 * 8 * 9 + 4 * 8) * 16
            + (8 * 16 * 9 + 16 * 16 * 9 + 8 * 16) * 4 + 16 * 10)
    assert hand == 49568
    net = models.build(ModelConfig(name="resnet_small", width=4), 1, 10, 0)
    got = cost.count(net, (1, 8, 8))
    assert got["macs_dense"] == got["macs"] == hand
    assert got["params"] == sum(p.numel() for p in net.parameters())


def test_published_dense_counts():
    # torchvision's ResNet-50 at 224 px: "4.09 GFLOPS" (multiply-adds) and 25.6 M parameters in its docs.
    import torchvision
    from sslprune.compute import cost, model as models

    r50 = cost.count(_meta(torchvision.models.resnet50), (3, 224, 224))
    assert r50["macs_dense"] == 4_089_184_256 and r50["params"] == 25_557_032
    ours = cost.count(_meta(lambda: models.build(ModelConfig(name="resnet50", width=64), 3, 1000, 0)), (3, 224, 224))
    assert (ours["macs_dense"], ours["params"]) == (r50["macs_dense"], r50["params"])  # the same network
    # torchvision's AlexNet: 0.71 GFLOPS, 61.1 M parameters
    alex = cost.count(_meta(torchvision.models.alexnet), (3, 224, 224))
    assert (alex["macs_dense"], alex["params"]) == (714_188_480, 61_100_840)
    # ResNet-18 for CIFAR (3x3 stem, no max-pool) at 32 px: the usual 0.56 G MACs, 11.17 M parameters
    r18 = cost.count(_meta(lambda: models.build(ModelConfig(name="resnet18_cifar", width=64), 3, 10, 0)),
                     (3, 32, 32))
    assert (r18["macs_dense"], r18["params"]) == (555_422_720, 11_173_962)


def test_the_projects_alexnet_is_counted_layer_by_layer():
    """The DeepCluster AlexNet (96-256-384-384-256 channels, batch norm, no biases) is not torchvision's
    (64-192-384-256-256): its count, derived here from the published layer sizes."""
    from sslprune.compute import cost, model as models

    size, cin, hand = 224, 3, 0
    for c, k, stride, pad, pool in models.ALEXNET:
        size = (size + 2 * pad - k) // stride + 1
        hand += cin * c * k * k * size * size
        cin = c
        if pool:
            size = -(-(size - 3) // 2) + 1  # 3x3 stride-2 max-pool, ceil mode
    assert size == 6
    hand += 256 * 36 * 4096 + 4096 * 4096 + 4096 * 10
    got = cost.count(_meta(lambda: models.build(ModelConfig(name="alexnet", width=64), 3, 10, 0)), (3, 224, 224))
    assert got["macs_dense"] == hand == 1_131_201_056


def test_counting_changes_nothing_in_the_network(monkeypatch):
    import torch
    from torch import nn
    from sslprune.compute import cost, model as models

    net = models.build(ModelConfig(name="resnet_small", width=4), 1, 10, 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    # Every forward hook counting registers is removed (seen through torch's public hook API).
    registered, removed = [], []
    register = nn.Module.register_forward_hook

    def spy(module, *args, **kwargs):
        handle = register(module, *args, **kwargs)
        remove = handle.remove
        handle.remove = lambda: (removed.append(handle), remove())
        registered.append(handle)
        return handle

    monkeypatch.setattr(nn.Module, "register_forward_hook", spy)
    on_cpu = cost.count(net, (1, 8, 8))
    monkeypatch.undo()
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(registered) == len(layers) > 0 and [id(h) for h in removed] == [id(h) for h in registered]
    on_meta = cost.count(_meta(lambda: models.build(ModelConfig(name="resnet_small", width=4), 1, 10, 0)), (1, 8, 8))
    assert on_cpu == on_meta


def _summary_with_costs():
    cfg = tiny_config("/nonexistent-store")
    rows = []
    for level in range(3):
        for seed in (0, 1):
            rows.append({"experiment": "tiny", "signal": "labels", "task": "labels", "scope": "all",
                         "evaluation": "winning_ticket", "metric": "top1", "level": level, "remaining": 0.8 ** level,
                         "seed": seed, "accuracy": 0.9 - 0.1 * level, "params": 5000, "params_kept": 5000 - 100 * level,
                         "prunable": 4000, "prunable_kept": 4000 - 100 * level, "macs_dense": 2_000_000,
                         "macs": 2_000_000 - 300_000 * level - 1000 * seed})
    return cfg, report.summarize(rows)


def test_summary_means_the_costs_over_seeds_and_the_macs_figure_plots_them(tmp_path):
    cfg, summary = _summary_with_costs()
    assert [(s["level"], s["macs"], s["params_kept"], s["macs_dense"]) for s in summary] == [
        (0, 1_999_500, 5000, 2_000_000), (1, 1_699_500, 4900, 2_000_000), (2, 1_399_500, 4800, 2_000_000)]
    md = report.markdown(summary)
    assert "| labels | winning_ticket | 1 | 80.00% | 80.00 ± 0.00 | top1 | 2 | 1.7 M | 84.97% | 4.9 K |" in md
    (panel,) = layout.panels(cfg, summary, "retrain", layout.macs_axis(summary))
    assert panel.xlabel == "MACs of one forward pass (M, log scale)"
    (line,) = panel.lines
    assert line.x == pytest.approx([1.9995, 1.6995, 1.3995]) and line.mean == pytest.approx([90, 80, 70])
    fig = figures.draw([[panel]], "t")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "MACs of one forward pass (M, log scale)" and ax.get_xscale() == "log"
    assert list(ax.lines[0].get_xdata()) == line.x and ax.get_xlim()[0] > ax.get_xlim()[1]  # dense on the left
    written = figures.write(cfg, summary, tmp_path)
    assert written["macs:retrain"].name == "accuracy_vs_macs_retrain.png"
    assert written["macs:overview"].name == "accuracy_vs_macs.png"
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_of_stages_without_stored_costs_leave_the_cells_empty(tmp_path):
    """A store written before the counts existed: empty cost cells, no MACs figure, the rest unchanged."""
    cfg, summary = _summary_with_costs()
    for s in summary:
        s.update(macs=None, macs_dense=None, params_kept=None)
    assert "| top1 | 2 |  |  |  |" in report.markdown(summary)
    assert set(figures.write(cfg, summary, tmp_path)) == {"retrain", "retrain_signals", "overview"}


def test_a_tiny_run_stores_its_costs_in_result_json_and_results_csv(short_demo):
    from sslprune import api
    from sslprune.control.experiment import measurements

    store, _ = short_demo  # the session's short demo (conftest): read, not changed
    cfg = api.config("demo", *SHORT_DEMO, store=store)
    out = store / "reports" / cfg.experiment
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    # The original columns first, in their places; the cost columns appended (tests/test_demo.py pins both).
    assert list(table[0]) == ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining",
                              "seed", "accuracy", "params", "params_kept", "prunable", "prunable_kept",
                              "macs_dense", "macs"]
    by_stage = {(s.signal, s.evaluation, s.level, s.seed): s for s in measurements(cfg)}  # shared ones per name
    for row in table:
        stage = by_stage[(row["signal"], row["evaluation"], int(row["level"]), int(row["seed"]))]
        result = stage.result()
        assert {k: int(row[k]) for k in report.COST} == {k: result[k] for k in report.COST}
        assert result["input_size"] == [1, 8, 8]
        # the hand count of test_the_projects_small_resnet_on_digits...: 10 outputs, or RotNet's 4
        assert result["macs_dense"] == (49568 if row["task"] == "labels" or row["evaluation"] != "pretext"
                                        else 49568 - 16 * 6)
        # kept weights agree with the stage's sparsity report (the IMP level's for an evaluation)
        if row["evaluation"].endswith("@init"):  # the dense initial weights: every prunable weight kept
            sparsity = {"kept": result["prunable"], "total": result["prunable"]}
        else:
            mask_dir = stage.dir if (stage.dir / "sparsity_report.json").exists() else stage.parents()[0].dir
            sparsity = json.loads((mask_dir / "sparsity_report.json").read_text())["global"]
        assert (result["prunable_kept"], result["prunable"]) == (sparsity["kept"], sparsity["total"])
        assert result["params"] - result["params_kept"] == result["prunable"] - result["prunable_kept"]
        assert result["prunable_kept"] / result["prunable"] == pytest.approx(result["remaining"])
        if int(row["level"]) == 0:
            assert result["macs"] == result["macs_dense"]
        else:
            assert result["macs"] < result["macs_dense"]
    with open(out / "summary.csv") as f:
        assert list(next(csv.DictReader(f)))[-3:] == ["params_kept", "macs_dense", "macs"]
    for name in ("accuracy_vs_macs.png", "accuracy_vs_macs_retrain.png", "accuracy_vs_macs_pretext.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
