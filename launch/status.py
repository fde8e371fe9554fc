"""sslprune-status: per stage kind, done / running / pending / preempted / failed / blocked counts.

    sslprune-status experiment=demo [store=...] [--json]
    sslprune-status experiment=demo --where "imp rotnet seed=0 level=3"
    sslprune-status store=... --cancel

Takes the same Hydra overrides as the other apps (they select the experiment's stages);
`--json`, `--where <stage label>` and `--cancel` are removed from the arguments before Hydra parses them.
`--cancel` cancels every live SLURM job of the store (whatever experiment submitted it: those its
`jobs/ledger.jsonl` records and those whose name ends with the store's tag), no one else's, and
prints their ids; the stages keep their checkpoints and a later `sslprune-run` resumes them.

`--json` switches the output to one JSON document (the same content as the text view);
`--where` prints the directory of the stage with that label (as progress lines and the report's
stages.csv write it) and nothing else, so `cd "$(sslprune-status ... --where '...')"` works.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sslprune.core.errors import Refused
from sslprune.launch.compose import CONFIG_PATH, _fail, app_help, typed, user_errors

_JSON = False
_WHERE: str | None = None
_CANCEL = False


@user_errors
def execute(cfg: DictConfig) -> None:
    c = typed(cfg, announce=False)  # reads the store only: W&B plays no part
    if _CANCEL:
        from pathlib import Path

        from sslprune.control import slurm, submission

        if not slurm.available():
            _fail("sslprune: error: --cancel needs SLURM, but squeue/sbatch are not on PATH", 2)
        said = slurm.silent()  # squeue answered "" when the controller was down: "cancelled 0 job(s)"
        if said is not None:
            _fail(f"sslprune: error: --cancel needs the SLURM controller, which does not answer (scontrol ping: "
                  f"{said}); nothing was cancelled: start it or check SLURM_CONF", 2)
        try:
            ids = submission.cancel(Path(c.store))
        except Refused as e:
            _fail(f"sslprune: error: {e}; the store's jobs may still be live (check with squeue)", 1)
        print(f"[sslprune] cancelled {len(ids)} job(s) of store {c.store}" + (f": {' '.join(ids)}" if ids else ""),
              flush=True)
        return
    if _WHERE is not None:
        from sslprune.control import index

        print(index.find(c, _WHERE).dir, flush=True)
        return
    from sslprune.control import status

    s = status.collect(c)
    print(status.dumps(s) if _JSON else status.text(s), flush=True)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def _main(cfg: DictConfig) -> None:
    execute(cfg)


def _flags(argv: list[str]) -> list[str]:
    """Take --json, --cancel and --where <label> (or --where=<label>) out of argv; returns what is left."""
    global _JSON, _WHERE, _CANCEL
    rest, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--json":
            _JSON = True
        elif a == "--cancel":
            _CANCEL = True
        elif a == "--where":
            if i + 1 >= len(argv):
                _fail('sslprune: error: --where needs a stage label, e.g. --where "imp rotnet seed=0 level=3"', 2)
            _WHERE = argv[i + 1]
            i += 1
        elif a.startswith("--where="):
            _WHERE = a[len("--where="):]
        else:
            rest.append(a)
        i += 1
    return rest


def main() -> None:
    sys.argv = sys.argv[:1] + _flags(sys.argv[1:])
    app_help("status")
    _main()


if __name__ == "__main__":
    main()
