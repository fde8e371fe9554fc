"""Submit an experiment's missing stages to SLURM as job arrays with dependencies, idempotently.

Plan: one array per (level, stage kind and variant) over every signal and seed whose stage is
missing, e.g. "IMP level 3, signals labels and rotnet, seeds 0-4", "retrain winning_ticket of
level 3, ...". Signals are in one order in every array (those more kinds of stage evaluate first),
so an array's task i depends on task i of its parent array (IMP level L-1 for IMP level L; IMP
level L for its re-training and probes): `aftercorr:<array>`, seed by seed. Otherwise (a partial
re-submission, parents at other indices or in several arrays) each task waits for its own parent
task only (`afterok:<array>_<task>`, set per task while the array is held), never for the whole
parent array: a failed task cancels only its own dependants. So re-training and probing of
level L start as soon as that seed's level L is done. Arrays go to sbatch from a few threads, each
as soon as the arrays it depends on have job ids. `--kill-on-invalid-dep=yes`: when a parent
fails, its dependants are cancelled and reported as blocked by it (`sslprune-status`), and the
next `sslprune-run` submits them again.

Idempotence: every submission is one line of `<store>/jobs/ledger.jsonl` (the arrays, their job
ids and the stage directory of each job; fsynced once), and a stage's latest record is its job.
A stage is submitted only when it is not done and its recorded job is not pending, running or
requeued (asked to squeue/sacct); so re-running `sslprune-run` never duplicates a job and, after a
failure, submits only the failed stages and what depends on them. Submissions of one store are
serialised by a lock. Jobs read the experiment's config from `<store>/jobs/configs/<hash>.json`.

Job names end with the store's tag (a hash of its path): two stores' sweeps never share a name,
and `sslprune-status --cancel` cancels exactly this store's jobs (those its ledger records and
those named with its tag). SVMs and standardised-feature probes, whose fit runs once, are jobs of
one task with `launcher.single`'s resources (no GPU by default), never packed with DDP stages.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from ..core import store as files
from ..core.errors import Refused
from ..core.schema import Config, LauncherConfig, to_dict
from ..core.stage import Finetune, Probe, Retrain, Stage, Svm
from . import slurm, snapshot
from .experiment import chains, depth
from .index import write_chains
from .ledger import STATES, ledger_path, records, stage_states

SBATCH_THREADS = 8  # arrays submitted at once (slurmctld answers them in parallel)
# Shell lines every job runs first, then launcher.setup, then $SSLPRUNE_JOB_ENV if set, then the snapshot's check.
JOB_ENV = (
    # One math-library thread per CPU SLURM gave this task, never more (oversubscription is slow).
    'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
    'export MKL_NUM_THREADS="$OMP_NUM_THREADS"',
    "export PYTHONUNBUFFERED=1",
    # Fail fast instead of hanging when a rank of a multi-task job dies.
    "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
    # submitit's preemption signal (SLURM sends it --signal=USR2@<launcher.signal_delay_s> before the limit).
    'export SUBMITIT_PREEMPT_SIGNAL="${SUBMITIT_PREEMPT_SIGNAL:-USR2}"',
)
SITE_ENV = 'if [ -n "${SSLPRUNE_JOB_ENV:-}" ] && [ -f "$SSLPRUNE_JOB_ENV" ]; then source "$SSLPRUNE_JOB_ENV"; fi'


def _say(text: str) -> None:
    print(f"[sslprune] {text}", flush=True)


# ------------------------------------------------------------------ planning

def _variant(s: Stage) -> str:
    """What an array holds besides its level: the kind and its variant (scheme, evaluated data)."""
    if isinstance(s, Retrain):
        return f"retrain-{s.scheme}"
    if isinstance(s, (Probe, Svm, Finetune)):  # a random-features reference is named apart (its job name)
        return f"{s.kind}-{s.data.name}" + ("-init" if s.at_init else "")
    return "imp"


def signal_order(cfg: Config, stages_: list[Stage]) -> dict[str, int]:
    """Signals that more kinds of stage evaluate come first in every array, so an array over a subset
    of the signals (the RotNet probes) covers the first tasks of its parent array: its task i waits
    for the parent's task i (`aftercorr`), seed by seed."""
    uses: dict[str, set] = {}
    for s in stages_:
        uses.setdefault(s.signal, set()).add(_variant(s))
    ranked = sorted(uses, key=lambda n: (-len(uses[n]), depth(cfg, n), n))
    return {n: i for i, n in enumerate(ranked)}


