"""Paper-style figures and the end-of-run pivot, from summaries of known numbers.

The summaries are built the way the report builds them (report.summarize over per-seed results),
from accuracies chosen here, so every mean, standard error and dense line has a known value. The
end-to-end runs (tests/test_demo.py, test_experiments.py) draw the same figures from real stores.
"""
from __future__ import annotations

import math

import pytest

from sslprune import api
from sslprune.control import figures, layout, report

SCHEMES = ("winning_ticket", "random_reinit", "random")


def results(cfg, evaluations, levels=4, seeds=(0, 1), metric=lambda s, e: "top1", remaining=None):
    """Per-seed rows: accuracy = 0.9 - 0.02 * level - 0.01 * (index of the evaluation) + 0.004 * seed."""
    out = []
    for signal in cfg.signals:
        for i, ev in enumerate(evaluations(signal)):
            for level in range(levels + 1):
                for seed in seeds:
                    out.append({"experiment": cfg.experiment, "signal": signal, "task": cfg.signals[signal].task.name,
                                "scope": "all", "evaluation": ev, "metric": metric(signal, ev), "level": level,
                                "remaining": (remaining or {}).get(signal, 0.8) ** level, "seed": seed,
                                "accuracy": 0.9 - 0.02 * level - 0.01 * i + 0.004 * seed})
    return out


@pytest.fixture(scope="module")
def demo():
    cfg = api.config("demo", "seeds=[0,1]", store="/nonexistent-store")
    rows = results(cfg, lambda s: ["pretext", *SCHEMES] + (["probe:digits"] if s == "rotnet" else []))
    return cfg, report.summarize(rows)


def test_pretext_panels_say_their_own_unit_and_never_share_the_label_axis(demo):
    cfg, summary = demo
    pretext = {p.signal: p for p in layout.panels(cfg, summary, "pretext")}
    assert pretext["rotnet"].ylabel == "rotation accuracy (%)"
    assert pretext["labels"].ylabel == "label accuracy (top-1) (%)"
    retrain = layout.panels(cfg, summary, "retrain")
    assert {p.ylabel for p in retrain} == {"top-1 accuracy on digits (%)"}
    # pretext results are in no re-training panel, re-training results in no pretext panel
    assert all(ln.label in ("winning ticket", "random re-init", "random") for p in retrain for ln in p.lines)
    assert all([ln.label for ln in p.lines] == ["pretext task"] for p in pretext.values())
    fig = figures.draw(layout.grid(list(pretext.values())), "t")
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_visible()]
    assert labels == ["label accuracy (top-1) (%)", "rotation accuracy (%)"]
    a, b = [ax for ax in fig.axes if ax.get_visible()]
    assert not a.get_shared_y_axes().joined(a, b)


def test_retrain_panel_lines_bands_dense_line_and_reversed_log_axis(demo):
    cfg, summary = demo
    (labels, rotnet) = layout.panels(cfg, summary, "retrain")
    assert (labels.signal, rotnet.signal) == ("labels", "rotnet")
    assert [ln.label for ln in labels.lines] == ["winning ticket", "random re-init", "random"]
    fig = figures.draw(layout.grid([labels, rotnet]), "t", sharey_rows=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    left, right = ax.get_xlim()
    assert left > 100 > 0.8 ** 4 * 100 > right  # dense on the left, sparsest on the right
    ticks = [100 * 0.8 ** lv for lv in range(5)]
    assert list(ax.get_xticks()) == pytest.approx(ticks)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "80", "64", "51.2", "41"]
    # winning ticket (index 1 in the results: pretext is 0): mean over seeds 0 and 1 at level L
    wt = labels.lines[0]
    assert wt.mean == pytest.approx([100 * (0.9 - 0.02 * lv - 0.01 + 0.002) for lv in range(5)])
    se = 100 * math.sqrt(2 * 0.002 ** 2) / math.sqrt(2)  # sd of (a, a + 0.004) over sqrt(2)
    assert wt.stderr == pytest.approx([se] * 5)
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert min(band) == pytest.approx(min(wt.mean) - se) and max(band) == pytest.approx(max(wt.mean) + se)
    # the dense line: random re-init at level 0 (index 2), dashed
    dense = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dense) == 1 and dense[0].get_ydata()[0] == pytest.approx(100 * (0.9 - 0.02 + 0.002))
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()  # one row, one label-accuracy scale


