"""sslprune-report: rebuild an experiment's tables and plot from what the store holds."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sslprune.launch.compose import CONFIG_PATH, app_help, typed, user_errors


def publish(c) -> None:
    """Write the report files, print the summary table, update the W&B summary run (if enabled)."""
    from sslprune.control import dashboard, report

    out, summary = report.write(c)
    print(report.pivot(summary), flush=True)
    print(f"[sslprune] report written to {out}", flush=True)
    if (rid := dashboard.publish(c)) is not None:
        print(f"[sslprune] W&B summary run {c.wandb.project}/{rid} updated", flush=True)


@user_errors
def execute(cfg: DictConfig) -> None:
    publish(typed(cfg, writes=True))


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def _main(cfg: DictConfig) -> None:
    execute(cfg)


def main() -> None:
    app_help("report")
    _main()


if __name__ == "__main__":
    main()
