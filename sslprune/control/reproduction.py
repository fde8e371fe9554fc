"""The reproduction section of an experiment's report: `reproduction.md`, beside findings.md.

Issue 22: numbers in the README could not be tied to the code, machine or command that made them.
This section says, from the store itself, what a reader needs to compute them again: when the
results were computed (the result.json files' times) and when the section was written, the commit
of the installed tree (`git describe`, "unknown" outside a git checkout), the thread counts and CPU
models the stages recorded in result.json (CPU results depend on both: the kernels oneDNN and MKL
choose differ by instruction set), the command that reproduces the results and the report, and
the findings' summary. Torch-free.
"""
from __future__ import annotations

import shlex
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from . import findings as claims_found
from ..core import store as files
from ..core.schema import Config

TREE = Path(__file__).resolve().parent.parent.parent  # the installed tree (an editable install: the checkout)
NOT_RECORDED = "not recorded"


def commit(tree: Path = TREE) -> str:
    """`git describe --always --dirty --tags` of the tree sslprune is installed from; "unknown" where
    that is no git checkout (a wheel) or git is missing."""
    try:
        out = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def command(experiment: str, overrides: list[str], app: str = "sslprune-run", extra: tuple = ()) -> str:
    """The shell command of `app` with the run's overrides (experiment= first, quoted for a POSIX shell)."""
    args = list(overrides)
    if not any(a.split("=", 1)[0].lstrip("+~") == "experiment" for a in args):
        args.insert(0, f"experiment={experiment}")
    return " ".join([app, *(shlex.quote(a) for a in args), *extra])


def _counts(values: list) -> str:
    """'x' when every stage agrees, else 'x (n stages), y (m stages)'; stages without it as NOT_RECORDED."""
    c = Counter(NOT_RECORDED if v is None else str(v) for v in values)
    if len(c) == 1:
        return next(iter(c))
    return ", ".join(f"{v} ({n} stages)" for v, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _stage_time(done: list) -> str:
    """The sum of the stages' `seconds`: what the results cost to compute, whichever run computed
    them. A twin computed in a store that already held some of its stages (another twin's IMP
    chains) took less wall time than it costs; its cost on W workers never idle is this sum / W."""
    seconds = [r["seconds"] for r in done if isinstance(r.get("seconds"), (int, float))]
    if not seconds:
        return NOT_RECORDED
    missing = len(done) - len(seconds)
    return (f"{round(sum(seconds)):,} s summed over the stages' result.json `seconds`"
            + (f" ({missing} stages without it)" if missing else ""))


def markdown(cfg: Config, overrides: list[str], results: dict, found: list[dict], tree_commit: str,
             written: datetime) -> str:
    """`results`: {result.json path: its content} of the finished stages."""
    done = {p: r for p, r in results.items() if r is not None}
    times = sorted(datetime.fromtimestamp(Path(p).stat().st_mtime, timezone.utc) for p in done if Path(p).exists())
    when = f"{times[0]:%Y-%m-%d %H:%M} to {times[-1]:%Y-%m-%d %H:%M} UTC" if times else NOT_RECORDED
    trained = [r for r in done.values() if r.get("kind") != "svm"]  # an SVM (scikit-learn) records no threads
    lines = [f"## Reproduction: {cfg.experiment}", "",
             f"- results computed: {when} ({len(done)} stages; the times of their result.json)",
             f"- section written: {written:%Y-%m-%d %H:%M} UTC",
             f"- commit: {tree_commit} (`git describe` of the installed tree when this section was written)",
             f"- threads: {_counts([r.get('threads') for r in trained]) if trained else NOT_RECORDED}",
             f"- CPU model: {_counts([r.get('cpu_model') for r in done.values()]) if done else NOT_RECORDED}",
             f"- device: {_counts([r.get('device') for r in done.values()]) if done else NOT_RECORDED}",
             f"- stage time: {_stage_time(list(done.values()))}",
             "", "Reproduce the results and this report:", "", "```",
             command(cfg.experiment, overrides), command(cfg.experiment, overrides, "sslprune-report",
                                                         ("--reproduction",)),
             "```", "",
             "CPU results depend on the thread count and the CPU model (oneDNN and MKL choose kernels by "
             "instruction set): on another CPU model they differ, by about as much as "
             "another seed's, and verdicts near a threshold may turn (measured: docs/reproduction.md, "
             "Across CPU models).", "",
             "### Findings (findings.md)", "", *claims_found.summary(found), ""]
    return "\n".join(lines)


def write(cfg: Config, out: Path, overrides: list[str], found: list[dict], known: dict,
          now: Optional[datetime] = None, tree_commit: Optional[str] = None) -> Path:
    """reproduction.md in the report folder `out`; `known`: report.finished(cfg) (stage key -> result)."""
    from .experiment import stages
    from ..core.stage import DONE

    results = {str(s.dir / DONE): known.get(s.key()) for s in stages(cfg)}
    text = markdown(cfg, overrides, results, found, tree_commit or commit(),
                    now or datetime.now(timezone.utc))
    path = out / "reproduction.md"
    files.write_text(path, text)
    return path
