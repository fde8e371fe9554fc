"""sslprune-report: rebuild an experiment's tables and plot from what the store holds.

    sslprune-report experiment=<name> [store=...] [--tables] [--reproduction]

`--tables` (removed from the arguments before Hydra parses them) writes the tables and CSVs
without the figures. `--reproduction` (removed likewise) also writes reproduction.md: the date,
commit, thread count and CPU model of the results and the command that reproduces them (the same
overrides given to sslprune-run)."""
from __future__ import annotations

from typing import Optional

import hydra
from omegaconf import DictConfig

from sslprune.launch.compose import CONFIG_PATH, app_help, typed, user_errors


_PLOTS = True
_REPRODUCTION = False


def publish(c, plots: bool = True, overrides: Optional[list[str]] = None) -> None:
    """Write the report files, print the summary table, update the W&B summary run (if enabled);
    `overrides`: the command line's, to write reproduction.md (None: not written)."""
    from sslprune.control import report, wandb_report

    out, summary = report.write(c, plots=plots and _PLOTS, reproduction=overrides)
    print(report.pivot(summary), flush=True)
    print(f"[sslprune] report written to {out}", flush=True)
    if (rid := wandb_report.publish(c)) is not None:
        print(f"[sslprune] W&B summary run {c.wandb.project}/{rid} updated", flush=True)


@user_errors
def execute(cfg: DictConfig) -> None:
    overrides = None
    if _REPRODUCTION:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    publish(typed(cfg, writes=True), overrides=overrides)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def _main(cfg: DictConfig) -> None:
    execute(cfg)


def main() -> None:
    global _PLOTS, _REPRODUCTION
    import sys

    if "--tables" in sys.argv[1:]:
        _PLOTS = False
        sys.argv = [a for a in sys.argv if a != "--tables"]
    if "--reproduction" in sys.argv[1:]:
        _REPRODUCTION = True
        sys.argv = [a for a in sys.argv if a != "--reproduction"]
    app_help("report")
    _main()


if __name__ == "__main__":
    main()
