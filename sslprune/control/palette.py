"""Names and colours of the figures: fixed per start, task, metric and evaluation family, so a
start or a signal looks and reads the same in every panel and figure (figures.py draws them,
layout.py assigns them)."""
from __future__ import annotations

FAMILIES = ("pretext", "retrain", "probe", "svm", "finetune")
TITLES = {"pretext": "IMP's own task on the test split (pretext)",
          "retrain": "masks re-trained on labels",
          "probe": "linear probes on frozen features",
          "svm": "linear SVMs on frozen features",
          "finetune": "fine-tuning with the mask kept"}
SCHEME_NAMES = {"winning_ticket": "winning ticket", "random_reinit": "random re-init", "random": "random",
                "random_adjusted": "random (adjusted)"}
# Fixed colours per start, so a start looks the same in every figure.
SCHEME_COLORS = {"winning_ticket": "#1f77b4", "random_reinit": "#ff7f0e", "random": "#7f7f7f",
                 "random_adjusted": "#9467bd"}
# Fixed colours per task, so a signal looks the same in every by-start panel and figure (the paper's
# figures are not available as text here: these are matplotlib's tab colours, one hue per task, none
# of them a baseline's: grey random, purple adjusted random).
# The two-view signals of issue 24 take the last two tab colours (cyan, olive) and a dark red of
# tab20b; PALETTE gains three dark tab20b colours so a second signal of a task still finds a free one.
TASK_COLORS = {"labels": "#1f77b4", "rotnet": "#d62728", "exemplar": "#2ca02c", "npid": "#e377c2",
               "s4l": "#8c564b", "simclr": "#17becf", "mocov2": "#bcbd22", "byol": "#843c39"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#393b79", "#637939", "#7b4173")
TASK_NAMES = {"labels": "labels", "rotnet": "RotNet", "exemplar": "Exemplar", "npid": "NPID", "s4l": "S4L",
              "simclr": "SimCLR", "mocov2": "MoCo v2", "byol": "BYOL"}
METRIC_NAMES = {"top1": "top-1 accuracy", "mAP": "mAP", "knn_top1": "kNN top-1 accuracy",
                "pair_top1": "pair retrieval top-1"}
