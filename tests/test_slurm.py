"""sslprune on a real SLURM cluster (slurm/local-cluster.sh: one node, accounting): no mock of SLURM.

Run with `pytest -m slurm` (as root: the fixture starts the local cluster); skip with `-m "not slurm"`.
Jobs are tiny (digits, width 4-8, one core each); the whole file takes a few minutes on 2 cores.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli, cluster_start_lock, wait_for
from sslprune.core import errors

pytestmark = pytest.mark.slurm
# The longest tests, in seconds (the SLURM tier at load 16 on 2 cores): conftest hands them out first.
LONGEST = {"test_demo_through_arrays_matches_local_run": 226, "test_requeue_preemption_and_cancel_resume_to_the_same_result": 216,
           "test_failure_is_retried_then_only_the_failed_part_is_resubmitted": 226,
           "test_a_packed_job_runs_its_stages_in_one_process_and_resumes_after_preemption": 129,
           "test_ddp_preemption_stops_every_rank_at_the_same_step_and_resumes_bit_for_bit": 157,
           "test_transfer_chains_and_new_evaluations_run_as_dependent_arrays": 88,
           "test_two_task_ddp_job_matches_one_process": 89}

SLURM = ["launcher=slurm_local", "launcher.time_min=20"]


@pytest.fixture(scope="session", autouse=True)
def cluster():
    with cluster_start_lock():  # xdist's workers (and other checkouts' runs) each ask for the one cluster
        p = subprocess.run(["bash", str(ROOT / "slurm" / "local-cluster.sh"), "start"], capture_output=True,
                           text=True, timeout=1200)
    if p.returncode != 0:
        pytest.fail(f"local SLURM cluster did not start:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")


def tiny(store: Path, *extra: str, signals=("labels", "rotnet"), seeds="[0,1]", levels=1, width=4, epochs=1,
         quiet=True) -> list[str]:
    args = [f"store={store}", "experiment=demo", f"seeds={seeds}", f"prune.levels={levels}", f"model.width={width}",
            "run.threads=1", f"run.quiet={str(quiet).lower()}", "retrain.schemes=[winning_ticket]", f"retrain.optim.epochs={epochs}",
            "retrain.optim.milestones=[]", f"probe.optim.epochs={epochs}", "probe.optim.milestones=[]"]
    for s in ("labels", "rotnet"):
        if s in signals:
            args += [f"signals.{s}.optim.epochs={epochs}", f"signals.{s}.optim.milestones=[]"]
        else:
            args += [f"~signals.{s}"]
    if "rotnet" not in signals:
        args += ["probe.signals=[]", f"signal={signals[0]}"]
    return args + list(extra)


def status(args) -> dict:
    return json.loads(cli("sslprune-status", *args, "--json").stdout)


def counts(st: dict, *keys: str) -> dict:
    return {kind: {k: c[k] for k in keys} for kind, c in st["kinds"].items()}


def live(store: Path) -> bool:
    """Whether SLURM still runs, or will run, a job of the store's ledger (squeue: milliseconds, no
    Python); a job whose dependency can never be satisfied (its parent failed) will not."""
    arrays = {r["array_job_id"] for r in job_records(store).values()}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%F %r"], capture_output=True, text=True).stdout
    return any(job in arrays and reason != "DependencyNeverSatisfied"
               for job, reason in (line.split(maxsplit=1) for line in out.splitlines() if " " in line))


def store_of(args) -> Path:
    (store,) = [a.split("=", 1)[1].strip("'") for a in args if a.startswith("store=")]
    return Path(store)


def wait_complete(args, timeout: float = 420) -> dict:
    """sslprune-status once every stage is done. It is asked only when squeue has none of the store's
    jobs left to run: each ask starts Python and composes the config, about 1 s of CPU, and asked every
    3 s while the jobs ran, the polls of the tier's two workers took half a core of two from the jobs."""
    store = store_of(args)
    return wait_for(lambda: None if live(store) else (lambda s: s if s["complete"] else None)(status(args)), timeout,
                    "all stages done", 1)


def job_records(store: Path) -> dict[str, dict]:
    from sslprune.control import ledger

    return ledger.records(store)


