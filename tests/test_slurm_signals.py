"""Signals, dependencies, cancellation and per-kind resources on the real local SLURM (no mock).

Run with `pytest -m slurm`; the `cluster` fixture of test_slurm.py starts the local cluster.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import cli, numbers
from test_slurm import SLURM, cluster, job_records, live, logs, sacct_states, status, step, tiny, wait_complete, wait_for  # noqa: F401

pytestmark = pytest.mark.slurm
# The longest tests, in seconds (the SLURM tier at load 16 on 2 cores): conftest hands them out first.
LONGEST = {"test_sigterm_alone_checkpoints_and_requeues_a_two_task_job": 214,
           "test_a_cancelled_parent_task_cancels_only_its_own_dependants": 98,
           "test_svm_and_standardised_probe_jobs_are_one_task_and_give_the_same_result": 91,
           "test_usr2_after_the_stage_finished_does_not_fail_the_job": 62}


def usr2_while_live(job: str, trigger: Path, stop: threading.Event, sent: list) -> None:
    """From the moment `trigger` exists, `scancel --signal=USR2 <job>` every 0.1 s until the job is over."""
    from sslprune.control import slurm

    while not trigger.exists() and not stop.is_set():
        time.sleep(0.01)
    while not stop.is_set():
        p = subprocess.run(["scancel", "--signal=USR2", job], capture_output=True)
        if p.returncode == 0:
            sent.append(time.monotonic())
        if slurm.state(job) not in slurm.LIVE:
            return
        time.sleep(0.1)


def test_usr2_after_the_stage_finished_does_not_fail_the_job(tmp_path):
    """USR2 every 0.1 s from the moment level 0's result.json exists: the job has nothing left to
    checkpoint, so it ends COMPLETED and its dependant runs. Before, the signal landed during the
    interpreter's shutdown (default handler: die), the job FAILED and SLURM cancelled the dependant."""
    args = tiny(tmp_path, signals=("labels",), seeds="[0]", levels=0, quiet=False)
    p = cli("sslprune-run", *args, *SLURM)
    assert "submitted 2 stage(s) in 2 array(s)" in p.stdout, p.stdout
    recs = {r["stage"]: (Path(d), r) for d, r in job_records(tmp_path).items()}
    d, rec = recs["imp labels seed=0 level=0"]
    job = rec["job_id"]
    stop, sent = threading.Event(), []
    t = threading.Thread(target=usr2_while_live, args=(job, d / "result.json", stop, sent))
    t.start()
    try:
        t.join(300)
    finally:
        stop.set()
    assert sent, "no USR2 reached the running job"
    time.sleep(2)  # accounting lags squeue
    assert sacct_states(job) == ["COMPLETED"], logs(tmp_path, job)[-3000:]
    final = wait_complete(args, 180)
    assert {k: c["done"] for k, c in final["kinds"].items()} == {"imp": 1, "retrain": 1}


def test_sigterm_alone_checkpoints_and_requeues_a_two_task_job(tmp_path):
    """`scancel --signal=TERM` (what a GraceTime sends before a preemption's kill) mid-stage: both
    ranks stop at one step, rank 0 checkpoints and requeues the still-RUNNING job, which resumes and
    completes, and its dependant runs. Before, the job waited 120 s, FAILED and SLURM cancelled the
    dependant. Rank 1 says it stopped, not that it saved a checkpoint (only rank 0 writes)."""
    common = ["signals.labels.optim.batch_size=32", "run.log_every=10", "run.interrupt_every=5",
              "launcher.tasks_per_node=2"]
    # 176 steps: TERM goes at step 30 (progress.json polled every 0.2 s), both ranks stop within
    # run.interrupt_every=5 steps of it, far from the end; each step more is paid by 2 processes.
    args = tiny(tmp_path, *common, signals=("labels",), seeds="[0]", levels=0, width=8, epochs=4, quiet=False)
    cli("sslprune-run", *args, *SLURM)
    recs = {r["stage"]: (Path(d), r) for d, r in job_records(tmp_path).items()}
    d, rec = recs["imp labels seed=0 level=0"]
    job = rec["job_id"]
    wait_for(lambda: step(d) >= 30, 300, "the 2-task job to start training", 0.2)
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    wait_for(lambda: "REQUEUED" in sacct_states(job), 120, "the job to requeue itself")
    final = wait_complete(args, 600)
    assert {k: c["done"] for k, c in final["kinds"].items()} == {"imp": 1, "retrain": 1}
    time.sleep(2)
    assert sacct_states(job) == ["REQUEUED", "COMPLETED"]
    log = logs(tmp_path, job)
    assert "SIGTERM and the job is still RUNNING: requeueing it" in log, log[-3000:]
    stops = dict(re.findall(r"rank (\d): interrupted at step (\d+)", log))
    assert set(stops) == {"0", "1"} and stops["0"] == stops["1"], log[-3000:]
    assert f"rank 0: interrupted at step {stops['0']}, checkpoint saved: SIGTERM" in log
    assert f"rank 1: interrupted at step {stops['1']} (rank 0 writes the checkpoint): SIGTERM" in log
    assert "rank 1: interrupted at step" in log and "rank 1: interrupted at step " + stops["1"] + ", checkpoint saved" \
        not in log
    resumed = [int(s) for s in re.findall(r"resumed from .*checkpoint\.pt at step (\d+)/", log)]
    assert resumed == [int(stops["0"])] * 2, log[-3000:]


