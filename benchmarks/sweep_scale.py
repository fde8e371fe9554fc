"""Control-plane speed at cluster scale, each against a reference measured in the same run.

  submit     `sslprune-run launcher=slurm_local` of a sweep of at least --jobs stages, every job held
             (sbatch --hold, cancelled at the end), against submitit's own `map_array` of as many
             held jobs of a trivial function on the same cluster (one sbatch call, one pickle each)
  resubmit   the same command again, with everything queued: nothing to submit
  status     `sslprune-status` on a store of at least --stages finished stage directories, against a
             plain Python walk (a fresh interpreter) that reads every result.json under the store
  stock      Hydra's own route (`sslprune-imp -m ... hydra/launcher=submitit_slurm`): the launcher
             composes every job's config before its first sbatch; timed here as --compose
             compose() calls of the stage app's config with one job's overrides each (what
             Hydra's sweeper hands its launcher), per job and extrapolated to --jobs
  report     `sslprune-report --tables` on that store (results.csv, summary.csv/md, the pivot table,
             findings; plots are left out, they cost the same at any store size), against the same walk

Wall times are medians of --reps runs (submission: each rep a fresh store); CPU is the time of the command's processes. The last four
lines are the ratios (targets: submit and resubmit at most 10, status at most 3, report at most 5):
  submit/submitit: R
  resubmit/submitit: R
  status/walk: R
  report/walk: R

Needs the local SLURM cluster (bash slurm/local-cluster.sh start). About 2 minutes here.
    python benchmarks/sweep_scale.py [--jobs 1000] [--stages 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_STAGES_PER_SEED = 119  # demo: 2 signals x 15 levels x (IMP + 3 starts), random starts shared by both, + 15 RotNet probes + 1 reference
WALK = """
import json, os, sys
n = 0
for d, _, names in os.walk(sys.argv[1]):
    if "result.json" in names:
        with open(os.path.join(d, "result.json")) as f:
            json.load(f)
        n += 1
print(n)
"""


def _noop(i: int) -> int:
    return i


def timed(cmd: list[str], env=None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child processes, stdout) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), p.stdout


def seeds_for(stages: int) -> str:
    n = -(-stages // DEMO_STAGES_PER_SEED)
    return "[" + ",".join(map(str, range(n))) + "]"


def cancel(ids: list[str]) -> None:
    if ids:
        subprocess.run(["scancel", *sorted(set(ids))], capture_output=True)


# ---------------------------------------------------------------- submission


def reference_submit(n: int, folder: Path) -> tuple[float, list[str]]:
    import submitit

    ex = submitit.SlurmExecutor(folder=str(folder / "%j"))
    ex.update_parameters(partition="debug", time=10, cpus_per_task=1, array_parallelism=256,
                         additional_parameters={"hold": True})
    t0 = time.perf_counter()
    jobs = ex.map_array(_noop, list(range(n)))
    took = time.perf_counter() - t0
    return took, [jobs[0].job_id.split("_")[0]]


def project_submit(store: Path, seeds: str) -> tuple[float, float, list[str], int]:
    cmd = ["sslprune-run", f"store={store}", "experiment=demo", f"seeds={seeds}", "launcher=slurm_local",
           "+launcher.additional_parameters.hold=true", "launcher.snapshot=false"]
    wall, cpu, out = timed(cmd)
    ids = [line.split(" job ")[1].split()[0] for line in out.splitlines() if "submitted " in line and " job " in line]
    submitted = int(out.split("submitted ")[-1].split(" stage(s)")[0]) if "stage(s)" in out else 0
    return wall, cpu, ids, submitted


# ---------------------------------------------------------------- a finished store


def build_store(store: Path, seeds: str) -> int:
    """Every stage of a demo sweep as finished: result.json (with its manifest) and a small model.pt."""
    code = f"""
import hashlib, json, sys
from pathlib import Path
from sslprune.launch.compose import CONF_DIR, typed
from hydra import compose, initialize_config_dir
from sslprune.control.experiment import stages
with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
    cfg = typed(compose("config", overrides=["store={store}", "experiment=demo", "seeds={seeds}"]))
