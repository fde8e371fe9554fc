"""sslprune-run: every stage of an experiment (IMP chains, re-training, probes), then the report."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from launch.compose import CONF_DIR, typed, user_errors
from sslprune import pipeline, report


@user_errors
def execute(cfg: DictConfig) -> None:
    c = typed(cfg)
    pipeline.run_local(c)
    out, summary = report.write(c)
    print(report.markdown(summary), flush=True)
    print(f"[sslprune] report written to {out}", flush=True)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    execute(cfg)


if __name__ == "__main__":
    main()
