"""sslprune-export: a finished stage's network as standalone files others load without the store.

    sslprune-export experiment=<name> signal=<s> seed=<n> level=<L> [scheme=<start>] [--out DIR]

Without scheme=, IMP level L of the signal's chain; with it, the re-training of that level's mask
from that start. Writes model.pt (a plain state_dict, pruned weights zero), mask.pt, compact.pt
(bit-packed masks and kept values) and export.json (sslprune.compute.export) into DIR, by default
<store>/exports/<experiment>/<stage>/, and prints the files' sizes. `--out DIR` is removed from
the arguments before Hydra parses them."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sslprune.core.errors import ConfigError
from sslprune.launch.compose import CONFIG_PATH, app_help, typed, user_errors

_OUT = None


def _scheme_given() -> bool:
    """Whether the command line names scheme= (its config default would otherwise pick re-training)."""
    from hydra.core.hydra_config import HydraConfig

    return any(o.split("=", 1)[0].lstrip("+~") == "scheme" for o in HydraConfig.get().overrides.task)


@user_errors
def execute(cfg: DictConfig) -> None:
    from sslprune import api

    c = typed(cfg)
    if c.signal is None:
        raise ConfigError(f"signal=<name> is required: one of {', '.join(c.signals)}")
    if c.level is None:
        raise ConfigError(f"level=<L> is required: an IMP level 0..{c.prune.levels}")
    r = api.export(c, c.signal, c.seed, c.level, c.scheme if _scheme_given() else None, out=_OUT)
    b = r["bytes"]
    print(f"[sslprune] exported {r['stage']} ({r['evaluation']} {r['metric']} {r['accuracy']:.4f}, "
          f"{100 * r['remaining']:.2f}% of the prunable weights) to {r['folder']}", flush=True)
    print(f"[sslprune] loads into {r['loads_into']}", flush=True)
    print(f"[sslprune] model.pt {b['model.pt']:,} bytes (dense, pruned weights zero); compact.pt "
          f"{b['compact.pt']:,} bytes ({100 * r['compact_vs_dense']:.1f}% of it); mask.pt {b['mask.pt']:,} bytes",
          flush=True)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def _main(cfg: DictConfig) -> None:
    execute(cfg)


def main() -> None:
    global _OUT
    args = sys.argv[1:]
    if "--out" in args:
        i = args.index("--out")
        if i + 1 >= len(args):
            print("sslprune: error: --out needs a folder", file=sys.stderr)
            sys.exit(2)
        _OUT = args[i + 1]
        sys.argv = [sys.argv[0], *args[:i], *args[i + 2:]]
    app_help("export")
    _main()


if __name__ == "__main__":
    main()
