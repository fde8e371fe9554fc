"""The experiment's report mirrored to W&B: one summary run per experiment (tidy results, the
summary over seeds, the findings, and accuracy-vs-remaining and accuracy-vs-MACs charts), opened
like a stage's run (dashboard.open_run) under an id derived from the store and the experiment.
The report folder in the store stays the source of truth: nothing here may fail sslprune-report.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

from ..core.schema import Config
from .dashboard import experiment_settings, open_run, run_id
from .wandb_mode import resolve, say


def report_dir(cfg: Config) -> Path:
    return Path(cfg.store) / "reports" / cfg.experiment


def publish(cfg: Config) -> Optional[str]:
    """Log the experiment's summary run (tidy results, summary, accuracy-vs-remaining charts).

    The run id is derived from the store and experiment, so every sslprune-report updates the same
    run. Returns the run's id, or None when W&B is disabled or failed (a warning says why)."""
    try:
        mode = resolve(cfg.wandb)
        if mode == "disabled":
            return None
        return _publish(cfg, mode)
    except Exception as e:
        say(f"W&B summary run failed ({type(e).__name__}: {e}); the report in {report_dir(cfg)} is complete")
        return None


def _publish(cfg: Config, mode: str) -> Optional[str]:
    import wandb

    from . import findings, report

    results = report.rows(cfg)
    summary = report.summarize(results)
    config = experiment_settings(cfg)
    config.update({"kind": "report", "store": str(cfg.store)})
    run = open_run(cfg, mode, run_id=run_id(Path(cfg.store), f"reports/{cfg.experiment}", "report"), dir=report_dir(cfg),
                   name=f"report {cfg.experiment}", job_type="report", config=config)
    if run is None:
        return None
    try:
        rows = [[r[c] for c in report.COLUMNS] for r in results]
        cols = report.SUMMARY + ["lo", "hi"]
        srows = []
        for s in summary:
            se = s["stderr"] or 0.0
            srows.append([s[c] for c in report.SUMMARY] + [s["mean"] - se, s["mean"] + se])
        data = {"results": wandb.Table(columns=report.COLUMNS, data=rows),
                "summary": wandb.Table(columns=cols, data=srows),
                "findings": wandb.Table(columns=findings.COLUMNS, data=findings.table(findings.compute(cfg, results)[0]))}
        lines: dict = {}
        for s in summary:
            lines.setdefault((s["signal"], s["evaluation"]), []).append(s)
        if lines:
            keys, xs, ys = [], [], []
            for (signal, ev), pts in sorted(lines.items()):
                pts.sort(key=lambda p: -p["remaining"])
                keys.append(f"{signal} / {ev}")
                xs.append([100 * p["remaining"] for p in pts])
                ys.append([100 * p["mean"] for p in pts])
            data["charts/accuracy_vs_remaining"] = wandb.plot.line_series(
                xs=xs, ys=ys, keys=keys, title=f"{cfg.experiment}: accuracy (mean over seeds) vs weights remaining",
                xname="weights remaining (%)")
            costed = {k: sorted((p for p in pts if p.get("macs") is not None), key=lambda p: -p["macs"])
                      for k, pts in sorted(lines.items())}
            costed = {k: pts for k, pts in costed.items() if pts}
            if costed:
                data["charts/accuracy_vs_macs"] = wandb.plot.line_series(
                    xs=[[p["macs"] / 1e6 for p in pts] for pts in costed.values()],
                    ys=[[100 * p["mean"] for p in pts] for pts in costed.values()],
                    keys=[f"{signal} / {ev}" for signal, ev in costed],
                    title=f"{cfg.experiment}: accuracy (mean over seeds) vs MACs of one forward pass",
                    xname="MACs (millions, mean over seeds)")
            # One chart per evaluation (pretext, each re-training start, each probe): mean and mean ± s.e. per signal.
            for ev in sorted({e for _, e in lines}):
                keys, xs, ys = [], [], []
                for (signal, e), pts in sorted(lines.items()):
                    if e != ev:
                        continue
                    x = [100 * p["remaining"] for p in pts]
                    for label, f in (("mean", lambda p: p["mean"]),
                                     ("mean-se", lambda p: p["mean"] - (p["stderr"] or 0.0)),
                                     ("mean+se", lambda p: p["mean"] + (p["stderr"] or 0.0))):
                        keys.append(f"{signal} {label}")
                        xs.append(x)
                        ys.append([100 * f(p) for p in pts])
                data[f"charts/{re.sub(r'[^A-Za-z0-9_.-]+', '_', ev)}"] = wandb.plot.line_series(
                    xs=xs, ys=ys, keys=keys, title=f"{cfg.experiment}: {ev} accuracy (%) vs weights remaining (%)",
                    xname="weights remaining (%)")
        # A wall-clock step: always above what an earlier report logged, also across offline segments.
        run.log(data, step=max(int(getattr(run, "step", 0) or 0), int(time.time())))
        run.summary.update({"stages_done": len(results), "points": len(summary)})
        rid = run.id
        run.finish(exit_code=0)
        return rid
    except BaseException:
        run.finish(exit_code=1)
        raise