def test_legend_sits_outside_every_panel(demo):
    cfg, summary = demo
    fig = figures.draw(layout.grid(layout.panels(cfg, summary, "retrain")), "t")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    texts = [t.get_text() for t in legends[0].get_texts()]
    assert texts == ["winning ticket", "random re-init", "random", "dense: random re-init, level 0",
                     "± 1 s.e. over seeds"]
    box = legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        if ax.axison:  # a panel with data
            assert not box.overlaps(ax.get_window_extent(renderer))
    assert box.x1 <= fig.bbox.x1 + 1  # and inside the picture


def test_a_short_rows_legend_sits_in_its_empty_cell_clear_of_every_panel():
    cfg = api.config("fig2_voc07_finetune_resnet50_small", store="/nonexistent-store")
    rows = results(cfg, lambda s: ["pretext"] + (["finetune:digits"] if s == "rotnet" else []), levels=1, seeds=(0,))
    fig = figures.draw([layout.panels(cfg, report.summarize(rows), f) for f in ("pretext", "finetune")], "t")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 3  # pretext: rotnet, transfer; finetune: rotnet
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2 and not fig.axes[3].axison and fig.axes[3].get_legend() is not None
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in panels)


# The Figure-4 twin prunes two scopes (to fit 2 cores); the paper's grid has more: test with four.
FOUR_SCOPES = "prune.scopes=[stem,stage1,stage2,all]"


def test_layerwise_panels_form_a_grid_of_signals_by_scope():
    cfg = api.config("fig4_layerwise_resnet50_small", FOUR_SCOPES, store="/nonexistent-store")
    assert "labels@stem" in cfg.signals
    summary = report.summarize(results(cfg, lambda s: ["winning_ticket", "random"], levels=2, seeds=(0,)))
    rows = layout.grid(layout.panels(cfg, summary, "retrain"))
    assert [[p.signal for p in r] for r in rows] == [
        ["labels@stem", "labels@stage1", "labels@stage2", "labels@all"],
        ["rotnet@stem", "rotnet@stage1", "rotnet@stage2", "rotnet@all"]]
    assert rows[0][1].title == "labels@stage1\nlabels, layers up to stage1"
    assert rows[1][3].title == "rotnet@all\nRotNet"
    assert rows[0][0].xlabel == "weights of the pruned layers remaining (%)"
    fig = figures.draw(rows, "t")
    assert len([ax for ax in fig.axes if ax.get_legend()]) == 1  # both rows have the same lines


def test_semi_supervised_panels_name_their_label_subset():
    cfg = api.config("fig8_semisupervised_resnet50_small", store="/nonexistent-store")
    summary = report.summarize(results(cfg, lambda s: ["winning_ticket", "random"], levels=1, seeds=(0,)))
    titles = {p.signal: p.title for p in layout.panels(cfg, summary, "retrain")}
    subsets = {n: s.task for n, s in cfg.signals.items() if s.task.label_fraction < 1}
    assert subsets
    for name, task in subsets.items():
        what = "of the images of each class" if task.label_subset == "images" else "of the classes"
        assert f"{100 * task.label_fraction:g}% {what}" in titles[name], titles[name]


