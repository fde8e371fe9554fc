"""The paper's claims that an experiment can test, written once as data (read by sslprune.control.findings).

Caron et al. 2020 (arXiv 2001.03554) state their findings in words; each claim below turns one of
them into a paired per-seed difference of two (or four) measurements of the same seed, and says
what the paper expects of it over a range of weights remaining:

- `higher` / `lower`: the difference is above / below zero by more than two standard errors over
  seeds at a level (with one seed: its sign);
- `match`: the whole interval mean ± 2 standard errors is within `margin` (accuracy, 0.01 = 1
  point) of zero, an equivalence test (with one seed: its value);
- `not_lower`: its mean is not below -`margin`.

A claim is about a *subject* signal (one finding per subject and evaluated data set); its terms
name measurements relative to the subject: the subject itself, or the signal of another task
pruned with the same scope and rewind point (`task`), the subject's sibling with another rewind
or scope (`rewind`, `scope`), or the chain pruned during transfer from it (`transfer`). Ranges of
weights remaining are ours where the paper gives none in words (the winning-ticket claims are made
where its curves separate: 20% of the weights or fewer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SELF_SUPERVISED = ("rotnet", "exemplar", "npid", "simclr", "mocov2", "byol")  # the last three: issue 24
SPARSE = (0.0, 0.2)  # the winning-ticket claims: 20% of the weights left or fewer
PRUNED = (0.0, 0.999)  # every pruned level (level 0 excluded)


@dataclass(frozen=True)
class Term:
    """One measurement of a paired difference, counted with `sign`.

    evaluation: a results.csv evaluation, a pattern `probe:*` / `svm:*` / `finetune:*` (one finding
    per evaluated data set, first term only), `=` (the first term's evaluation) or `=@init` (its
    random-features reference)."""

    evaluation: str
    sign: int = 1
    task: Optional[str] = None  # None: the subject; else that task's signal (full labels) with the subject's scope and rewind
    level: Optional[int] = None  # None: the subject's level; 0: the dense network
    rewind: Optional[str] = None  # "zero": the sibling rewound to 0 updates
    scope: Optional[str] = None  # "all" or "first" (the shallowest scope of the experiment)
    transfer: bool = False  # the chain pruned during transfer, started from the subject's dense network


@dataclass(frozen=True)
class Claim:
    key: str
    text: str  # the paper's finding, in its words where paper notes give them
    source: str
    tasks: tuple  # subject signals: these tasks ...
    terms: tuple  # ... the difference sum(sign * measurement)
    expect: str  # higher | lower | match | not_lower
    remaining: tuple = PRUNED  # (low, high) inclusive: the levels whose subject measurement falls in it
    margin: float = 0.01
    labels: str = "any"  # subject's labels: any | all (full labels) | subset (a label subset)
    rewind: str = "any"  # subject's rewind point: any | late (not 0 updates)
    scope: str = "any"  # subject's scope: any | all


WT, RR, RANDOM = "winning_ticket", "random_reinit", "random"

CLAIMS = (
    Claim("labels_ticket_above_reinit",
          "Rewinding helps label masks a lot: label winning tickets are above the random re-init of the same mask.",
          "Findings; Fig. 3, Table 1", ("labels",),
          (Term(WT), Term(RR, -1)), "higher", SPARSE, labels="all", rewind="late"),
    Claim("ssl_rewind_gain_below_labels",
          "Rewinding helps self-supervised masks little: their ticket's gain over random re-init is below the "
          "label masks' gain.",
          "Findings; Fig. 3, Table 1", SELF_SUPERVISED,
          (Term(WT, 1, task="labels"), Term(RR, -1, task="labels"), Term(WT, -1), Term(RR, 1)),
          "higher", SPARSE, rewind="late"),
    Claim("ssl_reinit_matches_labels",
          "With random re-init, self-supervised masks match label masks.",
          "Findings; Fig. 3", SELF_SUPERVISED,
          (Term(RR), Term(RR, -1, task="labels")), "match", PRUNED),
    Claim("ssl_ticket_below_labels",
          "With winning tickets, self-supervised tickets are below label tickets.",
          "Findings; Fig. 3", SELF_SUPERVISED,
          (Term(WT), Term(WT, -1, task="labels")), "lower", SPARSE, rewind="late"),
    Claim("ssl_ticket_above_random",
          "Self-supervised winning tickets are far above random pruning.",
          "Findings; Fig. 3", SELF_SUPERVISED,
          (Term(WT), Term(RANDOM, -1)), "higher", SPARSE, rewind="late"),
    Claim("reinit_above_random",
          "A pruned mask re-trained from fresh weights is above a random mask of the same density "
          "(the random re-init and random curves of Fig. 3; listed in issue 13, not a sentence of the paper).",
          "Fig. 3 curves", ("labels",) + SELF_SUPERVISED,
          (Term(RR), Term(RANDOM, -1)), "higher", SPARSE),
    Claim("transfer_kept_to_10pct",
          "Pruned self-supervised features keep their transfer quality down to about 10% of weights remaining.",
          "Findings; Fig. 1", SELF_SUPERVISED,
          (Term("probe:*"), Term("=", -1, level=0)), "not_lower", (0.1, 0.999)),
    Claim("transfer_kept_to_10pct_svm",
          "Pruned self-supervised features keep their transfer quality down to about 10% of weights remaining "
          "(linear SVMs).",
          "Findings; Fig. 1", SELF_SUPERVISED,
          (Term("svm:*"), Term("=", -1, level=0)), "not_lower", (0.1, 0.999)),
    Claim("transfer_drops_below_5pct",
          "Below about 5% of weights remaining, the transfer of pruned self-supervised features drops significantly.",
          "Findings; Fig. 1", SELF_SUPERVISED,
          (Term("probe:*"), Term("=", -1, level=0)), "lower", (0.0, 0.05)),
    Claim("transfer_drops_below_5pct_svm",
          "Below about 5% of weights remaining, the transfer of pruned self-supervised features drops significantly "
          "(linear SVMs).",
          "Findings; Fig. 1", SELF_SUPERVISED,
          (Term("svm:*"), Term("=", -1, level=0)), "lower", (0.0, 0.05)),
    Claim("features_above_random",
          "Trained features are far above random features (the paper's reference: random features 7.7 mAP on "
          "VOC07 against 88 for supervised ones).",
          "Fig. 1 reference lines", ("labels",) + SELF_SUPERVISED + ("s4l",),
          (Term("probe:*"), Term("=@init", -1)), "higher", (1.0, 1.0)),
    Claim("features_above_random_svm",
          "Trained features are far above random features (linear SVMs; random features 7.7 mAP on VOC07).",
          "Fig. 1 reference lines", ("labels",) + SELF_SUPERVISED + ("s4l",),
          (Term("svm:*"), Term("=@init", -1)), "higher", (1.0, 1.0)),
    Claim("finetune_beats_pruning_during_transfer",
          "Fine-tuning an already pruned pretrained network beats pruning during transfer.",
          "Findings; Fig. 2", SELF_SUPERVISED,
          (Term("finetune:*"), Term("pretext", -1, transfer=True)), "higher", PRUNED),
    Claim("gap_grows_with_depth",
          "The gap between label and self-supervised winning tickets grows with the depth of the pruned layers.",
          "Findings; Fig. 4, Fig. 9", SELF_SUPERVISED,
          (Term(WT, 1, task="labels", scope="all"), Term(WT, -1, scope="all"),
           Term(WT, -1, task="labels", scope="first"), Term(WT, 1, scope="first")),
          "higher", SPARSE, scope="all"),
    Claim("few_labels_above_rotnet",
          "A few labels (S4L, 10% labels) give better tickets than RotNet alone.",
          "Findings; Fig. 8", ("s4l", "labels"),
          (Term(WT), Term(WT, -1, task="rotnet")), "higher", SPARSE, labels="subset"),
    Claim("rewind_helps_label_tickets",
          "Late resetting helps label masks a lot: label tickets rewound to k updates are above those rewound to 0.",
          "Findings; Table 1, Fig. 7", ("labels",),
          (Term(WT), Term(WT, -1, rewind="zero")), "higher", SPARSE, labels="all", rewind="late"),
    Claim("rewind_helps_ssl_tickets_less",
          "Late resetting helps self-supervised masks little: their gain from rewinding to k instead of 0 is below "
          "the label masks' gain.",
          "Findings; Table 1, Fig. 7", SELF_SUPERVISED,
          (Term(WT, 1, task="labels"), Term(WT, -1, task="labels", rewind="zero"), Term(WT, -1),
           Term(WT, 1, rewind="zero")), "higher", SPARSE, rewind="late"),
)
