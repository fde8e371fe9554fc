"""sslprune-status: per stage kind, done / running / pending / preempted / failed / blocked counts.

    sslprune-status experiment=demo [store=...] [--json]

Takes the same Hydra overrides as the other apps (they select the experiment's stages);
`--json` is removed from the arguments before Hydra parses them and switches the output to
one JSON document (the same content as the text view).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sslprune.launch.compose import CONFIG_PATH, typed, user_errors

_JSON = False


@user_errors
def execute(cfg: DictConfig) -> None:
    c = typed(cfg)
    from sslprune.control import status

    s = status.collect(c)
    print(status.dumps(s) if _JSON else status.text(s), flush=True)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def _main(cfg: DictConfig) -> None:
    execute(cfg)


def main() -> None:
    global _JSON
    if "--json" in sys.argv[1:]:
        _JSON = True
        sys.argv = [a for a in sys.argv if a != "--json"]
    _main()


if __name__ == "__main__":
    main()