def test_write_draws_one_figure_per_family_and_the_overview(demo, tmp_path):
    cfg, summary = demo
    written = figures.write(cfg, summary, tmp_path)
    assert set(written) == {"pretext", "retrain", "retrain_signals", "probe", "overview"}
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written["overview"].name == "accuracy_vs_remaining.png"
    assert written["retrain"].name == "accuracy_vs_remaining_retrain.png"  # by start, the paper's layout
    assert written["retrain_signals"].name == "accuracy_vs_remaining_retrain_signals.png"  # per signal
    (probe,) = layout.panels(cfg, summary, "probe")
    assert [ln.label for ln in probe.lines] == ["on digits"] and probe.signal == "rotnet"
    # figures an earlier report drew and this one does not (no probe results now) are removed
    (tmp_path / "accuracy_vs_remaining_winning_ticket.png").write_bytes(b"old layout")
    (tmp_path / "weight_magnitudes.png").write_bytes(b"not a family figure")
    figures.write(cfg, [s for s in summary if not s["evaluation"].startswith("probe")], tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "accuracy_vs_remaining.png", "accuracy_vs_remaining_pretext.png", "accuracy_vs_remaining_retrain.png",
        "accuracy_vs_remaining_retrain_signals.png", "weight_magnitudes.png"]


def test_pivot_has_one_row_per_level_and_one_column_per_signal_and_evaluation(demo):
    cfg, summary = demo
    text = report.pivot(summary)
    blocks = text.split("## ")[1:]
    assert [b.splitlines()[0] for b in blocks] == [
        "IMP's own task on the test split (pretext) (%, mean ± s.e. over 2 seeds)",
        "masks re-trained on labels (%, mean ± s.e. over 2 seeds)",
        "linear probes on frozen features (%, mean ± s.e. over 2 seeds)"]
    retrain = [ln for ln in blocks[1].splitlines() if ln.startswith("|")]
    assert retrain[0] == ("| level | remaining | labels: winning ticket | labels: random re-init | labels: random | "
                          "rotnet: winning ticket | rotnet: random re-init | rotnet: random |")
    assert len(retrain) == 2 + 5  # header, rule, levels 0..4
    # level 2, labels winning ticket: 0.9 - 0.04 - 0.01 + 0.002 = 85.20 %, s.e. 0.20 %
    assert retrain[4].startswith("| 2 | 64.00% | 85.20 ± 0.20 | 84.20 ± 0.20 | 83.20 ± 0.20 |")
    pretext = [ln for ln in blocks[0].splitlines() if ln.startswith("|")]
    assert pretext[0] == "| level | remaining | labels: label accuracy (top-1) | rotnet: rotation accuracy |"


def test_pivot_shows_the_range_of_fractions_when_scoped_chains_differ():
    cfg = api.config("fig4_layerwise_resnet50_small", store="/nonexistent-store")
    rem = {n: (0.8 if n.endswith("@all") else 0.79) for n in cfg.signals}
    summary = report.summarize(results(cfg, lambda s: ["winning_ticket"], levels=1, seeds=(0,), remaining=rem))
    lines = [ln for ln in report.pivot(summary).splitlines() if ln.startswith("| 1 |")]
    assert lines[0].startswith("| 1 | 79.00-80.00% |")


def test_without_random_reinit_the_dense_line_is_the_random_start_at_level_0():
    cfg = api.config("fig4_layerwise_resnet50_small", store="/nonexistent-store")
    assert "random_reinit" not in cfg.retrain.schemes  # winning tickets vs random pruning only
    summary = report.summarize(results(cfg, lambda s: ["winning_ticket", "random"], levels=2, seeds=(0,)))
    panel = layout.panels(cfg, summary, "retrain")[0]
    assert panel.reference == "random" and panel.dense() == [(pytest.approx(100 * (0.9 - 0.01)), "black")]
    fig = figures.draw([[panel]], "t")
    assert len([ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]) == 1


