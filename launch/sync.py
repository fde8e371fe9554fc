"""sslprune-sync: upload an experiment's offline W&B runs (finished and in progress) to the W&B server.

    sslprune-sync experiment=<name> store=<store> [the overrides the experiment ran with]

Run it from a machine that reaches the W&B server (a login node) and is logged in (`wandb login`).
Safe to re-run: finished runs already uploaded are skipped, runs that grew since are uploaded again.
Exits 1, naming the runs left to upload, when some could not be uploaded.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sslprune.core.errors import SyncError
from sslprune.launch.compose import CONFIG_PATH, app_help, typed, user_errors


@user_errors
def execute(cfg: DictConfig) -> dict:
    c = typed(cfg, announce=False)  # uploads what offline runs wrote, whatever wandb.mode says
    from sslprune.control import upload

    try:
        return upload.sync(c)
    except SyncError as e:
        print(f"sslprune-sync: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def _main(cfg: DictConfig) -> None:
    execute(cfg)


def main() -> None:
    app_help("sync")
    _main()


if __name__ == "__main__":
    main()