def plan(cfg: Config, todo: list[Stage]) -> list[list[list[Stage]]]:
    """Missing stages grouped into arrays of tasks, parents' arrays before their children's; a task
    is one stage, or with `launcher.pack` the re-training starts and evaluations of one IMP level of
    one chain, run one after the other in one job.

    One array per (wave, level, kind variant) over every signal and seed: IMP level L of all
    chains, the winning tickets of level L of all chains, ... (a wave is a signal's depth in the
    init_from graph: transfer chains wait for their source's level 0). Packed, one array per
    (wave, level) holds every chain's evaluations of that level."""
    order = signal_order(cfg, todo)
    pack = cfg.launcher.pack
    groups: "OrderedDict[tuple, OrderedDict]" = OrderedDict()
    for s in sorted(todo, key=lambda s: (depth(cfg, s.signal), s.level, s.kind != "imp", order[s.signal], s.seed)):
        wave, evaluation = depth(cfg, s.signal), s.kind != "imp"
        # The dense re-training waits for nothing; a runs-once stage gets its own one-task job.
        if pack and evaluation and not getattr(s, "shared", False) and not runs_once(s):
            key, task = (wave, s.level, True, "pack"), (s.signal, s.seed)
        else:
            key, task = (wave, s.level, evaluation, _variant(s), s.dir.name), s.key()
        groups.setdefault(key, OrderedDict()).setdefault(task, []).append(s)
    return [list(tasks.values()) for tasks in groups.values()]


def task_parents(task: list[Stage]) -> list[Stage]:
    """What one task (one stage, or a pack) waits for. The stages of a pack share their parent (one
    IMP level), except a random-features reference, which has none: the first parent any stage has
    (taking the first stage's left a pack that starts with the reference waiting for nothing)."""
    return next((s.parents() for s in task if s.parents()), [])


def _dependency(parents: list[list[str]]) -> tuple[Optional[str], Optional[list[Optional[str]]]]:
    """How an array waits, from each task's parent jobs ("<array>_<task>" or "<job>"; done parents left
    out): (the array's dependency, None) when one dependency is right for every task, else (None, each
    task's own dependency), set per task while the array is held.

    `aftercorr:<array>` when task i's one parent is task i of one array; `afterok:<jobs>` when every
    task waits for the same jobs. Otherwise a task must wait for its own parents only: an array-wide
    `afterok` on the union made every task wait for every parent, and SLURM cancelled them all
    (`--kill-on-invalid-dep`) when any one parent failed."""
    if not any(parents):
        return None, None
    first = parents[0][0] if parents[0] else ""
    base = first.split("_")[0]
    if all(len(p) == 1 and p[0] == f"{base}_{k}" for k, p in enumerate(parents)):
        return f"aftercorr:{base}", None
    own = ["afterok:" + ":".join(p) if p else None for p in parents]
    if len(set(own)) == 1:
        return own[0], None
    return None, own


# ------------------------------------------------------------------ submission

@contextmanager
def _lock(store: Path):
    # store.lock: never through a linked jobs/ or .lock (open(".lock", "w") truncated a link's target).
    files.confine(store, store / "jobs")
    with files.lock(store / "jobs"):
        yield


def runs_once(stage: Stage) -> bool:
    """A stage whose fit runs once in one process, never under DDP: an SVM, or a probe on
    standardised features (features computed once, then a small fit on them)."""
    return isinstance(stage, Svm) or (isinstance(stage, Probe) and stage.cfg.probe.features == "standardised")


def store_tag(store) -> str:
    """A short hash of the store's absolute path: the end of every job name it submits."""
    return hashlib.sha256(os.path.abspath(str(store)).encode()).hexdigest()[:8]