def test_the_overview_stacks_each_familys_grid_instead_of_one_wide_row(tmp_path):
    cfg = api.config("fig4_layerwise_resnet50_small", FOUR_SCOPES, store="/nonexistent-store")
    summary = report.summarize(results(cfg, lambda s: ["pretext", "winning_ticket", "random"], levels=1, seeds=(0,)))
    figures.write(cfg, summary, tmp_path)
    import matplotlib.image

    h, w = matplotlib.image.imread(tmp_path / "accuracy_vs_remaining.png").shape[:2]
    retrain_h, retrain_w = matplotlib.image.imread(tmp_path / "accuracy_vs_remaining_retrain_signals.png").shape[:2]
    # 2 families x 2 rows (labels, rotnet) of 4 scopes: as wide as one family's figure, twice as tall
    assert w / retrain_w == pytest.approx(100 / 110, rel=0.05)
    assert h > 1.7 * retrain_h * 100 / 110


def test_the_random_features_reference_is_named_in_the_legend():
    from sslprune.control.layout import evaluation_label

    assert [evaluation_label(e) for e in ("pretext", "probe:digits", "probe:digits@init", "svm:voc07@init")] == [
        "pretext task", "on digits", "random features, on digits", "random features, on voc07"]


# ---------------------------------------------------------------- issue 22: Figure 3 laid out by start

def _by_start_rows(cfg):
    """Known accuracies, seeds 0/1 (+0.002 for seed 1: s.e. 0.1 point everywhere), levels 0-4 at 0.8^L:
    labels ticket 90 - 1 L, RotNet ticket 89 - 1.5 L, both re-inits 89 - 2 L, random 89 - 2 L (labels)
    and 88.8 - 2 L (RotNet) up to level 3, then a collapse at level 4 to 10 % (labels' random network)
    and 20 % (RotNet's)."""
    acc = {("labels", "winning_ticket"): lambda lv: 0.90 - 0.01 * lv,
           ("rotnet", "winning_ticket"): lambda lv: 0.89 - 0.015 * lv,
           ("labels", "random_reinit"): lambda lv: 0.89 - 0.02 * lv,
           ("rotnet", "random_reinit"): lambda lv: 0.89 - 0.02 * lv,
           ("labels", "random"): lambda lv: 0.10 if lv == 4 else 0.89 - 0.02 * lv,
           ("rotnet", "random"): lambda lv: 0.20 if lv == 4 else 0.888 - 0.02 * lv}
    return [{"experiment": cfg.experiment, "signal": sig, "task": cfg.signals[sig].task.name, "scope": "all",
             "evaluation": ev, "metric": "top1", "level": lv, "remaining": 0.8 ** lv, "seed": seed,
             "accuracy": f(lv) + 0.002 * seed} for (sig, ev), f in acc.items() for lv in range(5) for seed in (0, 1)]


