"""DDP across two real SLURM nodes (slurm/two-node-cluster.sh: n1 and n2 in two network namespaces).

Each node has its own network stack, hostname and hosts file; the ranks of a `launcher.nodes=2` job
meet over the veth pair between them (MASTER_ADDR n1 = 127.0.1.1), as on a real cluster. Every
client command runs inside n1's namespace with SLURM_CONF naming that cluster's config. The store is
on the file system both nodes share. A two-node run must give the same bytes as one node with two tasks.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, cli, cluster_start_lock, numbers, wait_for as waiting

pytestmark = pytest.mark.slurm
# The longest tests, in seconds (the SLURM tier at load 16 on 2 cores): conftest hands them out first.
LONGEST = {"test_two_nodes_and_a_packed_job_give_the_bytes_of_one_node_with_two_tasks": 246,
           "test_a_two_node_stage_requeued_and_preempted_mid_stage_gives_the_same_bytes": 177}

CONF = "/etc/slurm-two-node/slurm.conf"
NETNS = "/run/netns/sslprune-n1"
TWO_NODES = ["launcher=slurm_two_node", "launcher.nodes=2", "launcher.tasks_per_node=1"]
ONE_NODE = ["launcher=slurm_two_node", "launcher.nodes=1", "launcher.tasks_per_node=2"]


@pytest.fixture(scope="session", autouse=True)
def two_node_cluster():
    if os.geteuid() != 0:
        pytest.skip("the two-node SLURM cluster needs root (network namespaces)")
    missing = [t for t in ("ip", "nsenter", "unshare") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"the two-node SLURM cluster needs {', '.join(missing)}")
    with cluster_start_lock():  # xdist's workers each ask for the one two-node cluster
        p = subprocess.run(["bash", str(ROOT / "slurm" / "two-node-cluster.sh"), "start"], capture_output=True,
                           text=True, timeout=1200)
    if p.returncode != 0:
        pytest.fail(f"two-node SLURM cluster did not start:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")


def on_cluster(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A command as a user of the two-node cluster runs it: inside n1's network namespace."""
    return cli("nsenter", f"--net={NETNS}", "--", *args, env={"SLURM_CONF": CONF}, check=check)


def args_for(store: Path, *extra: str, levels=0, width=4, epochs=1, batch=128) -> list[str]:
    """One labels chain on digits, a width-4 ResNet: seconds per stage."""
    args = [f"store={store}", "experiment=demo", "seeds=[0]", f"prune.levels={levels}", f"model.width={width}",
            "run.threads=1", "run.quiet=false", "run.log_every=10", "~signals.rotnet", "probe.signals=[]",
            "signal=labels", f"signals.labels.optim.epochs={epochs}", "signals.labels.optim.milestones=[]",
            f"signals.labels.optim.batch_size={batch}", f"retrain.optim.epochs={epochs}", "retrain.optim.milestones=[]",
            f"retrain.optim.batch_size={batch}"]
    return args + list(extra)


def records(store: Path) -> dict[str, dict]:
    from sslprune.control import ledger

    return ledger.records(store)


def complete(args) -> bool:
    """Every stage done. sslprune-status (Python and a config: about 1 s of CPU, the jobs' CPU) is asked
    only once the two-node cluster's squeue (milliseconds) lists none of the store's jobs."""
    (store,) = [Path(a.split("=", 1)[1]) for a in args if a.startswith("store=")]
    arrays = {r["array_job_id"] for r in records(store).values()}
    if arrays & set(on_cluster("squeue", "-h", "-r", "-o", "%F", check=False).stdout.split()):
        return False
    return json.loads(on_cluster("sslprune-status", *args, "--json").stdout)["complete"]


def wait_for(predicate, timeout: float, what: str, every: float = 1.0):
    return waiting(predicate, timeout, what, every, queue=lambda: on_cluster("squeue", check=False).stdout)