n = 0
blob = b"0" * 64
for s in stages(cfg):
    s.dir.mkdir(parents=True, exist_ok=True)
    (s.dir / "model.pt").write_bytes(blob)
    out = {{"model.pt": {{"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}}}}
    r = {{"accuracy": 0.5 + 0.001 * (n % 97), "remaining": 0.8 ** s.level, "evaluation": s.evaluation,
         "metric": "top1", "kind": s.kind, "seed": s.seed, "level": s.level, "steps": 100, "start_step": 0,
         "outputs": out}}
    (s.dir / "result.json").write_text(json.dumps(r))
    n += 1
print(n)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return int(p.stdout.split()[-1])


STOCK = """
import sys, time
from hydra import compose, initialize_config_dir
from sslprune.launch.compose import CONF_DIR
n = int(sys.argv[1])
with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
    compose("config", overrides=["experiment=demo", "signal=rotnet", "seed=0", "level=0"])  # warm
    t0 = time.perf_counter()
    for i in range(n):
        compose("config", overrides=["experiment=demo", "signal=rotnet" if i % 2 else "signal=labels",
                                  f"seed={i // 30}", f"level={i % 15}"])
    print((time.perf_counter() - t0) / n)
"""


def stock_compose(n: int) -> float:
    """Seconds per job of Hydra composing one stage app's config (the stock launcher's per-job cost)."""
    p = subprocess.run([sys.executable, "-c", STOCK, str(n)], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return float(p.stdout.split()[-1])


def median_of(reps: int, fn) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(reps):
        w, c, _ = fn()
        walls.append(w), cpus.append(c)
    return statistics.median(walls), statistics.median(cpus)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=1000, help="stages to submit (at least)")
    ap.add_argument("--stages", type=int, default=10000, help="finished stages in the status/report store (at least)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compose", type=int, default=200, help="Hydra compose() calls timed for the stock route")
    args = ap.parse_args(argv)
    if subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        raise SystemExit("no SLURM cluster: bash slurm/local-cluster.sh start")
    with tempfile.TemporaryDirectory(prefix="sslprune-scale-") as tmp:
        tmp = Path(tmp)
        held: list[str] = []
        try:
            seeds = seeds_for(args.jobs)
            subs, refs, resubs = [], [], []
            for rep in range(args.reps):  # interleaved: each rep a fresh store, its resubmission, submitit
                sub_w, sub_c, ids, submitted = project_submit(tmp / f"sweep{rep}", seeds)
                held += ids
                re_w, re_c, more, again = project_submit(tmp / f"sweep{rep}", seeds)
                held += more
                assert again == 0, f"re-submission submitted {again} stages"
                ref_w, ref_ids = reference_submit(submitted, tmp / f"submitit{rep}")
                held += ref_ids
                cancel(held)  # a queue of a few thousand held jobs would slow the next rep's squeue
                held = []
                subs.append((sub_w, sub_c)), resubs.append((re_w, re_c)), refs.append(ref_w)
                arrays = len(ids)
            sub_w, sub_c = statistics.median(w for w, _ in subs), statistics.median(c for _, c in subs)
            re_w, re_c = statistics.median(w for w, _ in resubs), statistics.median(c for _, c in resubs)
            ref_w = statistics.median(refs)
            print(f"submit    {submitted} held jobs in {arrays} sbatch calls: {sub_w:.2f} s wall, {sub_c:.2f} s CPU; "
                  f"submitit map_array of {submitted}: {ref_w:.2f} s", flush=True)
            print(f"resubmit  nothing new: {re_w:.2f} s wall, {re_c:.2f} s CPU", flush=True)
        finally:
            cancel(held)
        per_job = stock_compose(args.compose)
        print(f"stock     Hydra composes one job's config in {1000 * per_job:.1f} ms: {submitted} jobs "
              f"{per_job * submitted:.1f} s before the first sbatch (sslprune-run: {sub_w:.2f} s in all)", flush=True)
        seeds = seeds_for(args.stages)
        n = build_store(tmp / "big", seeds)
        overrides = [f"store={tmp / 'big'}", "experiment=demo", f"seeds={seeds}"]
        walk = lambda: timed([sys.executable, "-c", WALK, str(tmp / "big")])  # noqa: E731
        status = lambda: timed(["sslprune-status", *overrides, "--json"])  # noqa: E731
        report = lambda: timed(["sslprune-report", *overrides, "--tables"])  # noqa: E731
        walk(), status(), report()  # warm the page cache for all three
        walk_w, walk_c = median_of(args.reps, walk)
        st_w, st_c = median_of(args.reps, status)
        rep_w, rep_c = median_of(args.reps, report)
        doc = json.loads(status()[2])
        assert doc["stages"] == n and doc["complete"], (doc["stages"], n)
        print(f"status    {n} finished stages: {st_w:.2f} s wall, {st_c:.2f} s CPU; walk {walk_w:.2f} s "
              f"wall, {walk_c:.2f} s CPU", flush=True)
        print(f"report    tables of {n} stages: {rep_w:.2f} s wall, {rep_c:.2f} s CPU", flush=True)
    print(f"submit/submitit: {sub_w / ref_w:.2f}")
    print(f"resubmit/submitit: {re_w / ref_w:.2f}")
    print(f"status/walk: {st_w / walk_w:.2f}")
    print(f"report/walk: {rep_w / walk_w:.2f}")


if __name__ == "__main__":
    main()