def _executor(cfg: Config, folder: Path, code: Optional[Path], name: str, dependency: Optional[str],
              single: bool = False, hold: bool = False):
    import submitit

    L: LauncherConfig = cfg.launcher
    # One folder per array (%A), not per job: a thousand jobs, a few dozen folders.
    ex = submitit.SlurmExecutor(folder=str(folder / "%A"), max_num_timeout=L.max_num_timeout)
    # The site's own lines (launcher.setup, then $SSLPRUNE_JOB_ENV) come before anything runs Python:
    # on many clusters Python works only after `module load` or `conda activate`.
    setup = list(JOB_ENV) + list(L.setup) + [SITE_ENV]
    extra = {"kill-on-invalid-dep": "yes", "requeue": True}
    if code is not None:
        # Checked before Python imports it (code planted in the store is refused, not run), and kept
        # free of .pyc files the check would have to remove again.
        setup += [snapshot.job_setup(code), "export PYTHONDONTWRITEBYTECODE=1"]
        setup.append(f"export PYTHONPATH={shlex.quote(str(code))}${{PYTHONPATH:+:$PYTHONPATH}}")
        extra["chdir"] = str(code)  # python -m puts the working directory first on sys.path
    if hold:
        extra["hold"] = True  # released once each task's own dependency is set
    extra.update(L.additional_parameters)
    nodes, tasks, gpus, cpus = L.nodes, L.tasks_per_node, L.gpus_per_node, L.cpus_per_task
    if single:
        nodes, tasks, gpus, cpus = 1, 1, L.single.gpus_per_node, L.single.cpus_per_task or L.cpus_per_task
    params = dict(job_name=name, time=L.time_min, nodes=nodes, ntasks_per_node=tasks,
                  cpus_per_task=cpus, array_parallelism=L.array_parallelism,
                  signal_delay_s=L.signal_delay_s, setup=setup,
                  additional_parameters=extra,
                  stderr_to_stdout=True)
    if gpus:
        params["gpus_per_node"] = gpus
    if L.mem_gb:
        params["mem"] = f"{int(L.mem_gb * 1024)}M"
    for k in ("partition", "account", "qos", "constraint", "exclude", "comment"):
        if getattr(L, k):
            params[k] = getattr(L, k)
    if dependency:
        params["dependency"] = dependency
    ex.update_parameters(**params)
    return ex


def _override(key: str, value: str) -> str:
    """`key=value` as one shell word Hydra parses back to `value`: a printed command is pasted into a shell,
    where an unquoted store path with spaces or `$(...)` would split or run."""
    if shlex.quote(value) == value:
        return f"{key}={value}"
    # Inside Hydra's quoted string only quotes need escaping (launcher=slurm refuses backslashes in the store).
    return shlex.quote(f"{key}='" + value.replace("'", "\\'") + "'")


def _config_file(cfg: Config, store: Path) -> Path:
    """The experiment's config as JSON, once per distinct config (content-addressed): every job of a
    submission reads it, so the jobs' own pickles carry only the stage."""
    text = json.dumps(to_dict(cfg), sort_keys=True)
    path = store / "jobs" / "configs" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.exists():
        files.replace(path, lambda f: f.write(text.encode()), durable=False)
    return path


