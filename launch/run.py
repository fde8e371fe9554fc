"""sslprune-run: every stage of an experiment (IMP chains, re-training, probes), then the report."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from launch.compose import CONF_DIR, typed, user_errors
from launch.report import publish


@user_errors
def execute(cfg: DictConfig) -> None:
    c = typed(cfg)
    from sslprune import pipeline
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
    publish(c)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    execute(cfg)


if __name__ == "__main__":
    main()