def step(stage_dir: Path) -> int:
    try:
        return json.loads((stage_dir / "progress.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def sacct_states(job_id: str) -> list[str]:
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True,
                         text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def logs(store: Path, job_id: str) -> str:
    # submitit's folder is <store>/slurm/%A: one folder per array, a log per job and task in it.
    return "".join(p.read_text() for p in sorted((store / "slurm" / job_id.split("_")[0]).glob(f"{job_id}_*_log.out")))


def models_equal(a: Path, b: Path, atol: float = 0.0) -> bool:
    import torch

    x, y = torch.load(a), torch.load(b)
    assert x.keys() == y.keys()
    if atol == 0:
        return all(torch.equal(x[k], y[k]) for k in x)
    return all(torch.allclose(x[k].double(), y[k].double(), atol=atol, rtol=0) for k in x)


# ----------------------------------------------------------------------------------------------------------


def test_demo_through_arrays_matches_local_run(tmp_path):
    """2 seeds x 2 signals x 2 levels + re-training + probes: 20 stages as 6 arrays with dependencies
    (per level: IMP, winning tickets, RotNet probes, each over both signals and seeds), and the probes
    of RotNet's initial weights: one more array that waits for nothing."""
    args = tiny(tmp_path / "slurm")
    local_args = tiny(tmp_path / "local", "run.workers=1")
    p = cli("sslprune-run", *args, *SLURM)
    assert f"store {tmp_path / 'slurm'}" in p.stdout
    assert "submitted 22 stage(s) in 7 array(s)" in p.stdout, p.stdout
    assert len(re.findall(r"job \d+", p.stdout)) >= 7
    assert re.search(r"submitted sslprune-demo-probe-digits-init-L0-[0-9a-f]{8}: 2 task\(s\) job \d+\n", p.stdout), p.stdout
    recs = job_records(tmp_path / "slurm")
    assert len(recs) == 22
    by = {(r["stage"]): r for r in recs.values()}
    imp0 = by["imp labels seed=0 level=0"]
    for other in ("imp labels seed=1 level=0", "imp rotnet seed=0 level=0", "imp rotnet seed=1 level=0"):
        assert by[other]["array_job_id"] == imp0["array_job_id"]  # signals and seeds are one array
    assert by["imp rotnet seed=0 level=0"]["index"] == 0  # the probed signal first: probes wait task for task
    assert by["imp labels seed=0 level=1"]["dependency"] == f"aftercorr:{imp0['array_job_id']}"
    assert by["retrain labels winning_ticket seed=0 level=0"]["dependency"] == f"aftercorr:{imp0['array_job_id']}"
    assert by["probe:digits rotnet seed=1 level=0"]["dependency"] == f"aftercorr:{imp0['array_job_id']}"
    st = status(args)  # right after submission: children wait on their parents' arrays
    c = st["kinds"]
    assert {k: c[k]["total"] for k in c} == {"imp": 8, "retrain": 8, "probe": 6}
    assert sum(c[k]["pending"] + c[k]["running"] + c[k]["done"] + c[k]["preempted"] for k in c) == 22
    assert sum(c[k]["pending"] for k in c) > 0 and sum(c[k]["failed"] + c[k]["blocked"] for k in c) == 0
    # The reference, on the same 2 cores, while the cluster works.
    local = subprocess.Popen(["sslprune-run", *local_args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        # Re-running while jobs are pending or running submits nothing and changes no record.
        again = cli("sslprune-run", *args, *SLURM)
        assert "nothing to submit" in again.stdout, again.stdout
        assert job_records(tmp_path / "slurm") == recs
        final = wait_complete(args)
        assert counts(final, "done") == {"imp": {"done": 8}, "retrain": {"done": 8}, "probe": {"done": 6}}
    finally:
        out, _ = local.communicate(timeout=600)
    assert local.returncode == 0, out[-3000:]
    cli("sslprune-report", *args)
    slurm_csv = (tmp_path / "slurm" / "reports" / "demo" / "results.csv").read_text()
    local_csv = (tmp_path / "local" / "reports" / "demo" / "results.csv").read_text()
    assert slurm_csv == local_csv
    # Every job ran the code snapshot taken at submission, not the checkout.
    log = logs(tmp_path / "slurm", imp0["job_id"])
    assert f"code {tmp_path / 'slurm' / 'code'}" in log, log[-2000:]


def test_requeue_preemption_and_cancel_resume_to_the_same_result(tmp_path):
    """One job: `scontrol requeue`, then USR2 (preemption/time limit), then scancel and re-submission."""
    common = ["signals.labels.optim.batch_size=32", "run.log_every=10", "retrain.schemes=[]"]
    # 1760 steps: the signals below are sent after about 420 steps (20, +100, +150, +150, each waited
    # for on progress.json every 0.2 s; the cancel came at step 642 on 2 cores at load 18), leaving
    # over 1000 steps for the job to be still running when it is cancelled. Every step more is paid
    # twice (job and reference), on the tier's 2 cores.
    epochs = 40
    args = tiny(tmp_path / "slurm", *common, signals=("labels",), seeds="[0]", levels=0, width=8, epochs=epochs,
                quiet=False)
    ref_args = tiny(tmp_path / "local", *common, signals=("labels",), seeds="[0]", levels=0, width=8, epochs=epochs,
                quiet=False)
    cli("sslprune-run", *args, *SLURM)
    ((d, rec),) = job_records(tmp_path / "slurm").items()
    d, job = Path(d), rec["job_id"]
    reference = subprocess.Popen(["sslprune-run", *ref_args], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    try:
        total = epochs * (1437 // 32)
        wait_for(lambda: step(d) >= 20, 300, "the job to start training", 0.2)
        st = status(args)
        assert counts(st, "running", "pending", "done") == {"imp": {"running": 1, "pending": 0, "done": 0}}
        (r,) = st["running"]
        assert r["job_id"] == job and r["total"] == total and r["step"] >= 20
        assert {"loss", "acc", "lr"} <= set(r["latest"]) and "acc" in r["best"]
        s = step(d)
        wait_for(lambda: step(d) >= s + 100, 300, "100 more steps", 0.2)
        assert not (d / "result.json").exists()
        subprocess.run(["scontrol", "requeue", job], check=True)  # external: no checkpoint() call
        wait_for(lambda: "preempted" if status(args)["kinds"]["imp"]["preempted"] == 1 else None, 30,
                 "status to show the requeued job as preempted", 0.5)
        s = step(d)
        wait_for(lambda: step(d) >= s + 150, 300, "150 steps after the requeue", 0.2)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what SLURM sends before the time limit
        s = step(d)
        wait_for(lambda: step(d) >= s + 150, 300, "150 steps after the USR2 requeue", 0.2)
        assert not (d / "result.json").exists()
        subprocess.run(["scancel", job], check=True)
        st = wait_for(lambda: (lambda s: s if s["kinds"]["imp"]["failed"] == 1 else None)(status(args)), 60,
                      "status to show the cancelled job as failed")
        assert st["problems"][0]["job_id"] == job
        again = cli("sslprune-run", *args, *SLURM)  # re-submission resumes from the checkpoint
        assert "submitted 1 stage(s)" in again.stdout, again.stdout
        new_job = job_records(tmp_path / "slurm")[str(d)]["job_id"]
        assert new_job != job
        wait_complete(args, 300)
    finally:
        out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-3000:]
    resumed = [int(s) for s in re.findall(r"resumed from .*checkpoint\.pt at step (\d+)/", logs(tmp_path / "slurm", job)
                                          + logs(tmp_path / "slurm", new_job))]
    assert len(resumed) == 3 and 0 < resumed[0] < resumed[1] < resumed[2] < total, resumed
    assert sacct_states(job).count("REQUEUED") == 2
    (ref_dir,) = [p.parent for p in (tmp_path / "local").rglob("result.json")]
    assert models_equal(d / "model.pt", ref_dir / "model.pt")
    assert json.loads((d / "result.json").read_text())["accuracy"] == \
        json.loads((ref_dir / "result.json").read_text())["accuracy"]


def test_failure_is_retried_then_only_the_failed_part_is_resubmitted(tmp_path):
    base = tiny(tmp_path, signals=("labels",), seeds="[0]")
    cli("sslprune-run", *[a for a in base if not a.startswith("prune.levels")], "prune.levels=0")  # level 0 here
    # run.device is not identity and is only checked where the job runs: every try of level 1 crashes.
    p = cli("sslprune-run", *base, *SLURM, "run.device=cuda", "launcher.max_retries=1")
    assert "submitted 2 stage(s)" in p.stdout, p.stdout
    recs = {r["stage"]: r for r in job_records(tmp_path).values()}
    failing = recs["imp labels seed=0 level=1"]["job_id"]
    # sslprune-status (about 1 s of CPU) only once squeue has none of the store's jobs left to run.
    st = wait_for(lambda: None if live(tmp_path) else (
        lambda s: s if s["kinds"]["imp"]["failed"] == 1 and s["kinds"]["retrain"]["blocked"] == 1 else None)(
        status(base)), 180, "the failure and the blocked child")
    assert counts(st, "done", "failed", "blocked", "pending", "running") == {
        "imp": {"done": 1, "failed": 1, "blocked": 0, "pending": 0, "running": 0},
        "retrain": {"done": 1, "failed": 0, "blocked": 1, "pending": 0, "running": 0}}
    blocked = [x for x in st["problems"] if x["state"] == "blocked"]
    assert blocked[0]["blocked_by"] == "imp labels seed=0 level=1"
    text = cli("sslprune-status", *base).stdout
    assert "blocked by imp labels seed=0 level=1" in text and "FAILED" in text
    (failed,) = [x for x in st["problems"] if x["state"] == "failed"]
    assert failed["log"].endswith(f"{failing}_0_log.out") and Path(failed["log"]).is_file()  # the log, not its folder
    assert "retry 1/1" in Path(failed["log"]).read_text()
    # The crash was retried once (a requeue of the same job), then the job failed for good.
    time.sleep(2)
    assert sacct_states(failing) == ["REQUEUED", "FAILED"]
    assert "retry 1/1" in logs(tmp_path, failing)
    # Fixed and re-run: only the failed stage and the one it blocked are submitted.
    again = cli("sslprune-run", *base, *SLURM)
    assert "submitted 2 stage(s) in 2 array(s)" in again.stdout, again.stdout
    new = {r["stage"]: r for r in job_records(tmp_path).values()}
    assert set(new) == {"imp labels seed=0 level=1", "retrain labels winning_ticket seed=0 level=1"}
    assert new["imp labels seed=0 level=1"]["history"] == [failing]
    final = wait_complete(base, 240)
    assert counts(final, "done") == {"imp": {"done": 2}, "retrain": {"done": 2}}


def test_two_task_ddp_job_matches_one_process(tmp_path):
    args = tiny(tmp_path / "ddp", "retrain.schemes=[]", "run.log_every=5", signals=("labels",), seeds="[0]",
                levels=0, epochs=2)
    ref = tiny(tmp_path / "one", "retrain.schemes=[]", signals=("labels",), seeds="[0]", levels=0, epochs=2)
    cli("sslprune-run", *args, *SLURM, "launcher.tasks_per_node=2")
    cli("sslprune-run", *ref)
    wait_complete(args, 240)
    (a,) = (tmp_path / "ddp").rglob("result.json")
    (b,) = (tmp_path / "one").rglob("result.json")
    job = job_records(tmp_path / "ddp")[str(a.parent)]["job_id"]
    log = logs(tmp_path / "ddp", job)
    assert "rank 0/2" in log and "rank 1/2" in log
    assert models_equal(a.parent / "model.pt", b.parent / "model.pt", atol=1e-5)
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["accuracy"] == rb["accuracy"] and ra["count"] == rb["count"]
    assert abs(ra["loss"] - rb["loss"]) < 1e-5


def test_stage_multirun_with_stock_submitit_launcher_is_one_array(tmp_path):
    args = tiny(tmp_path, levels=0)
    p = cli("sslprune-imp", "-m", *[a for a in args if not a.startswith("seeds=")], "signal=rotnet,labels",
            "seed=0,1", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10")
    done = sorted(tmp_path.rglob("level_0/result.json"))
    assert len(done) == 4, p.stdout[-3000:]
    tasks = [d.name for d in tmp_path.glob("multirun/*/.submitit/*") if re.fullmatch(r"\d+_\d+", d.name)]
    assert len(tasks) == 4 and len({t.split("_")[0] for t in tasks}) == 1, tasks
    # Each task ran its stage as a preemption-safe StageJob (signal handlers, SLURM runtime).
    logs = [f.read_text() for f in tmp_path.glob("multirun/*/.submitit/*/*_log.out")]
    assert len(logs) == 4 and all("[sslprune job] imp" in log for log in logs), logs[:1]


def test_transfer_chains_and_new_evaluations_run_as_dependent_arrays(tmp_path, fashion_mnist):
    """Pruning during transfer waits for its source's level 0 (afterok across chains); SVM and
    fine-tuning stages run as arrays after their IMP level, all on the real cluster."""
    store = tmp_path / "store"
    args = [f"store={store}", "experiment=fig2_voc07_finetune_resnet50_small", "seeds=[0]", "prune.levels=1",
            f"signals.transfer.data.root={fashion_mnist}",
            "model.width=4", "run.threads=1", "run.quiet=true", "data.train_limit=512", "data.test_limit=128",
            "svm.signals=[rotnet]", "svm.datasets=[{name: digits}]", "svm.folds=2", "finetune.levels=null", "prune.rewind=1it",
            "signals.transfer.data.train_limit=256", "finetune.datasets=[{name: digits}]"]
    for key in ("signals.rotnet.optim", "signals.transfer.optim", "finetune.optim"):
        args += [f"{key}.epochs=1", f"{key}.milestones=[]"]
    p = cli("sslprune-run", *args, *SLURM)
    assert "submitted" in p.stdout
    records = job_records(store)
    transfer0 = [r for r in records.values() if r["stage"] == "imp transfer seed=0 level=0"]
    rotnet0 = [r for r in records.values() if r["stage"] == "imp rotnet seed=0 level=0"]
    assert transfer0 and rotnet0 and transfer0[0]["dependency"] == f"afterok:{rotnet0[0]['job_id']}"
    st = wait_complete(args + SLURM, timeout=600)
    assert st["complete"]
    results = {json.loads(f.read_text())["kind"] for f in store.rglob("result.json")}
    assert results == {"imp", "svm", "finetune"}
    # rotnet: imp, svm, finetune x 2 levels, and the SVM of its initial weights; transfer: imp x 2
    assert len(list(store.rglob("result.json"))) == 2 * 3 + 1 + 2
    assert len(list(store.rglob("init_svm_*/result.json"))) == 1


def test_ddp_preemption_stops_every_rank_at_the_same_step_and_resumes_bit_for_bit(tmp_path):
    """A 2-task job gets USR2 mid-stage: both ranks stop at one step boundary (they agree every
    run.interrupt_every steps), rank 0 checkpoints and requeues, the job resumes, and the weights
    equal an uninterrupted 2-task run's. Before, only rank 0 stopped and the other hung in a collective."""
    common = ["retrain.schemes=[]", "signals.labels.optim.batch_size=32", "run.log_every=10", "run.interrupt_every=5",
              "launcher.tasks_per_node=2"]
    # 176 steps: USR2 goes at step 40 (progress.json polled every 0.2 s) and both ranks stop within
    # run.interrupt_every=5 steps of it (at 45 on 2 cores at load 18), far from the end; each step more
    # is paid by 4 processes.
    epochs = 4
    args = tiny(tmp_path / "stopped", *common, signals=("labels",), seeds="[0]", levels=0, width=8, epochs=epochs,
                quiet=False)
    ref = tiny(tmp_path / "straight", *common, signals=("labels",), seeds="[0]", levels=0, width=8, epochs=epochs)
    cli("sslprune-run", *args, *SLURM)
    cli("sslprune-run", *ref, *SLURM)
    ((d, rec),) = job_records(tmp_path / "stopped").items()
    d, job = Path(d), rec["job_id"]
    total = epochs * (1437 // 32)
    wait_for(lambda: step(d) >= 40, 300, "the 2-task job to start training", 0.2)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for(lambda: "REQUEUED" in sacct_states(job), 120, "the job to requeue itself")
    wait_complete(args, 600)
    wait_complete(ref, 600)
    log = logs(tmp_path / "stopped", job)
    stops = {int(r): int(s) for r, s in re.findall(r"rank (\d): interrupted at step (\d+)", log)}
    assert set(stops) == {0, 1} and stops[0] == stops[1], log[-3000:]
    assert stops[0] % 5 == 0 and 40 <= stops[0] < total
    resumed = [int(s) for s in re.findall(r"resumed from .*checkpoint\.pt at step (\d+)/", log)]
    assert resumed == [stops[0]] * 2, log[-3000:]  # both ranks restore the same checkpoint
    (straight,) = [p.parent for p in (tmp_path / "straight").rglob("result.json")]
    assert models_equal(d / "model.pt", straight / "model.pt")
    a, b = json.loads((d / "result.json").read_text()), json.loads((straight / "result.json").read_text())
    assert a["accuracy"] == b["accuracy"] and a["world"] == b["world"] == 2


def test_a_cancelled_pending_array_is_cancelled_not_unknown(tmp_path):
    """Accounting keeps a pending array cancelled before its tasks split under the array's own id;
    status used to say `unknown` for its tasks once squeue forgot them (MinJobAge)."""
    from sslprune.control import slurm

    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    out = subprocess.run(["sbatch", "--parsable", "--partition=debug", "--time=5", "--array=0-3",
                          f"--output={tmp_path}/%A_%a.out",  # not slurm-*.out in the checkout (pytest's cwd)
                          "--dependency=afterok:999999999", str(script)], capture_output=True, text=True, check=True)
    array = out.stdout.strip().split(";")[0]
    subprocess.run(["scancel", array], check=True)
    tasks = [f"{array}_{i}" for i in range(4)]
    states = wait_for(lambda: (lambda s: s if len(s) == 4 and all(v.state == "CANCELLED" for v in s.values()) else None)(
        slurm.accounting(tasks, time.time() - 60)), 30, "accounting to record the cancellation", 0.5)
    assert {j: v.state for j, v in states.items()} == {j: "CANCELLED" for j in tasks}


def test_a_packed_job_runs_its_stages_in_one_process_and_resumes_after_preemption(tmp_path):
    """launcher.pack: the re-training starts of a level run one after the other in one job; USR2
    in the middle of the second requeues the job, which skips the first (done) and resumes the
    second from its checkpoint. Results equal unpacked local runs', each stage has its own result,
    and result.json says how long the job took to reach its first training step."""
    # 264 steps a re-training: USR2 goes at the second stage's step 30 (progress.json polled every
    # 0.2 s) and it stops within run.interrupt_every steps (at 36 on 2 cores at load 18), far from its
    # end; each step more is paid 6 times (3 stages, here and in the local reference).
    common = ["retrain.schemes=[winning_ticket,random_reinit,random]", "retrain.levels=[1]",
              "retrain.optim.batch_size=32", "retrain.optim.epochs=6", "run.log_every=10", "run.checkpoint_steps=20"]
    args = tiny(tmp_path / "packed", *common, "launcher.pack=true", signals=("labels",), seeds="[0]", levels=1,
                width=8, epochs=1, quiet=False)
    ref = tiny(tmp_path / "local", *common, "run.workers=1", signals=("labels",), seeds="[0]", levels=1, width=8,
               epochs=1)
    p = cli("sslprune-run", *args, *SLURM)
    # IMP 0, IMP 1, the pack of level 1's starts from its mask, and the random start of level 1, which
    # is one stage for every signal (issue 22) and waits for no parent: a job of its own
    assert "submitted 5 stage(s) in 4 array(s)" in p.stdout, p.stdout
    reference = subprocess.Popen(["sslprune-run", *ref], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    try:
        recs = {r["stage"]: (d, r) for d, r in job_records(tmp_path / "packed").items()}
        starts = [recs[f"retrain labels {s} seed=0 level=1"] for s in ("winning_ticket", "random_reinit")]
        assert len({r["job_id"] for _, r in starts}) == 1  # one job for the two starts from the mask
        shared = recs["retrain random mask seed=0 level=1"]
        assert shared[1]["job_id"] != starts[0][1]["job_id"]
        job = starts[0][1]["job_id"]
        first, second = Path(starts[0][0]), Path(starts[1][0])
        wait_for(lambda: (first / "result.json").exists() and step(second) >= 30, 600,
                 "the second stage of the pack to train", 0.2)
        done_at = (first / "result.json").stat().st_mtime_ns
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        st = wait_complete(args, 600)
        assert counts(st, "done") == {"imp": {"done": 2}, "retrain": {"done": 3}}
    finally:
        out, _ = reference.communicate(timeout=900)
    assert reference.returncode == 0, out[-3000:]
    assert (first / "result.json").stat().st_mtime_ns == done_at  # not trained again after the requeue
    log = logs(tmp_path / "packed", job)
    assert "REQUEUED" in sacct_states(job)
    resumed = re.findall(r"\[retrain labels random_reinit seed=0 level=1\] resumed from .*checkpoint\.pt at step (\d+)/",
                         log)
    assert len(resumed) == 1 and int(resumed[0]) >= 20, log[-3000:]
    assert "retrain labels winning_ticket seed=0 level=1: first training step" in log
    local = {json.loads(f.read_text())["evaluation"]: f.parent for f in (tmp_path / "local").rglob("result.json")
             if json.loads(f.read_text())["kind"] == "retrain"}
    for d, _ in starts + [shared]:
        r = json.loads((Path(d) / "result.json").read_text())
        assert models_equal(Path(d) / "model.pt", local[r["evaluation"]] / "model.pt"), r["evaluation"]
        assert r["accuracy"] == json.loads((local[r["evaluation"]] / "result.json").read_text())["accuracy"]
        assert r["startup_s"] is not None and r["startup_s"] >= r["setup_s"] > 0


def test_a_login_node_without_torch_submits(tmp_path):
    """launcher=slurm plans and submits with torch, torchvision, sklearn and scipy absent (they raise
    ImportError on import); the jobs, on the compute nodes, have them."""
    from test_planes import _without_heavy

    args = tiny(tmp_path / "store", signals=("labels",), seeds="[0]", levels=1, epochs=1)
    env = _without_heavy(tmp_path)
    assert cli("python", "-c", "import torch", check=False, env=env).returncode != 0
    # Held: the jobs would inherit this environment (sbatch exports it), and the point is the login node.
    p = cli("sslprune-run", *args, *SLURM, "+launcher.additional_parameters.hold=true", env=env)
    assert "submitted 4 stage(s) in 4 array(s)" in p.stdout, p.stdout
    recs = job_records(tmp_path / "store")
    try:
        assert len(recs) == 4
        st = json.loads(cli("sslprune-status", *args, "--json", env=env).stdout)
        assert sum(c["pending"] for c in st["kinds"].values()) == 4
        again = cli("sslprune-run", *args, *SLURM, env=env)
        assert "nothing to submit" in again.stdout
    finally:
        subprocess.run(["scancel", *{r["array_job_id"] for r in recs.values()}])


def test_code_planted_in_a_snapshot_is_refused_by_the_job_and_by_the_next_submission(tmp_path):
    """The job checks <store>/code/<hash> against its name before Python imports it: a job whose
    snapshot was changed while it waited fails with one line and runs nothing of it; the next
    submission refuses the snapshot too, submitting nothing."""
    from sslprune.control import snapshot

    store, marker = tmp_path / "store", tmp_path / "PWNED"
    args = tiny(store, signals=("labels",), seeds="[0]", levels=0)
    cli("sslprune-run", *args, *SLURM, "+launcher.additional_parameters.hold=true")
    recs = job_records(store)
    try:
        (code,) = (store / "code").iterdir()
        with open(code / "sslprune" / "control" / "job.py", "a") as f:
            f.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
        imp = next(r["job_id"] for r in recs.values() if r["stage"] == "imp labels seed=0 level=0")
        subprocess.run(["scontrol", "release", *{r["job_id"] for r in recs.values()}], check=True)
        wait_for(lambda: sacct_states(imp) == ["FAILED"], 120, "the job to refuse its snapshot")
        line = (f"sslprune: error: code snapshot {code} does not match its name (its content hashes to "
                f"{snapshot.digest(code)}): code was added or "
                "changed in the store; refusing to run it. Remove that folder to take a fresh snapshot")
        assert logs(store, imp).strip().splitlines() == [line]
        assert not marker.exists()
        ledger = (store / "jobs" / "ledger.jsonl").read_text()
        p = cli("sslprune-run", *args, *SLURM, check=False)
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [line], p.stderr
        assert (store / "jobs" / "ledger.jsonl").read_text() == ledger and not marker.exists()
    finally:
        subprocess.run(["scancel", *{r["array_job_id"] for r in recs.values()}])


def test_a_held_array_whose_dependency_slurm_refuses_is_cancelled_with_one_line(tmp_path):
    """A held array whose per-task dependency SLURM refuses (in use: a parent purged since it was
    queried; here a circular one, which SLURM always refuses) is cancelled, not left held forever
    and unrecorded, and the error is one line naming the refusal and the array."""
    from sslprune.control import slurm, submission

    base = subprocess.run(["sbatch", "--parsable", "--hold", "--array=0-1", "-o", "/dev/null", "--wrap", "true"],
                          check=True, capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    tasks = [f"{base}_0", f"{base}_1"]
    try:
        assert {j: s.state for j, s in slurm.query(tasks).items()} == {t: "PENDING" for t in tasks}
        with pytest.raises(errors.Refused) as e:
            submission.wire(base, {tasks[0]: f"afterok:{tasks[1]}", tasks[1]: f"afterok:{tasks[0]}"})
        assert str(e.value) == (f"scontrol update JobId={tasks[1]} Dependency=afterok:{tasks[0]} failed: "
                                f"{tasks[1]}: Circular job dependency; array {base} was cancelled")
        wait_for(lambda: not any(s.live for s in slurm.query(tasks).values()), 30, "the array to be cancelled")
        assert {s.state for s in slurm.query(tasks).values()} == {"CANCELLED"}
    finally:
        subprocess.run(["scancel", base])


def test_arrays_sbatch_accepted_are_recorded_when_another_is_refused(tmp_path):
    """When sbatch refuses one array of a submission (here single-task jobs asking for a GPU the
    cluster lacks), the error is one line and the arrays already in SLURM are recorded: the next run
    submits only the refused stages, never a second job for a queued one."""
    store = tmp_path / "store"
    args = tiny(store, seeds="[0]", levels=0) + ["probe.features=standardised", *SLURM,
                                                  "+launcher.additional_parameters.hold=true"]
    p = cli("sslprune-run", *args, "launcher.single.gpus_per_node=1", check=False)
    recs = job_records(store)
    try:
        assert p.returncode == 2, p.stderr
        *echoed, line = p.stderr.strip().splitlines()  # submitit echoes sbatch's own line for each refused array
        assert echoed == ["sbatch: error: Invalid generic resource (gres) specification"] * 2, p.stderr
        assert re.fullmatch(r"sslprune: error: sbatch refused sslprune-demo-probe-digits(-init)?-L0-\w+: "
                            r"sbatch: error: Invalid generic resource \(gres\) specification; "
                            r"4 stage\(s\) in 2 array\(s\) were submitted and recorded: run again to submit the rest",
                            line), p.stderr
        assert sorted(r["stage"] for r in recs.values()) == [
            "imp labels seed=0 level=0", "imp rotnet seed=0 level=0",
            "retrain labels winning_ticket seed=0 level=0", "retrain rotnet winning_ticket seed=0 level=0"]
        cli("sslprune-run", *args)
        again = job_records(store)
        assert {d: r["job_id"] for d, r in again.items() if d in recs} == {d: r["job_id"] for d, r in recs.items()}
        assert sorted(r["stage"] for d, r in again.items() if d not in recs) == [
            "probe:digits rotnet seed=0 level=0", "probe:digits@init rotnet seed=0 level=0"]
        assert all(r["history"] == [] for r in again.values())
    finally:
        subprocess.run(["scancel", *{r["array_job_id"] for r in job_records(store).values()}])