def test_a_cancelled_parent_task_cancels_only_its_own_dependants(tmp_path):
    """RotNet seed 0's level 0 is done here already, so the IMP array is [rotnet 1, labels 0, labels 1]
    and the probes' parents are [done, task 0]: not task for task. Cancelling the running IMP task of
    RotNet seed 1 must cancel its probe only; seed 0's probe (parent done) runs. Before, the probe
    array waited for `afterok:<imp>_0` as a whole and SLURM cancelled both probes."""
    args = tiny(tmp_path, "retrain.schemes=[]", levels=0)
    cli("sslprune-imp", *args, "signal=rotnet", "seed=0", "level=0")
    p = cli("sslprune-run", *args, *SLURM)
    assert "submitted 7 stage(s) in 3 array(s)" in p.stdout, p.stdout  # 3 IMP, 2 probes, 2 probes at init
    recs = {r["stage"]: r for r in job_records(tmp_path).values()}
    imp = recs["imp rotnet seed=1 level=0"]
    assert imp["index"] == 0 and recs["imp labels seed=0 level=0"]["index"] == 1
    probe0, probe1 = recs["probe:digits rotnet seed=0 level=0"], recs["probe:digits rotnet seed=1 level=0"]
    assert probe0["array_job_id"] == probe1["array_job_id"] and (probe0["index"], probe1["index"]) == (0, 1)
    assert (probe0["dependency"], probe1["dependency"]) == (None, f"afterok:{imp['job_id']}")
    shown = subprocess.run(["scontrol", "show", "job", probe1["job_id"]], capture_output=True, text=True).stdout
    assert f"Dependency=afterok:{imp['job_id']}" in shown, shown
    from sslprune.control import slurm

    # A job spends its first ~20 s importing: cancelled as soon as it runs, it is still starting.
    wait_for(lambda: slurm.state(imp["job_id"]) == "RUNNING", 300, "RotNet seed 1's IMP task to run", 0.2)
    subprocess.run(["scancel", imp["job_id"]], check=True)
    # sslprune-status (about 1 s of CPU) only once squeue has none of the store's jobs left to run.
    st = wait_for(lambda: None if live(tmp_path) else (
        lambda s: s if s["kinds"]["probe"]["done"] == 3 and s["kinds"]["imp"]["done"] == 3
        and s["kinds"]["probe"]["blocked"] == 1 else None)(status(args)), 300,
        "every stage but the cancelled one and its probe")
    assert {x["stage"]: x["state"] for x in st["problems"]} == {
        "imp rotnet seed=1 level=0": "failed", "probe:digits rotnet seed=1 level=0": "blocked"}
    for job, final in ((probe0["job_id"], "COMPLETED"), (probe1["job_id"], "CANCELLED")):
        wait_for(lambda: sacct_states(job) == [final], 60, f"{job} to be {final} in accounting")