def step(stage_dir: Path) -> int:
    try:
        return json.loads((stage_dir / "progress.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def logs(store: Path, job_id: str) -> str:
    return "".join(p.read_text() for p in sorted((store / "slurm" / job_id.split("_")[0]).glob(f"{job_id}_*_log.out")))


def crashed(store: Path) -> bool:
    """Fail at once, with the log, when a rank of a job raised (rather than wait for a hung peer)."""
    for f in sorted((store / "slurm").glob("*/*_log.out")):
        text = f.read_text()
        if "Submitted job triggered an exception" in text:
            raise AssertionError(f"{f}:\n{text[-3000:]}")
    return False


def ranks_on(log: str) -> dict[int, str]:
    """Which host each global rank ran on, from submitit's start lines."""
    return {int(r): h for h, r in re.findall(r"JobEnvironment\(job_id=\S+, hostname=(\w+), .*global_rank=(\d+)\(", log)}


def stage_files(store: Path) -> dict[str, bytes]:
    """Every output of every stage (model.pt, mask.pt, ...: what result.json lists), and result.json
    without its timings, by path relative to the store."""
    out = {}
    for result in store.rglob("result.json"):
        r = json.loads(result.read_text())
        assert {"model.pt", "mask.pt"} <= set(r["outputs"]), r["outputs"]
        for name in r["outputs"]:
            out[str(result.parent.relative_to(store) / name)] = (result.parent / name).read_bytes()
        out[str(result.relative_to(store))] = json.dumps(numbers(r),
                                                         sort_keys=True).encode()
    return out


def assert_same_bytes(a: Path, b: Path, stages: int) -> None:
    fa, fb = stage_files(a), stage_files(b)
    assert len([k for k in fa if k.endswith("result.json")]) == stages
    assert sorted(fa) == sorted(fb)
    differ = [k for k in fa if fa[k] != fb[k]]
    assert not differ, differ
    for k, v in fa.items():
        if k.endswith("result.json"):
            assert json.loads(v)["world"] == 2


# ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_nodes_and_a_packed_job_give_the_bytes_of_one_node_with_two_tasks(tmp_path):
    """IMP levels 0 and 1 and a pack of two re-training starts (one job running both stages, one
    init_process_group per stage) on n1+n2, against the same stages unpacked on one node with two
    tasks: model.pt, mask.pt, rewind.pt, sparsity reports and results are the same bytes."""
    extra = ["retrain.schemes=[winning_ticket,random_reinit]", "retrain.levels=[1]"]
    two = args_for(tmp_path / "two", *extra, levels=1)
    one = args_for(tmp_path / "one", *extra, levels=1)
    p = on_cluster("sslprune-run", *two, *TWO_NODES, "launcher.pack=true")
    assert "submitted 4 stage(s) in 3 array(s)" in p.stdout, p.stdout  # IMP 0, IMP 1, the pack of level 1
    q = on_cluster("sslprune-run", *one, *ONE_NODE)
    assert "submitted 4 stage(s) in 4 array(s)" in q.stdout, q.stdout
    wait_for(lambda: not crashed(tmp_path / "two") and complete(two) and complete(one), 600, "both runs to finish")
    by = {r["stage"]: r for r in records(tmp_path / "two").values()}
    packed = {by[f"retrain labels {s} seed=0 level=1"]["job_id"] for s in ("winning_ticket", "random_reinit")}
    assert len(packed) == 1  # both starts in one job
    for r in by.values():
        log = logs(tmp_path / "two", r["job_id"])
        assert ranks_on(log) == {0: "n1", 1: "n2"}, log[-3000:]
    pack_log = logs(tmp_path / "two", packed.pop())
    assert pack_log.count("Job completed successfully") == 2 and "Traceback" not in pack_log, pack_log[-3000:]
    for r in records(tmp_path / "one").values():
        assert set(ranks_on(logs(tmp_path / "one", r["job_id"])).values()) in ({"n1"}, {"n2"})
    assert_same_bytes(tmp_path / "two", tmp_path / "one", stages=4)


@pytest.mark.slow
def test_a_two_node_stage_requeued_and_preempted_mid_stage_gives_the_same_bytes(tmp_path):
    """`scontrol requeue` (SIGTERM, no checkpoint() call), then USR2 (preemption or time limit),
    both in the middle of a two-node stage: it resumes each time from its checkpoint and ends with
    the bytes of an uninterrupted run on one node with two tasks."""
    # 154 steps: every DDP step waits on a few dozen small collectives, about 0.3 s a step on 2 busy
    # cores; the requeue goes at step 20 and USR2 30 steps after the restart, leaving about 90 steps.
    extra = ["retrain.schemes=[]", "run.interrupt_every=5", "run.checkpoint_steps=10"]
    epochs = 7
    two = args_for(tmp_path / "two", *extra, epochs=epochs, batch=64)
    one = args_for(tmp_path / "one", *extra, epochs=epochs, batch=64)
    on_cluster("sslprune-run", *two, *TWO_NODES)
    on_cluster("sslprune-run", *one, *ONE_NODE)
    ((d, rec),) = records(tmp_path / "two").items()
    d, job = Path(d), rec["job_id"]
    total = epochs * (1437 // 64)
    wait_for(lambda: step(d) >= 20, 300, "the two-node job to train", 0.5)
    on_cluster("scontrol", "requeue", job)
    wait_for(lambda: "restart 1:" in logs(tmp_path / "two", job), 120, "the requeued job to restart")
    s = step(d)
    wait_for(lambda: step(d) >= s + 30, 300, "30 steps after the requeue", 0.5)
    on_cluster("scancel", "--signal=USR2", job)
    wait_for(lambda: "restart 2:" in logs(tmp_path / "two", job), 120, "the job to requeue itself after USR2")
    wait_for(lambda: complete(two) and complete(one), 600, "both runs to finish")
    log = logs(tmp_path / "two", job)
    assert ranks_on(log) == {0: "n1", 1: "n2"}, log[-3000:]
    stops = {int(r): int(s) for r, s in re.findall(r"rank (\d): interrupted at step (\d+)", log)}
    usr2 = [int(s) for s in re.findall(r"rank 0: interrupted at step (\d+).*: USR2", log)]
    assert len(usr2) == 1 and stops == {0: usr2[0], 1: usr2[0]}, log[-3000:]  # both ranks stop at one step
    resumed = [int(s) for s in re.findall(r"resumed from .*checkpoint\.pt at step (\d+)/", log)]
    # Each rank (rank 0's log first) resumes twice, the second time from the step where both stopped at USR2.
    assert len(resumed) == 4 and resumed[:2] == resumed[2:] and 0 < resumed[0] < resumed[1] == usr2[0] < total, resumed
    assert_same_bytes(tmp_path / "two", tmp_path / "one", stages=1)


def test_the_one_node_cluster_script_leaves_the_two_node_daemons_alone():
    """local-cluster.sh finds its daemons by pid file, else by process name: without its pid files
    (here hidden under a tmpfs, in a private mount namespace) it used to count n1's and n2's slurmctld
    and slurmd as its own, so its `stop` would have killed the two-node cluster. It keeps to its own
    network namespace now."""
    theirs = {int(p.read_text()) for p in Path("/run/slurm-two-node").glob("*.pid")}
    assert len(theirs) == 3  # slurmctld, slurmd n1, slurmd n2
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs none /run/slurm && bash {ROOT / 'slurm' / 'local-cluster.sh'} status"],
                       capture_output=True, text=True, timeout=60)
    seen = {name: {int(x) for x in pids.split()} for name, pids in
            re.findall(r"^(slurmctld|slurmd) +running \(pid ([\d ]+)\)", p.stdout, re.M)}
    assert set(seen) == {"slurmctld", "slurmd"}, p.stdout  # the one-node cluster's own daemons, found by name
    assert not (seen["slurmctld"] | seen["slurmd"]) & theirs, p.stdout
    here = os.stat("/proc/self/ns/net").st_ino
    assert all(os.stat(f"/proc/{pid}/ns/net").st_ino == here for pid in seen["slurmctld"] | seen["slurmd"])