def submit(cfg: Config, compute: Callable, overrides: Optional[list[str]] = None) -> dict:
    """Submit every stage of the experiment that is neither done nor queued; returns what was submitted.

    `compute`: what each job calls to run a stage (sslprune.api.compute, pickled by name: the app
    layer passes it in, this plane never imports the compute plane). `overrides`: the command line's
    (Hydra) overrides, repeated in the printed `sslprune-status` command so that it selects the same stages."""
    from submitit.core.utils import FailedJobError

    from .job import StageJob

    slurm.require()
    write_chains(cfg)
    store = Path(cfg.store)
    tag = store_tag(store)
    with _lock(store):
        states = stage_states(cfg)
        by_key = {st.stage.key(): st for st in states}
        todo = [st for st in states if st.state in ("missing", "failed", "blocked", "corrupt")]
        counts = {k: sum(1 for st in states if st.state == k) for k in STATES}
        _say(f"experiment {cfg.experiment}: {len(states)} stages: " +
             ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f"; store {cfg.store}")
        summary = {"experiment": cfg.experiment, "store": cfg.store, "submitted": 0, "arrays": []}
        if not todo:
            _say("nothing to submit")
            return summary
        for st in todo:
            if st.state == "corrupt":
                st.stage.set_aside()  # its damaged files go; the job computes it from scratch
        # Jobs of stages being re-submitted that SLURM still holds (e.g. pending on a failed parent).
        stale = [st.job_id for st in todo if st.slurm is not None and st.slurm.live]
        slurm.cancel(stale)
        code = snapshot.take(store) if cfg.launcher.snapshot else None
        folder = Path(cfg.launcher.folder or store / "slurm")
        if code:
            _say(f"code snapshot {code}")
        config_file = _config_file(cfg, store)
        new_jobs: dict[str, str] = {}  # stage key -> job id submitted now
        groups = plan(cfg, [st.stage for st in todo])
        submitted: dict[int, Future] = {}
        owner = {s.key(): g for g, group in enumerate(groups) for task in group for s in task}
        lock = threading.Lock()

        def one(g: int, group: list[list[Stage]]) -> dict:
            """sbatch one array, once the arrays it depends on have their job ids."""
            parents = []
            for task in group:
                pids = []
                for p in task_parents(task):
                    if p.key() in owner:
                        submitted[owner[p.key()]].result()  # submitted before this group: its ids are known
                        pids.append(new_jobs[p.key()])
                    elif by_key[p.key()].active:
                        pids.append(by_key[p.key()].job_id)
                parents.append(sorted(set(pids)))
            dependency, own = _dependency(parents)
            first = group[0][0]
            single = all(runs_once(s) for task in group for s in task)
            kind = "pack" if len(group[0]) > 1 or cfg.launcher.pack and not single and first.kind != "imp" \
                else _variant(first)
            name = f"sslprune-{cfg.experiment}-{kind}-L{first.level}-{tag}"
            ex = _executor(cfg, folder, code, name, dependency, single=single, hold=own is not None)
            try:
                with ex.batch():
                    jobs = [ex.submit(StageJob(task, compute, config_file=config_file)) for task in group]
            except FailedJobError as e:  # sbatch said no (e.g. a resource the cluster lacks): one line
                said = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
                raise Refused(f"sbatch refused {name}: {said}") from None
            ids = [j.job_id for j in jobs]
            base = ids[0].split("_")[0]
            if own is not None:  # held: each task gets its own parents, then the array may run
                wire(base, {jid: d for jid, d in zip(ids, own) if d},
                     release=not cfg.launcher.additional_parameters.get("hold"))
            pairs = [(jid, s) for task, jid in zip(group, ids) for s in task]
            with lock:
                for jid, s in pairs:
                    new_jobs[s.key()] = jid
            return {"name": name, "job_id": base if len(ids) > 1 else ids[0], "tasks": len(ids),
                    "dependency": dependency, "dependencies": own, "stages": [s.label for _, s in pairs],
                    "jobs": [[jid, str(s.dir)] for jid, s in pairs]}

        # Arrays go to sbatch from a few threads: an array waits only for the arrays it depends on
        # (the IMP chain is sequential, the evaluations of a level go together).
        with ThreadPoolExecutor(SBATCH_THREADS) as pool:
            for g, group in enumerate(groups):
                submitted[g] = pool.submit(one, g, group)
        # An array that failed (and those waiting for it, never submitted) is left out; every array
        # that is in SLURM is recorded, so the next run submits only the rest, with no duplicate.
        arrays = [f.result() for g, f in sorted(submitted.items()) if f.exception() is None]
        failure = next((f.exception() for _, f in sorted(submitted.items()) if f.exception() is not None), None)
        for a in arrays:
            after = a["dependency"] or (a["dependencies"] and "each task's own parent task (afterok per task)")
            _say(f"submitted {a['name']}: {a['tasks']} task(s) job {a['job_id']}" + (f" after {after}" if after else ""))
        if failure is not None and not arrays:
            _refused(failure, "nothing was submitted")
        summary["arrays"] = [{k: v for k, v in a.items() if k != "jobs"} for a in arrays]
        summary["submitted"] = len(new_jobs)
        ledger = ledger_path(store)
        with open(ledger, "a") as f:
            f.write(json.dumps({"time": time.time(), "experiment": cfg.experiment, "folder": str(folder),
                                "snapshot": str(code) if code else None, "argv": sys.argv,
                                "config": str(config_file),
                                "arrays": [{"array": a["job_id"], "name": a["name"], "dependency": a["dependency"],
                                            "dependencies": a["dependencies"], "jobs": a["jobs"],
                                            "stages": a["stages"]} for a in arrays]}) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the one durable write of the submission: every record is in it
        files.sync_folder(ledger.parent)
        if failure is not None:
            _refused(failure, f"{len(new_jobs)} stage(s) in {len(arrays)} array(s) were submitted and recorded")
        _say(f"submitted {len(new_jobs)} stage(s) in {len(arrays)} array(s); store {cfg.store}; "
             f"logs {folder}; watch with: {watch_command(cfg, overrides)}")
        return summary


def _refused(failure: BaseException, submitted: str) -> None:
    """Raise a submission's first failure; SLURM's refusals as one line saying what was submitted."""
    if isinstance(failure, Refused):
        raise Refused(f"{failure}; {submitted}: run again to submit the rest") from None
    raise failure


def wire(base: str, dependencies: dict[str, str], release: bool = True) -> None:
    """Give tasks of the held array `base` their own dependency, then release it. If SLURM refuses
    (e.g. a parent purged since it was queried), cancel the array and raise one line: left held it
    waited forever, unrecorded, and the next run submitted its stages again beside it."""
    try:
        slurm.depend(dependencies)
        if release:
            slurm.release(base)
    except Refused as e:
        slurm.cancel([base])
        raise Refused(f"{e}; array {base} was cancelled") from None


def watch_command(cfg: Config, overrides: Optional[list[str]] = None) -> str:
    """The sslprune-status command for this submission: the run's own overrides (they select its stages:
    seeds, levels, signals...), each quoted for the shell, with the store made absolute."""
    kept = [o for o in overrides or [] if not o.split("=", 1)[0].lstrip("+~") in ("experiment", "store")]
    return " ".join(["sslprune-status", f"experiment={cfg.experiment}", *(shlex.quote(o) for o in kept),
                     _override("store", cfg.store)])


def cancel(store: Path) -> list[str]:
    """Cancel exactly this store's live jobs: the arrays its ledger records and any job named with
    its tag; returns the job ids cancelled (an array counts once). Raises Refused when squeue
    or scancel fails: "cancelled 0 job(s)" must mean that none was live."""
    recorded = set()
    for r in records(store).values():
        recorded |= {j.split("_")[0] for j in [r["job_id"], *r["history"]]}
    tag = f"-{store_tag(store)}"
    ids = sorted({j for j, name in slurm.live_jobs(check=True) if j in recorded or name.endswith(tag)}, key=int)
    slurm.cancel(ids, check=True)
    return ids


def run_submitit_local(cfg: Config, compute: Callable) -> int:
    """Each chain with missing stages runs as one local submitit job (`compute`, sslprune.api.compute,
    runs each stage); waits for all of them."""
    import submitit

    from .job import ChainJob

    store = Path(cfg.store)
    todo = [c for c in chains(cfg) if not all(s.done() for s in c)]
    _say(f"experiment {cfg.experiment}: {len(todo)} chain(s) to run as local submitit jobs; store {cfg.store}")
    if not todo:
        return 0
    folder = Path(cfg.launcher.folder or store / "submitit_local")
    ex = submitit.LocalExecutor(folder=str(folder / "%j"), max_num_timeout=cfg.launcher.max_num_timeout)
    ex.update_parameters(timeout_min=cfg.launcher.time_min, signal_delay_s=cfg.launcher.signal_delay_s)
    failed = []
    # Transfer chains (init_from) start from another chain's level 0: submit them in a later wave.
    for wave in sorted({depth(cfg, c[0].signal) for c in todo}):
        batch = [c for c in todo if depth(cfg, c[0].signal) == wave]
        jobs = [ex.submit(ChainJob([s for s in c if not s.done()], compute)) for c in batch]
        _say("jobs " + " ".join(j.job_id for j in jobs))
        for c, j in zip(batch, jobs):
            try:
                j.result()
            except Exception as e:  # report every failure truthfully, then fail
                failed.append(f"{c[0].signal} seed={c[0].seed}: job {j.job_id} failed: {str(e).strip()[-2000:]}")
        if failed:
            raise RuntimeError("; ".join(failed))
    return sum(len(c) for c in todo)
