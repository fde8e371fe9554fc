"""sslprune-report: rebuild an experiment's tables and plot from what the store holds."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from launch.compose import CONF_DIR, typed, user_errors
from sslprune import dashboard, report


@user_errors
def execute(cfg: DictConfig) -> None:
    c = typed(cfg)
    out, summary = report.write(c)
    print(report.markdown(summary), flush=True)
    print(f"[sslprune] report written to {out}", flush=True)
    if (rid := dashboard.publish(c)) is not None:
        print(f"[sslprune] W&B summary run {c.wandb.project}/{rid} updated", flush=True)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    execute(cfg)


if __name__ == "__main__":
    main()
