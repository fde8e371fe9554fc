"""sslprune-run: every stage of an experiment (IMP chains, re-training, probes), then the report."""
from __future__ import annotations

import signal
import sys

import hydra
from omegaconf import DictConfig

from sslprune.core.errors import Stopped
from sslprune.api import check_networks, compute, uses_cuda  # the compute plane, imported when a stage computes
from sslprune.launch.compose import CONFIG_PATH, typed, user_errors
from sslprune.launch.report import publish


@user_errors
def execute(cfg: DictConfig) -> None:
    c = typed(cfg)
    from sslprune.control import experiment

    if c.launcher.name == "slurm":  # submit and return at once (sslprune-status, then sslprune-report)
        from hydra.core.hydra_config import HydraConfig
        from sslprune.control import slurm, submission

        slurm.require()  # before check_inputs creates the store
        experiment.check_inputs(c)
        submission.submit(c, compute, list(HydraConfig.get().overrides.task))
        return
    if c.launcher.name == "submitit_local":
        from sslprune.control import submission

        experiment.check_inputs(c)
        submission.run_submitit_local(c, compute)
    else:
        from sslprune.control import local

        try:
            local.run_local(c, compute, uses_cuda, check_networks)
        except Stopped as e:  # Ctrl-C / SIGTERM: what was kept and how to resume are printed
            # The run is over. Python resets its handlers to the default while it shuts down, so a
            # Ctrl-C landing then killed the process by SIGINT (-2) instead of exit 130; SIG_IGN holds.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            sys.exit(e.code)
    try:
        publish(c)
    except KeyboardInterrupt:  # every stage is done and kept; only the tables were being written
        print(f"\n[sslprune] interrupted while writing the report; every result is in the store: "
              f"sslprune-report experiment={c.experiment} writes it again", flush=True)
        sys.exit(130)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> None:
    execute(cfg)


if __name__ == "__main__":
    main()
