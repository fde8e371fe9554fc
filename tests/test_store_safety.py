"""The store is safe and repairs itself: no code runs from a store file, a damaged checkpoint or a
damaged finished output is never fatal (the stage resumes from an older checkpoint or is
recomputed, nothing else is), stray temporary files go away, two runs on one store never train a
stage twice, and a full disk is one line and a resumable run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sslprune.core import store as files, errors

from conftest import ROOT, cli
from sslprune.core.errors import Interrupted
from sslprune.core.stage import ImpLevel

TINY = ["model.width=4", "signal=labels", "run.threads=1", "run.checkpoint_steps=1", "run.log_every=10",
        "prune.levels=0", "prune.rewind=5it", "signals.labels.optim.epochs=4", "signals.labels.optim.milestones=[2]",
        "run.quiet=false"]


def _imp(store: Path, *extra: str) -> list[str]:
    return ["sslprune-imp", f"store={store}", *TINY, *extra]


def _level0(store: Path) -> Path:
    (d,) = (store / "imp").iterdir()
    return d / "seed_0" / "level_0"


def _same_weights(a: Path, b: Path) -> bool:
    import torch
    from sslprune.compute import checkpoint

    x, y = checkpoint.load(a), checkpoint.load(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    store = tmp_path_factory.mktemp("ref") / "store"
    cli(*_imp(store))
    return _level0(store)


def _partial(store: Path, steps: int) -> Path:
    """A level 0 stopped after `steps` updates, with its checkpoint and the previous one."""
    from sslprune.compute import runner

    import torch

    from sslprune.compute.runtime import Runtime
    from sslprune.launch.compose import CONF_DIR, typed
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = typed(compose("config", overrides=[f"store={store}", *TINY, "run.quiet=true"]))
    polls = iter(range(10_000))
    with pytest.raises(Interrupted):
        runner.run(ImpLevel(cfg, "labels", 0, 0), Runtime(torch.device("cpu")), interrupt=lambda: next(polls) == steps)
    return _level0(store)


# ---------------------------------------------------------------- no code runs from a store file


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_a_crafted_checkpoint_is_refused_and_nothing_runs(tmp_path):
    import torch

    store, marker = tmp_path / "store", tmp_path / "PWNED"
    level0 = _partial(store, 5)
    torch.save({"model": {}, "step": 3, "evil": _Payload(marker)}, level0 / "checkpoint.pt")
    p = cli(*_imp(store), check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to load" in lines[0] and str(level0 / "checkpoint.pt") in lines[0]
    assert "system" in lines[0] and "nothing in it was run" in lines[0]
    assert not marker.exists()
    assert not (level0 / "result.json").exists()


@pytest.mark.slow
def test_a_crafted_parent_output_is_refused_too(tmp_path, reference):
    import torch

    store, marker = tmp_path / "store", tmp_path / "PWNED"
    level0 = _copy(reference, store)  # the finished level 0 that `reference` already ran, not a second run of it
    torch.save({"x": _Payload(marker)}, level0 / "rewind.pt")
    result = json.loads((level0 / "result.json").read_text())
    result["outputs"]["rewind.pt"] = {"bytes": (level0 / "rewind.pt").stat().st_size,
                                      "sha256": files.sha256(level0 / "rewind.pt")}
    (level0 / "result.json").write_text(json.dumps(result))  # even a file the manifest vouches for
    p = cli(*_imp(store, "prune.levels=1", "level=1"), check=False)
    assert p.returncode == 2 and "refusing to load" in p.stderr and "rewind.pt" in p.stderr
    assert not marker.exists()


# ---------------------------------------------------------------- damaged checkpoints


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    from sslprune.compute import checkpoint

    store = tmp_path / "store"
    level0 = _partial(store, 9)
    assert checkpoint.load(level0 / "checkpoint.prev.pt")["step"] == checkpoint.load(level0 / "checkpoint.pt")["step"] - 1
    data = (level0 / "checkpoint.pt").read_bytes()
    (level0 / "checkpoint.pt").write_bytes(data[:len(data) // 2])  # truncated
    p = cli(*_imp(store))
    warnings = [line for line in p.stdout.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and str(level0 / "checkpoint.pt") in warnings[0], p.stdout[-3000:]
    assert "resuming from the previous checkpoint" in warnings[0]
    assert f"resumed from {level0 / 'checkpoint.prev.pt'} at step 8/" in p.stdout  # the file it came from
    assert _same_weights(level0 / "model.pt", reference / "model.pt")


@pytest.mark.slow
def test_both_checkpoints_damaged_restart_the_stage(tmp_path, reference):
    store = tmp_path / "store"
    level0 = _partial(store, 9)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (level0 / name).write_bytes(os.urandom(2000))
    p = cli(*_imp(store))
    assert "resuming from the start of the stage" in p.stdout and "resumed from" not in p.stdout
    assert _same_weights(level0 / "model.pt", reference / "model.pt")


@pytest.mark.slow
def test_divergence_without_a_checkpoint_does_not_claim_one_is_kept(tmp_path):
    store = tmp_path / "store"
    p = cli(*_imp(store, "signals.labels.optim.lr=1e12", "signals.labels.optim.momentum=0.0", "run.log_every=1",
                  "run.checkpoint_steps=0"), check=False)  # checkpoints by time alone: none in a few seconds
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("sslprune: training diverged: non-finite")
    assert lines[0].endswith("no checkpoint had been saved yet, so a re-run starts this stage from its beginning")
    assert not list(_level0(store).glob("checkpoint*.pt"))


# ---------------------------------------------------------------- damaged finished outputs


SMALL = ["model.width=4", "seeds=[0]", "prune.levels=1", "signals.labels.optim.epochs=1", "signals.rotnet.optim.epochs=1",
         "retrain.optim.epochs=1", "probe.optim.epochs=1", "signals.labels.optim.milestones=[]",
         "signals.rotnet.optim.milestones=[]", "retrain.optim.milestones=[]", "probe.optim.milestones=[]",
         "retrain.schemes=[winning_ticket]", "run.quiet=true", "run.workers=1", "run.threads=1"]


def _results(store: Path) -> dict:
    return {p.parent: p.stat().st_mtime_ns for p in store.rglob("result.json")}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """The SMALL experiment run once; each test damages its own copy (`_copy_store`)."""
    store = tmp_path_factory.mktemp("small") / "store"
    cli("sslprune-run", f"store={store}", *SMALL)
    return store


def _copy_store(small_run: Path, store: Path) -> list[str]:
    """A copy of the SMALL store (stage folders are named by config alone, not by the store's path),
    and the arguments that run the experiment on it."""
    shutil.copytree(small_run, store, symlinks=True)
    return [f"store={store}", *SMALL]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated model.pt", "unparsable result.json", "a flipped byte in mask.pt"])
def test_a_damaged_finished_stage_is_reported_and_recomputed_alone(tmp_path, small_run, damage):
    import torch
    from sslprune.compute import checkpoint

    store = tmp_path / "store"
    args = _copy_store(small_run, store)
    level = sorted(store.glob("imp/*/seed_0/level_1"))[0]
    original = checkpoint.load(level / "model.pt")
    mask = checkpoint.load(level / "mask.pt")
    before = _results(store)
    if damage.startswith("truncated"):
        data = (level / "model.pt").read_bytes()
        (level / "model.pt").write_bytes(data[:-100])
    elif damage.startswith("unparsable"):
        (level / "result.json").write_text('{"accuracy": 0.9, ')
    else:
        data = bytearray((level / "mask.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (level / "mask.pt").write_bytes(bytes(data))
    status = json.loads(cli("sslprune-status", *args, "--json").stdout)
    if damage.startswith("a flipped"):
        assert status["complete"]  # same size: only the sha256 tells, and sslprune-run checks it
    else:
        assert status["kinds"]["imp"]["corrupt"] == 1 and not status["complete"]
        (problem,) = [p for p in status["problems"] if p["state"] == "corrupt"]
        assert problem["dir"] == str(level)
        assert "corrupt" in cli("sslprune-status", *args).stdout
    p = cli("sslprune-run", *args)
    assert "1 corrupt: recomputed" in p.stdout and f"{damage.split()[-1]}" in p.stdout, p.stdout[-2000:]
    after = _results(store)
    changed = {d for d in after if after[d] != before.get(d)}
    assert changed == {level}  # that stage alone; its re-training and probe, done from intact files, stay
    again = checkpoint.load(level / "model.pt")
    assert all(torch.equal(original[k], again[k]) for k in original)
    assert all(torch.equal(mask[k], checkpoint.load(level / "mask.pt")[k]) for k in mask)
    assert list(level.glob("result.json.corrupt-*"))  # what was found is kept for inspection
    assert json.loads(cli("sslprune-status", *args, "--json").stdout)["complete"]


@pytest.mark.slow
def test_stale_temporary_files_are_removed_on_start(tmp_path, small_run):
    store = tmp_path / "store"
    args = _copy_store(small_run, store)
    level0 = next(store.glob("imp/*/seed_0/level_0"))
    stale = [level0 / ".model.pt.k3j4.tmp", level0 / "retrain_x" / ".checkpoint.pt.a1.tmp"]
    (level0 / "retrain_x").mkdir()
    for f in stale:
        f.write_bytes(b"half a write")
        old = time.time() - 3600
        os.utime(f, (old, old))
    fresh = level0 / ".progress.json.zz.tmp"
    fresh.write_text("{}")  # a writer that may still be running: left alone
    cli("sslprune-run", *args)
    assert not stale[0].exists() and fresh.exists()


# ---------------------------------------------------------------- concurrent runs


@pytest.mark.slow
def test_two_runs_on_one_store_never_train_a_stage_twice(tmp_path):
    store = tmp_path / "store"
    args = [f"store={store}", *[a for a in SMALL if not a.startswith("run.quiet")], "run.quiet=false",
            "retrain.schemes=[winning_ticket,random]", "run.progress_seconds=0"]  # a line at every stage start
    runs = [subprocess.Popen(["sslprune-run", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outs = [r.communicate(timeout=900)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    # The stages each run trained: those it showed starting (a run that finds a stage done after
    # waiting for its lock never starts it).
    trained = [{line.split("]   ")[1].split(": starting")[0] for line in out.splitlines()
                if line.startswith("[sslprune]   ") and line.endswith(": starting")} for out in outs]
    stages = len(list(store.rglob("result.json")))
    # 2 signals x 2 levels x (IMP + 2 starts), less 1 (level 0's random start is one dense stage for
    # both signals) and 1 (level 1's random start is one stage for both), + the RotNet probes + the
    # probe of its initial weights
    assert stages == 2 * 2 * 3 - 1 - 1 + 2 + 1
    assert not trained[0] & trained[1], sorted(trained[0] & trained[1])  # no stage trained by both
    assert len(trained[0] | trained[1]) == stages
    assert all("report written" in out for out in outs)


# ---------------------------------------------------------------- disk full


def _mount(folder: Path, size: int) -> None:
    folder.mkdir(exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {p.stderr.strip()}")


@pytest.mark.slow
def test_a_full_disk_is_one_line_nothing_corrupt_and_the_rerun_resumes(tmp_path):
    from sslprune.compute import checkpoint

    args = ["model.width=16", "signals.labels.optim.epochs=2", "signals.labels.optim.milestones=[]"]
    ref = tmp_path / "ref"
    cli(*_imp(ref, *args))
    model = (_level0(ref) / "model.pt").stat().st_size
    mask = (_level0(ref) / "mask.pt").stat().st_size
    # Room for the mask, the rewind point and one checkpoint (weights + momentum), not for two: the
    # disk fills while a later checkpoint is written, with a good one on disk.
    disk = tmp_path / "disk"
    _mount(disk, mask + model + 3 * model + 64 * 1024)
    try:
        store = disk / "store"
        p = cli(*_imp(store, *args), check=False)
        assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-3000:]
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "no space left" in lines[0] and str(store) in lines[0] and "MiB free" in lines[0], \
            lines
        level0 = _level0(store)
        assert not (level0 / "result.json").exists()
        state = checkpoint.resume_state(level0 / "checkpoint.pt", print)
        assert state is not None and state["step"] > 0  # the last good checkpoint is whole
        assert not list(level0.glob(".*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = cli(*_imp(store, *args))
        assert "resumed from" in again.stdout
        assert _same_weights(level0 / "model.pt", _level0(ref) / "model.pt")
    finally:
        subprocess.run(["umount", "-l", str(disk)])


# ---------------------------------------------------------------- hostile store contents


def _cfg(store: Path):
    from hydra import compose, initialize_config_dir

    from sslprune.launch.compose import CONF_DIR, typed

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return typed(compose("config", overrides=[f"store={store}", *TINY, "run.quiet=true"]), announce=False)


def _copy(reference: Path, store: Path) -> Path:
    """A copy of the reference store (the chain's name does not depend on where the store is)."""
    shutil.copytree(reference.parents[3], store, symlinks=True)
    return _level0(store)


NOT_RESULTS = {
    "empty": {},
    "accuracy a string": {"accuracy": "oops"},
    "no outputs": {"outputs": None},
    "remaining a list": {"remaining": [1.0]},
    "steps a string": {"steps": "11"},
    "another kind": {"kind": "probe"},
    # A file beside the store (tmp_path/x) that its manifest entry matches: sizes agree, so only the
    # name tells that it is not the stage's own.
    "an output outside": {"outputs": {"../../../../../x": {"bytes": 1, "sha256": "0" * 64}}},
}


@pytest.mark.parametrize("damage", NOT_RESULTS)
def test_a_result_json_that_is_not_a_result_is_corrupt(tmp_path, reference, damage):
    from sslprune.core.stage import ImpLevel

    store = tmp_path / "store"
    level0 = _copy(reference, store)
    result = json.loads((level0 / "result.json").read_text())
    bad = {} if damage == "empty" else {**result, **NOT_RESULTS[damage]}
    if damage == "no outputs":
        del bad["outputs"]
    (tmp_path / "x").write_bytes(b"x")
    (level0 / "result.json").write_text(json.dumps(bad))
    stage = ImpLevel(_cfg(store), "labels", 0, 0)
    assert stage.state() == "corrupt" and not stage.done()
    with pytest.raises(errors.Corrupt, match="is not a result"):
        files.read_result(level0, "imp")


@pytest.mark.slow
def test_a_result_json_that_is_not_a_result_is_set_aside_and_recomputed(tmp_path, reference):
    store = tmp_path / "store"
    level0 = _copy(reference, store)
    (level0 / "result.json").write_text('{"accuracy": "oops"}')
    status = json.loads(cli("sslprune-status", f"store={store}", *TINY, "--json").stdout)
    assert status["kinds"]["imp"]["corrupt"] == 1 and not status["complete"]
    p = cli(*_imp(store))
    assert "accuracy is 'oops', not a number" in p.stdout and "recomputing this stage" in p.stdout, p.stdout[-2000:]
    (aside,) = level0.glob("result.json.corrupt-*[0-9]")  # beside its .why
    assert json.loads(aside.read_text()) == {"accuracy": "oops"}
    assert files.read_result(level0, "imp")["accuracy"] == files.read_result(reference, "imp")["accuracy"]
    assert _same_weights(level0 / "model.pt", reference / "model.pt")
    report = cli("sslprune-report", f"store={store}", *TINY)
    assert "Traceback" not in report.stderr


def test_a_symlinked_lock_does_not_truncate_its_target(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    folder = tmp_path / "store" / "stage"
    folder.mkdir(parents=True)
    (folder / ".lock").symlink_to(precious)
    with pytest.raises(errors.StoreError, match="symbolic link") as e:
        with files.lock(folder):
            pass
    assert str(folder / ".lock") in str(e.value.strerror)
    assert precious.read_text() == "keep me\n"
    (folder / ".lock").unlink()
    os.mkfifo(folder / ".lock")
    with pytest.raises(errors.StoreError, match="a FIFO, not a lock file"):
        with files.lock(folder):
            pass
    (folder / ".lock").unlink()
    (folder / ".lock").mkdir()
    with pytest.raises(errors.StoreError, match="is a folder, not a lock file"):
        with files.lock(folder):
            pass


@pytest.mark.slow
@pytest.mark.parametrize("where", ["level", "chain"])
def test_a_symlinked_stage_folder_is_refused_and_nothing_outside_changes(tmp_path, reference, where):
    store = tmp_path / "store"
    level0 = _copy(reference, store)
    (level0 / "result.json").unlink()  # a stage to compute: the run would write through the link
    linked = level0 if where == "level" else level0.parents[1]
    outside = tmp_path / "outside"
    shutil.move(linked, outside)
    linked.symlink_to(outside)
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    for app in (_imp(store), ["sslprune-status", f"store={store}", *TINY]):
        p = cli(*app, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stdout[-2000:] + p.stderr[-2000:]
        assert lines[0] == (f"sslprune: error: {linked} is a symbolic link (to {outside}) inside the store {store}; "
                            "the store never follows one: remove it and re-run")
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before


def test_a_symlinked_output_is_corrupt_and_set_aside_removes_only_the_link(tmp_path, reference):
    from sslprune.core.stage import ImpLevel

    store = tmp_path / "store"
    level0 = _copy(reference, store)
    elsewhere = tmp_path / "model.pt"
    shutil.copy(level0 / "model.pt", elsewhere)  # the same bytes: only lstat tells
    (level0 / "model.pt").unlink()
    (level0 / "model.pt").symlink_to(elsewhere)
    stage = ImpLevel(_cfg(store), "labels", 0, 0)
    assert stage.state() == "corrupt"
    assert "model.pt is a symbolic link" in stage.set_aside()
    assert not (level0 / "model.pt").is_symlink() and elsewhere.read_bytes() == (reference / "model.pt").read_bytes()


def test_a_fifo_as_result_json_does_not_hang_status_or_report(tmp_path, reference):
    store = tmp_path / "store"
    level0 = _copy(reference, store)
    (level0 / "result.json").unlink()
    os.mkfifo(level0 / "result.json")
    status = json.loads(cli("sslprune-status", f"store={store}", *TINY, "--json", timeout=60).stdout)
    assert status["kinds"]["imp"]["corrupt"] == 1
    p = cli("sslprune-report", f"store={store}", *TINY, timeout=60)
    assert "Traceback" not in p.stderr
    with pytest.raises(errors.Corrupt, match=f"{level0 / 'result.json'} is a FIFO, not a regular file"):
        files.read_result(level0)


# ---------------------------------------------------------------- code snapshots


def test_a_code_snapshot_is_verified_before_it_is_reused(tmp_path):
    from sslprune.control import snapshot

    store = tmp_path / "store"
    code = snapshot.take(store)
    assert snapshot.digest(code) == code.name and snapshot.take(store) == code  # intact: reused
    cache = code / "sslprune" / "control" / "__pycache__"
    cache.mkdir()
    (cache / "job.cpython-312.pyc").write_bytes(b"planted")  # would run in place of job.py
    assert snapshot.take(store) == code and not cache.exists()
    for planted in ("sslprune/control/job.py", "sslprune/evil.py"):
        target = code / planted
        original = target.read_bytes() if target.exists() else None
        target.write_bytes((original or b"") + b"\nimport os; os.system('touch PWNED')\n")
        with pytest.raises(errors.Mismatch) as e:
            snapshot.take(store)
        assert e.value.strerror == (f"code snapshot {code} does not match its name (its content hashes to "
                                    f"{snapshot.digest(code)}): code was added or changed in the store; refusing "
                                    "to run it. Remove that folder to take a fresh snapshot")
        target.write_bytes(original) if original is not None else target.unlink()
    snapshot.take(store)


# slurm: submitit.SlurmExecutor, which this builds, refuses to exist without `srun` on PATH; in the
# default tier it failed the README's test command on a machine with no SLURM installed.
@pytest.mark.slurm
def test_a_job_checks_its_snapshot_after_the_site_setup_and_without_the_checkout(tmp_path):
    """A job runs launcher.setup and $SSLPRUNE_JOB_ENV first (on many sites Python works only after
    `module load`), then the snapshot's check, which names no checkout and imports nothing of
    sslprune: a switched commit, a half-finished edit or a deleted checkout cannot stop queued jobs."""
    import shlex
    import sys

    from conftest import tiny_config
    from sslprune.control import snapshot, submission

    store = tmp_path / "store"
    cfg = tiny_config(store)
    cfg.launcher.setup = ["module load python/3.11"]
    code = snapshot.take(store)
    check = snapshot.job_setup(code)
    ex = submission._executor(cfg, tmp_path / "slurm", code, "name", None)
    assert ex.parameters["setup"] == [*submission.JOB_ENV, "module load python/3.11", submission.SITE_ENV, check,
                                      "export PYTHONDONTWRITEBYTECODE=1",
                                      f"export PYTHONPATH={code}${{PYTHONPATH:+:$PYTHONPATH}}"]
    assert str(ROOT) not in check
    exe, isolated, c, program, folder, *rest = shlex.split(check)
    assert (exe, isolated, c, folder, rest) == (sys.executable, "-I", "-c", str(code), ["||", "exit", "1"])
    # The check's program imports only the standard library (-X importtime lists every import).
    p = subprocess.run([sys.executable, "-I", "-X", "importtime", "-c", program, str(code)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    imported = [line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")]
    assert p.returncode == 0 and "hashlib" in imported, p.stderr  # the list is real
    assert [m for m in imported if m.split(".")[0] == "sslprune"] == []
    # The very line the job runs: silent for the intact snapshot, one line and exit 1 for a planted one.
    ok = subprocess.run(["bash", "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    with open(code / "sslprune" / "control" / "job.py", "a") as f:
        f.write("\nimport os; os.system('touch PWNED')\n")
    bad = subprocess.run(["bash", "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr.splitlines() == [
        f"sslprune: error: code snapshot {code} does not match its name (its content hashes to "
        f"{snapshot.digest(code)}): code was added or changed in the store; refusing to run it. Remove that "
        "folder to take a fresh snapshot"]


def test_a_full_disk_while_the_report_draws_is_one_line(tmp_path, reference):
    disk = tmp_path / "disk"
    _mount(disk, 2 * 2**20)
    try:
        store = disk / "store"
        shutil.copytree(reference.parents[3], store)
        # Room for the tables (a page each on tmpfs) and two pages more; the first figure takes about seven.
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 7 * 4096))
        p = cli("sslprune-report", f"store={store}", *TINY, check=False)
        out = store / "reports" / "demo"
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1, p.stderr[-3000:]
        figure = out / "accuracy_vs_remaining_pretext.png"
        assert lines[0].startswith(f"sslprune: error: no space left writing {figure} (")
        assert "MiB free); nothing was corrupted" in lines[0]
        assert (out / "results.csv").exists() and not list(out.glob("*.png")) and not list(out.glob(".*.tmp"))
        (disk / "filler").unlink()
        cli("sslprune-report", f"store={store}", *TINY)
        assert (out / "accuracy_vs_remaining_pretext.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_linked_jobs_reports_and_chain_folders_are_refused(tmp_path, reference):
    from sslprune.control import index, submission

    store, outside = tmp_path / "store", tmp_path / "outside"
    level0 = _copy(reference, store)
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("keep me\n")
    # jobs/.lock was opened with "w": a link truncated its target
    (store / "jobs").mkdir()
    (store / "jobs" / ".lock").symlink_to(precious)
    with pytest.raises(errors.StoreError, match="symbolic link"):
        with submission._lock(store):
            pass
    (store / "jobs" / ".lock").unlink()
    (store / "jobs").rmdir()
    (store / "jobs").symlink_to(outside)
    with pytest.raises(errors.StoreError, match=f"{store / 'jobs'} is a symbolic link"):
        with submission._lock(store):
            pass
    chain = level0.parents[1]
    shutil.move(chain, outside / "chain")
    chain.symlink_to(outside / "chain")
    cfg = _cfg(store)
    cfg.experiment = "another"  # its chain.json would gain a `used_by` entry
    with pytest.raises(errors.StoreError, match=f"{chain} is a symbolic link"):
        index.write_chains(cfg)
    chain.unlink()
    shutil.move(outside / "chain", chain)
    (store / "reports").mkdir(exist_ok=True)
    shutil.rmtree(store / "reports" / "demo", ignore_errors=True)
    (store / "reports" / "demo").symlink_to(outside)
    p = cli("sslprune-report", f"store={store}", *TINY, check=False)
    assert p.returncode == 2 and p.stderr.splitlines() == [
        f"sslprune: error: {store / 'reports' / 'demo'} is a symbolic link (to {outside}) inside the store {store}; "
        "the store never follows one: remove it and re-run"], p.stderr
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"] and precious.read_text() == "keep me\n"


def test_a_linked_report_file_is_replaced_and_its_target_left_alone(tmp_path, reference):
    from sslprune.control import report

    store, outside = tmp_path / "store", tmp_path / "outside"
    _copy(reference, store)
    outside.mkdir()
    out = store / "reports" / "demo"
    out.mkdir(parents=True)
    # One file of each writer: report's tables and markdown, index, naturals, findings.
    names = ["results.csv", "summary.md", "stages.csv", "natural_sparsity.csv", "findings.md"]
    for name in names:
        (outside / name).write_text(f"precious {name}\n")
        (out / name).symlink_to(outside / name)
    report.write(_cfg(store), plots=False)
    assert {n: (outside / n).read_text() for n in names} == {n: f"precious {n}\n" for n in names}
    assert not any((out / n).is_symlink() for n in names)
    assert (out / "results.csv").read_text().splitlines()[0] == ",".join(report.COLUMNS)
    assert (out / "findings.md").read_text().startswith("# ")


def test_a_linked_exports_folder_is_refused_and_nothing_is_written_outside(tmp_path, reference):
    store, outside = tmp_path / "store", tmp_path / "outside"
    _copy(reference, store)
    outside.mkdir()
    (store / "exports").symlink_to(outside)
    p = cli("sslprune-export", f"store={store}", *TINY, "signal=labels", "level=0", check=False)
    assert p.returncode == 2 and p.stderr.splitlines() == [
        f"sslprune: error: {store / 'exports'} is a symbolic link (to {outside}) inside the store {store}; "
        "the store never follows one: remove it and re-run"], p.stderr
    assert list(outside.iterdir()) == []


# Bytes the unpickler fails on in ways other than UnpicklingError: a memo read of an index never
# stored (KeyError; what os.urandom over both checkpoints once produced, crashing the stage), a
# protocol-2 stream that ends after its header (EOFError). Each is a damaged file, not a crash.
@pytest.mark.parametrize("data, why", [(b"\x80\x02h\xd5.", "KeyError: 213"), (b"\x80\x02", "EOFError")],
                         ids=["memo-read", "header-only"])
def test_damaged_bytes_that_break_the_unpickler_are_damaged_and_skipped(tmp_path, data, why):
    from sslprune.compute import checkpoint

    latest = tmp_path / "checkpoint.pt"
    latest.write_bytes(data)
    with pytest.raises(errors.Damaged, match=r"checkpoint\.pt cannot be read"):
        checkpoint.load(latest, verify=False)
    notes = []
    assert checkpoint.resume_state(latest, notes.append) is None
    assert len(notes) == 1 and notes[0].startswith(f"warning: {latest} cannot be read (") and why in notes[0]
    assert notes[0].endswith("; resuming from the start of the stage instead")