def test_retraining_is_drawn_by_start_with_every_signal_a_curve_and_random_a_pooled_baseline():
    cfg = api.config("demo", "seeds=[0,1]", store="/nonexistent-store")
    summary = report.summarize(_by_start_rows(cfg))
    ((reinit, ticket),) = layout.by_start(cfg, summary)
    assert (reinit.title, ticket.title) == ("(a) random re-init", "(b) winning ticket")
    assert [(ln.label, ln.color) for ln in ticket.lines] == [
        ("labels", "#1f77b4"), ("rotnet", "#d62728"), ("random", "#7f7f7f")]
    assert ticket.lines[1].mean == pytest.approx([89.1, 87.6, 86.1, 84.6, 83.1])
    # random: the mean of the two signals' random networks, s.e. sqrt(0.1² + 0.1²) / 2
    rnd = ticket.lines[2]
    assert rnd.mean == pytest.approx([89.0, 87.0, 85.0, 83.0, 15.1])
    assert rnd.stderr == pytest.approx([math.sqrt(2) * 0.1 / 2] * 5)
    # dense: the network trained from scratch, random re-init at level 0 (both signals 89.1 %)
    assert ticket.dense() == [(pytest.approx(89.1), "black")] and ticket.reference == "random re-init"

    fig = figures.draw([[reinit, ticket]], "t", sharey_rows=True)
    a, b = fig.axes[:2]
    assert [a.get_title(), b.get_title()] == ["(a) random re-init", "(b) winning ticket"]
    assert [ln.get_label() for ln in b.get_lines() if not ln.get_label().startswith("_")] == [
        "labels", "rotnet", "random"]
    # y fitted to each panel's signal curves with ± s.e. and the dense line, padded by 5 % of the span
    # (re-init 81.0 to 89.2, ticket 83.0 to 90.2), one scale for the row; random's collapse to 15 %
    # stretches nothing
    assert layout.fit_y(reinit) == pytest.approx((81.0 - 0.41, 89.2 + 0.41))
    assert layout.fit_y(ticket) == pytest.approx((83.0 - 0.36, 90.2 + 0.36))
    lo, hi = 81.0 - 0.41, 90.2 + 0.36
    assert a.get_ylim() == pytest.approx((lo, hi)) and b.get_ylim() == pytest.approx((lo, hi))
    assert a.get_xscale() == "log" and a.get_xlim()[0] > 100 > 100 * 0.8 ** 4 > a.get_xlim()[1]
    # ... it is marked on the bottom edge at 40.96 % left, with its value
    (below,) = [ln for ln in b.get_lines() if ln.get_marker() == "v"]
    assert list(below.get_xdata()) == pytest.approx([100 * 0.8 ** 4]) and list(below.get_ydata()) == [pytest.approx(lo)]
    assert [t.get_text() for t in b.texts] == ["15"]
    dense = [ln for ln in b.get_lines() if ln.get_linestyle() == "--"]
    assert len(dense) == 1 and dense[0].get_ydata()[0] == pytest.approx(89.1)
    legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)
    assert [t.get_text() for t in legend.get_texts()] == [
        "labels", "rotnet", "random", "dense: random re-init, level 0", "± 1 s.e. over seeds"]


def test_a_network_reported_under_every_signals_name_counts_once_in_the_baseline():
    rows = [{"level": 1, "mean": 0.5, "stderr": 0.01, "count": 2, "remaining": 0.8}]
    (one,) = layout.pooled([rows, [dict(rows[0])]])  # a shared random stage: the same row twice
    assert (one["mean"], one["stderr"], one["count"]) == (0.5, 0.01, 2)
    (two,) = layout.pooled([rows, [{**rows[0], "mean": 0.7, "stderr": 0.02}]])
    assert (two["mean"], two["stderr"], two["count"]) == (pytest.approx(0.6), pytest.approx(math.sqrt(5e-4) / 2), 4)


def test_sweeps_draw_one_row_of_starts_per_swept_value_and_subsets_get_their_own_colour():
    cfg = api.config("fig4_layerwise_resnet50_small", FOUR_SCOPES, store="/nonexistent-store")
    summary = report.summarize(results(cfg, lambda s: ["winning_ticket", "random"], levels=2, seeds=(0,)))
    rows = layout.by_start(cfg, summary)
    assert [[p.title for p in r] for r in rows] == [
        ["(b) winning ticket\nstem"], ["(b) winning ticket\nstage1"], ["(b) winning ticket\nstage2"],
        ["(b) winning ticket\nall"]]  # no random re-init in this experiment: no panel (a)
    assert [ln.label for ln in rows[0][0].lines] == ["labels@stem", "rotnet@stem", "random"]
    cfg = api.config("fig8_semisupervised_resnet50_small", store="/nonexistent-store")
    summary = report.summarize(results(cfg, lambda s: ["winning_ticket", "random"], levels=1, seeds=(0,)))
    ((ticket,),) = layout.by_start(cfg, summary)
    colors = [ln.color for ln in ticket.lines if ln.label != "random"]
    assert len(colors) == len(cfg.signals) and len(set(colors)) == len(colors)