def test_job_names_carry_the_store_cancel_leaves_other_stores_and_watch_counts_the_same(tmp_path):
    """Two stores, the same sweep, held: their job names differ (each ends with its store's tag);
    `sslprune-status --cancel` on one cancels exactly its jobs; the printed watch command, run as it
    is from another folder, counts the stages the submission counted. Before, both stores' jobs were
    named `sslprune-demo-imp-L0`..., there was no --cancel, and the watch command dropped the
    overrides (it counted the 266 stages of the full demo)."""
    from sslprune.control import slurm, submission

    a, b = tmp_path / "a", tmp_path / "b"
    held = "+launcher.additional_parameters.hold=true"
    out = {s: cli("sslprune-run", *tiny(s, signals=("labels",), seeds="[0]"), *SLURM, held).stdout for s in (a, b)}
    try:
        names = {s: {r["name"] for r in job_records(s).values()} for s in (a, b)}
        assert len(names[a]) == 4 and not names[a] & names[b]
        for s in (a, b):
            assert all(n.endswith("-" + submission.store_tag(s)) for n in names[s]), names[s]
        assert "sslprune-demo-imp-L0-" + submission.store_tag(a) in names[a]
        # The watch command, run as printed (from another folder), counts the same stages.
        (counted,) = re.findall(r"experiment demo: (\d+) stages", out[a])
        (watch,) = re.findall(r"watch with: (.*)", out[a])
        shown = subprocess.run(["bash", "-c", watch], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert shown.stdout.startswith(f"experiment demo: {counted} stages, store {a}"), shown.stdout[:300]
        assert counted == "4"
        arrays = {s: {r["array_job_id"] for r in job_records(s).values()} for s in (a, b)}
        p = cli("sslprune-status", *tiny(a, signals=("labels",), seeds="[0]"), "--cancel")
        assert p.stdout.strip() == f"[sslprune] cancelled 4 job(s) of store {a}: " + " ".join(
            sorted(arrays[a], key=int)), p.stdout
        live = {j for j, _ in slurm.live_jobs()}
        assert not arrays[a] & live and arrays[b] <= live
        again = cli("sslprune-status", f"store={a}", "--cancel")
        assert again.stdout.strip() == f"[sslprune] cancelled 0 job(s) of store {a}"
    finally:
        subprocess.run(["scancel", *{r["array_job_id"] for s in (a, b) for r in job_records(s).values()}])


def test_svm_and_standardised_probe_jobs_are_one_task_and_give_the_same_result(tmp_path):
    """A sweep asking for 2 tasks per node (DDP for training): its SVM and standardised-probe stages
    (and their random-features references) are one-task jobs, so their fit runs once, and their
    results equal a local run's. Before, they asked for the sweep's tasks and ran on every rank."""
    import shutil

    extra = ("retrain.schemes=[]", "svm.signals=[rotnet]", "svm.datasets=[{name: digits}]", "svm.folds=2",
             "probe.features=standardised")
    ref, store = tmp_path / "local", tmp_path / "slurm"
    cli("sslprune-run", *tiny(ref, *extra, signals=("rotnet",), seeds="[0]", levels=0))
    # The same IMP level 0 (a copy), without its evaluations: only those are submitted.
    shutil.copytree(ref, store, ignore=shutil.ignore_patterns("reports"))
    (level,) = store.rglob("level_0")
    evaluations = sorted(d.name for d in level.iterdir() if d.is_dir())
    assert [e.split("_")[-2] for e in evaluations] == ["probe", "svm", "probe", "svm"]
    for e in evaluations:
        shutil.rmtree(level / e)
    args = tiny(store, *extra, signals=("rotnet",), seeds="[0]", levels=0)
    p = cli("sslprune-run", *args, *SLURM, "launcher.tasks_per_node=2")
    assert "submitted 4 stage(s) in 4 array(s)" in p.stdout, p.stdout
    recs = job_records(store)
    for r in recs.values():
        (script,) = (store / "slurm" / r["array_job_id"]).glob("*_submission.sh")
        text = script.read_text()
        assert "#SBATCH --ntasks-per-node=1\n" in text and "#SBATCH --nodes=1\n" in text, text
        assert "gpu" not in text
    wait_complete(args, 300)
    for d, r in recs.items():
        log = logs(store, r["job_id"])
        assert "rank 0/1" in log and "rank 1/" not in log, log[-2000:]
        mine, theirs = (json.loads((Path(x) / "result.json").read_text())
                        for x in (d, str(d).replace(str(store), str(ref))))
        assert numbers(mine) == numbers(theirs)
