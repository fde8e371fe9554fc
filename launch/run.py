"""sslprune-run: every stage of an experiment (IMP chains, re-training, probes), then the report."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from launch.compose import CONF_DIR, typed, user_errors
from sslprune import pipeline, report


@user_errors
def execute(cfg: DictConfig) -> None:
    c = typed(cfg)
    if c.launcher.name == "slurm":  # submit and return at once (sslprune-status, then sslprune-report)
        from sslprune import submission

        pipeline.check_inputs(c)
        submission.submit(c)
        return
    if c.launcher.name == "submitit_local":
        from sslprune import submission

        pipeline.check_inputs(c)
        submission.run_submitit_local(c)
    else:
        pipeline.run_local(c)
    out, summary = report.write(c)
    print(report.markdown(summary), flush=True)
    print(f"[sslprune] report written to {out}", flush=True)
    from sslprune import dashboard  # W&B summary run (no-op when W&B is disabled)

    if (rid := dashboard.publish(c)) is not None:
        print(f"[sslprune] W&B summary run {c.wandb.project}/{rid} updated", flush=True)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    execute(cfg)


if __name__ == "__main__":
    main()
