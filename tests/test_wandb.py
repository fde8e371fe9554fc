"""W&B mirroring, read back from wandb's own offline files (no server is reachable here, no mocks).

Runs are read with `wandb leet inspect --json` (wandb's reader of its `.wandb` transaction log)
and tables from the run's `files/media/table/*.table.json`. Every command runs with HOME and the
WANDB_* variables isolated, so the developer's own credentials never matter.
"""
from __future__ import annotations

import csv
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sslprune.core import store as files
from sslprune.control import dashboard, report, upload, wandb_mode

from sslprune.core.schema import WandbConfig

from conftest import ROOT

# The default tier's longest tests here (seconds on its 2 cores, idle): handed out first (conftest).
LONGEST = {"test_wandb_state_line_is_printed_once_per_command_before_work_starts": 14}

WANDB = str(Path(sys.executable).with_name("wandb"))
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters: well-formed, accepted by no server

# A tiny experiment: digits, width-4 ResNet, 1 epoch per stage, IMP levels 0-1 of both signals,
# one re-training start and the probe for RotNet (8 stages).
SMALL = ["prune.levels=1", "prune.rewind=3it", "seeds=[0]", "model.width=4", "run.threads=1", "run.log_every=4", "run.quiet=true",
         "retrain.signals=[rotnet]", "retrain.schemes=[winning_ticket]", "wandb.system_metrics=false",
         *[f"{k}.optim.{o}" for k in ("signals.labels", "signals.rotnet", "retrain", "probe")
           for o in ("epochs=1", "milestones=[]")]]


def env_for(home: Path, **extra: str) -> dict:
    """This process's environment without any W&B setting, with a fresh HOME."""
    home.mkdir(parents=True, exist_ok=True)
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("WANDB_") and k not in ("NETRC", "SLURM_ARRAY_TASK_ID", wandb_mode.AUTO_ENV)}
    e.update(HOME=str(home), OMP_NUM_THREADS="1", WANDB_CONFIG_DIR=str(home / ".config" / "wandb"))
    e.update(extra)
    return e


def run(*args: str, env: dict, cwd: Path, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p


def records(run_dir: Path, env: dict) -> list[dict]:
    """Every record of an offline run, through wandb's own reader."""
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         env=env, timeout=60, check=True, cwd=env["HOME"]).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def summary(run_dir: Path, env: dict) -> dict:
    out = subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)], capture_output=True,
                         text=True, env=env, timeout=60, check=True, cwd=env["HOME"]).stdout
    return json.loads(out)


def history(recs: list[dict]) -> list[dict]:
    return [{**r["history"]["item"], "_step": int(r["history"]["step"].get("num", 0))}
            for r in recs if r["type"] == "history"]


def offline_dirs(d: Path) -> list[Path]:
    return sorted(d.glob("wandb/offline-run-*"))


def wandb_dirs(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir() and p.name == "wandb"]


def stages_of(store: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from sslprune.control.experiment import stages
    from sslprune.launch.compose import CONF_DIR, typed

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = typed(compose("config", overrides=[f"store={store}", *overrides]))
    return cfg, stages(cfg)


def tree_digest(root: Path) -> dict:
    """Every file of the offline runs (wandb's own logs of a sync attempt aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("offline-run-*/**/*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The tiny experiment run once in offline mode, then its report (shared by the tests below)."""
    base = tmp_path_factory.mktemp("wandb_demo")
    store, env = base / "store", env_for(base / "home")
    t0 = time.monotonic()
    run("sslprune-run", f"store={store}", *SMALL, "wandb=offline", env=env, cwd=base / "cwd")
    t1 = time.monotonic()
    rep = run("sslprune-report", f"store={store}", *SMALL, "wandb=offline", env=env, cwd=base / "cwd")
    print(f"\n[timing] offline demo run {t1 - t0:.1f} s, report {time.monotonic() - t1:.1f} s")
    return {"store": store, "env": env, "base": base, "report_out": rep.stdout}


def test_offline_demo_logs_one_run_per_stage(demo):
    store, env = demo["store"], demo["env"]
    cfg, stages = stages_of(store, *SMALL, "wandb=offline")
    assert len(stages) == 9  # 4 IMP levels, 2 winning tickets, 2 probes, the probe of the initial weights
    dirs = []
    for stage in stages:
        assert stage.done()
        (d,) = offline_dirs(stage.dir)  # exactly one offline run, under the stage's own directory
        dirs.append(d)
    with ThreadPoolExecutor(4) as pool:  # wandb's reader takes about a second per call
        summaries = list(pool.map(lambda d: summary(d, env), dirs))
        all_records = list(pool.map(lambda d: records(d, env), dirs))
    for stage, d, s, recs in zip(stages, dirs, summaries, all_records):
        rid = dashboard.run_id(store, dashboard.stage_path(stage), stage.kind)
        assert d.name.endswith(f"-{rid}") and (d / f"run-{rid}.wandb").exists()
        result = stage.result()
        assert s["state"] == "finished" and s["run_id"] == rid and s["project"] == "sslprune"
        assert s["name"] == dashboard.run_name(stage)
        c = s["config"]
        for k in ("data", "model", "prune", "signals", "retrain", "probe", "run", "seeds"):
            assert k in c, k  # the experiment's resolved settings ...
        assert "launcher" not in c and "wandb" not in c  # ... not the launcher's or W&B's own
        assert c["signals"]["rotnet"]["task"]["name"] == "rotnet" and c["prune"]["levels"] == 1
        want = {"experiment": "demo", "kind": stage.kind, "signal": stage.signal, "seed": 0, "level": stage.level,
                "evaluation": result["evaluation"], "scheme": getattr(stage, "scheme", None),
                "probe_dataset": "digits" if stage.kind == "probe" else None}
        assert {k: c[k] for k in want} == want  # ... and what identifies the stage
        assert c["remaining"] == pytest.approx(result["remaining"])
        # the network's cost, known when the stage ends, joins the config and the summary (issue 25)
        cost = {k: result[k] for k in (*report.COST, "input_size")}
        assert {k: c[k] for k in cost} == cost == {k: s["summary"][k] for k in cost}
        assert c["macs_dense"] == (49568 if stage.signal == "labels" or stage.kind != "imp" else 49472)
        assert c["model"]["width"] == 4
        assert s["summary"]["accuracy"] == result["accuracy"] and s["summary"]["status"] == "done"
        run_rec = next(r["run"] for r in recs if r["type"] == "run")
        assert run_rec["job_type"] == stage.kind and run_rec["run_group"] == "demo"
        rows = history(recs)
        train = [r for r in rows if "train/loss" in r]
        assert train and all(k in train[-1] for k in ("train/acc", "train/lr", "train/throughput", "trainer/step"))
        steps = [r["_step"] for r in rows]
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
        assert [r["trainer/step"] for r in train] == [r["_step"] for r in train]  # the training step
        final = [r for r in rows if "eval/accuracy" in r]
        assert len(final) == 1 and final[0]["eval/accuracy"] == result["accuracy"]
        metrics = {r["metric"].get("glob_name") or r["metric"].get("name"): r["metric"]
                   for r in recs if r["type"] == "metric"}
        assert metrics["eval/*"]["step_metric"] == "remaining"
        assert metrics["train/*"]["step_metric"] == "trainer/step"
    assert not wandb_dirs(demo["base"] / "cwd") and not (ROOT / "wandb").exists()


def test_report_logs_a_summary_run_with_the_results_table(demo):
    store, env = demo["store"], demo["env"]
    out = store / "reports" / "demo"
    dirs = offline_dirs(out)
    assert len(dirs) == 2  # sslprune-run's report, then sslprune-report's: the same run, resumed
    rid = dashboard.run_id(store, "reports/demo", "report")
    assert all(d.name.endswith(f"-{rid}") for d in dirs)
    assert f"W&B summary run sslprune/{rid} updated" in demo["report_out"]
    s = summary(dirs[-1], env)
    assert s["state"] == "finished" and s["config"]["kind"] == "report"
    assert "launcher" not in s["config"] and "wandb" not in s["config"] and "signals" in s["config"]
    recs = records(dirs[-1], env)
    run_rec = next(r["run"] for r in recs if r["type"] == "run")
    assert run_rec["job_type"] == "report" and run_rec["run_group"] == "demo"
    (row,) = history(recs)

    def media(key: str) -> dict:  # leet flattens a logged object's fields as "<key>.<field>"
        return {k[len(key) + 1:]: v for k, v in row.items() if k.startswith(key + ".")}

    for key in ("results", "summary", "charts/accuracy_vs_remaining_table", "charts/winning_ticket_table",
                "charts/pretext_table", "charts/probe_digits_table", "charts/accuracy_vs_macs_table"):
        assert media(key)["_type"] == "table-file", key
    table = json.loads((dirs[-1] / "files" / media("results")["path"]).read_text())
    with open(out / "results.csv") as f:
        expected = list(csv.DictReader(f))
    assert table["columns"] == list(expected[0].keys())
    assert len(table["data"]) == len(expected) == 9
    col = {c: i for i, c in enumerate(table["columns"])}
    got = {(r[col["signal"]], r[col["evaluation"]], r[col["level"]]): r[col["accuracy"]] for r in table["data"]}
    assert got == {(e["signal"], e["evaluation"], int(e["level"])): float(e["accuracy"]) for e in expected}
    assert table["columns"][-6:] == report.COST  # the cost columns, as in results.csv
    macs = {(r[col["signal"]], r[col["evaluation"]], r[col["level"]]): r[col["macs"]] for r in table["data"]}
    assert macs == {(e["signal"], e["evaluation"], int(e["level"])): int(e["macs"]) for e in expected}
    curve = json.loads((dirs[-1] / "files" / media("charts/accuracy_vs_macs_table")["path"]).read_text())
    step = curve["columns"].index("step")  # wandb's name for x
    assert sorted(r[step] for r in curve["data"]) == sorted(int(e["macs"]) / 1e6 for e in expected)
    curve = json.loads((dirs[-1] / "files" / media("charts/accuracy_vs_remaining_table")["path"]).read_text())
    assert len(curve["data"]) == 9  # (signal, evaluation) lines x 2 levels, + the reference at level 0


@pytest.mark.slow
def test_killed_stage_resumes_the_same_wandb_run(tmp_path):
    env = env_for(tmp_path / "home")
    store = tmp_path / "store"
    # 144 steps; checkpoints every 10 steps but a row every step: a kill leaves logged rows past the checkpoint.
    args = ["sslprune-imp", f"store={store}", "signal=labels", "level=0", "model.width=4", "run.threads=1",
            "run.log_every=1", "run.checkpoint_steps=10", "signals.labels.optim.epochs=12",
            "signals.labels.optim.milestones=[8]", "wandb=offline", "wandb.system_metrics=false",
            "wandb.flush_seconds=0.05"]
    cfg, _ = stages_of(store, *args[2:])
    from sslprune.core.stage import ImpLevel

    stage = ImpLevel(cfg, "labels", 0, 0)
    p = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while True:
        try:
            step = files.read_json(stage.dir / "progress.json")["step"]
        except (OSError, ValueError, KeyError):
            step = 0
        if step >= 25 and (stage.dir / "checkpoint.pt").exists() and step % 10 >= 6:
            break
        assert p.poll() is None, "finished before it could be killed"
        assert time.monotonic() - t0 < 120, "never got going"
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not stage.done()
    logged = files.read_json(stage.dir / "progress.json")["step"]  # the last step the killed attempt logged
    (first,) = offline_dirs(stage.dir)
    out = run(*args, env=env, cwd=tmp_path).stdout
    assert stage.done()
    dirs = offline_dirs(stage.dir)
    assert len(dirs) == 2 and dirs[0] == first
    rid = dashboard.run_id(store, dashboard.stage_path(stage), "imp")
    assert all(d.name.endswith(f"-{rid}") for d in dirs)  # the same W&B run, a second attempt
    before, after = history(records(dirs[0], env)), history(records(dirs[1], env))
    assert before and after
    resumed_at = int(out.split("resumed from")[1].split("at step")[1].split("/")[0])
    held = max(r["_step"] for r in before)  # what the killed attempt's file holds (flushed before the kill)
    assert held <= logged and resumed_at < logged
    # History appends: the resumed attempt re-trains from its checkpoint, logs nothing at or below what
    # the run already holds, and leaves no gap it could fill.
    assert min(r["_step"] for r in after) == max(held, resumed_at) + 1
    assert max(r["_step"] for r in after) == stage.result()["steps"] + 1  # the final metrics row
    print(f"\n[kill test] checkpoint at {resumed_at}, logged {logged}, file held {held}")
    assert summary(dirs[1], env)["state"] == "finished"
    assert summary(dirs[0], env)["state"] != "finished"


def test_no_credentials_means_no_wandb_and_training_completes(tmp_path):
    env = env_for(tmp_path / "home")
    store, cwd = tmp_path / "store", tmp_path / "cwd"
    p = run("sslprune-imp", f"store={store}", "signal=labels", "prune.levels=1", "model.width=4", "run.threads=1",
            "run.quiet=true", "signals.labels.optim.epochs=1", "signals.labels.optim.milestones=[]",
            "prune.rewind=3it", env=env, cwd=cwd)
    assert len(list(store.glob("imp/*/seed_0/level_1/result.json"))) == 1  # both levels trained
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if "W&B disabled" in ln]
    assert len(lines) == 1, p.stdout + p.stderr  # one line per process, not one per stage
    assert "no W&B credentials" in lines[0]
    assert not wandb_dirs(tmp_path), wandb_dirs(tmp_path)
    assert not (store / dashboard.STORE_TOKEN).exists()
    assert not (ROOT / "wandb").exists()


def test_wandb_state_line_is_printed_once_per_command_before_work_starts(tmp_path):
    """A local run with two worker processes: one line, from the main process, before the first stage."""
    env = env_for(tmp_path / "home")
    store, cwd = tmp_path / "store", tmp_path / "cwd"
    cwd.mkdir()
    small = [a for a in SMALL if a not in ("prune.levels=1", "run.quiet=true")]  # stage lines: when work starts
    args = ["sslprune-run", f"store={store}", *small, "prune.levels=0", "run.workers=2",
            "run.progress_seconds=0"]  # the plain display's line at every stage start
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-4000:]
    lines = p.stdout.splitlines()
    noted = [i for i, ln in enumerate(lines) if "W&B disabled" in ln]
    assert len(noted) == 1, p.stdout  # not once per worker, not again after the table
    assert "no W&B credentials" in lines[noted[0]]
    started = [(i, ln.split("]   ")[1].split(": starting")[0]) for i, ln in enumerate(lines)
               if ln.startswith("[sslprune]   ") and ln.endswith(": starting")]
    # 2 IMP levels, the winning ticket, the RotNet probe and the probe of its initial weights
    header = next(i for i, ln in enumerate(lines) if ln.startswith("[sslprune] experiment demo: 5 stages"))
    assert noted[0] < header < started[0][0]
    assert {label for _, label in started if label.startswith("imp ")} == {"imp labels seed=0 level=0",
                                                                           "imp rotnet seed=0 level=0"}
    assert not wandb_dirs(tmp_path)


def test_workers_inherit_the_commands_decision(monkeypatch, capsys):
    """The auto decision is made once: a process that finds it in the environment neither checks
    credentials nor prints (a spawned worker); the one that makes it exports it."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    monkeypatch.setenv(wandb_mode.AUTO_ENV, f"disabled@{os.getppid()}")  # decided by this process's parent
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # would mean online if checked again
    assert wandb_mode.resolve(WandbConfig()) == "disabled"
    assert capsys.readouterr().err == ""
    # a decision of another command (a SLURM job inherits the submitting shell's environment) is not ours
    monkeypatch.setenv(wandb_mode.AUTO_ENV, "disabled@0")  # pid 0 is no process
    assert wandb_mode.announce(WandbConfig()) == "online"
    assert os.environ[wandb_mode.AUTO_ENV] == f"online@{os.getpid()}"
    monkeypatch.delenv("WANDB_API_KEY")
    assert wandb_mode.resolve(WandbConfig()) == "online"  # decided: the command keeps its mode


def _marked(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.name.endswith(".synced") or p.name.endswith(upload.MARKER)]


def test_sync_without_a_reachable_server_fails_clearly_loses_nothing_and_retries(demo, tmp_path):
    store = demo["store"]
    port = _free_port()
    env = env_for(tmp_path / "home", WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=f"http://127.0.0.1:{port}")
    before = tree_digest(store)
    for attempt in range(2):  # a retry meets the same state and says the same
        p = run("sslprune-sync", f"store={store}", *SMALL, "wandb=offline", env=env, cwd=tmp_path, check=False)
        assert p.returncode == 1, p.stdout + p.stderr
        assert f"the W&B server http://127.0.0.1:{port} cannot be reached" in p.stderr
        assert "10 run(s) wait" in p.stderr and "imp labels seed=0 level=0" in p.stderr
        assert "0 already synced, 10 to sync" in p.stdout
        assert tree_digest(store) == before and not _marked(store)
    # Without credentials it says so, before trying anything.
    p = run("sslprune-sync", f"store={store}", *SMALL, env=env_for(tmp_path / "home2"), cwd=tmp_path, check=False)
    assert p.returncode == 1 and "no W&B credentials" in p.stderr
    assert tree_digest(store) == before and not _marked(store)


class _Silent(http.server.BaseHTTPRequestHandler):
    """Answers the reachability check, then never answers W&B's API (a server that hangs)."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def do_POST(self):
        time.sleep(30)

    def log_message(self, *a):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_stops_a_hanging_upload_and_resyncs_only_what_changed(demo, tmp_path):
    store = demo["store"]
    cfg, _ = stages_of(store, *SMALL, "wandb=offline")
    runs = upload.find(cfg)
    assert len(runs) == 10 and sum(len(r.files) for r in runs) == 11  # the report run has two attempts
    # Pretend every run but one was uploaded earlier; the bookkeeping skips them.
    for r in runs[1:]:
        for f in r.files:
            files.write_json(upload._stat(f), upload.marker(f))
    try:
        assert [r.run_id for r in upload.find(cfg) if r.pending()] == [runs[0].run_id]
        # A file that grew since its upload (a run still in progress, or resumed) is uploaded again.
        grown = runs[1].files[0]
        os.utime(grown, ns=(grown.stat().st_atime_ns, grown.stat().st_mtime_ns + 1))
        assert {r.run_id for r in upload.find(cfg) if r.pending()} == {runs[0].run_id, runs[1].run_id}
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = env_for(tmp_path / "home", WANDB_API_KEY=FAKE_KEY,
                      WANDB_BASE_URL=f"http://127.0.0.1:{server.server_address[1]}")
        before = tree_digest(store)
        t0 = time.monotonic()
        p = run("sslprune-sync", f"store={store}", *SMALL, "wandb=offline", "wandb.sync_timeout=8",
                env=env, cwd=tmp_path, check=False)
        took = time.monotonic() - t0
        server.shutdown()
        assert p.returncode == 1, p.stdout + p.stderr
        assert "8 already synced, 2 to sync" in p.stdout
        assert "did not finish within wandb.sync_timeout=8 s" in p.stdout
        assert "2 of 2 run(s) could not be uploaded" in p.stderr and runs[0].run_id in p.stderr
        assert took < 90
        assert tree_digest(store) == before
        assert not [f for r in runs[:2] for f in r.files if upload.synced(f)]
    finally:
        for r in runs:
            for f in r.files:
                upload.marker(f).unlink(missing_ok=True)


def test_stagger_spreads_an_array_and_config_is_checked():
    from sslprune.core.errors import ConfigError
    from sslprune.core.schema import WandbConfig
    from sslprune.core.validation import validate_wandb

    w = WandbConfig(stagger=0.2, stagger_max=120)
    delays = [dashboard.stagger_delay(w, {"SLURM_ARRAY_TASK_ID": str(i)}) for i in range(500)]
    assert delays[0] == 0 and max(delays) < 120
    assert len({round(d, 6) for d in delays}) == 500  # 500 tasks, 500 different start times
    assert dashboard.stagger_delay(w, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "7"}) == 0
    assert dashboard.stagger_delay(w, {}) == 0
    assert dashboard.stagger_delay(WandbConfig(stagger=0), {"SLURM_ARRAY_TASK_ID": "9"}) == 0
    with pytest.raises(ConfigError, match="wandb.mode='on' is not one of auto, online, offline, disabled"):
        validate_wandb(WandbConfig(mode="on"))
    with pytest.raises(ConfigError, match="wandb.fallback"):
        validate_wandb(WandbConfig(fallback="online"))
    with pytest.raises(ConfigError, match="wandb.init_timeout"):
        validate_wandb(WandbConfig(init_timeout=0))


@pytest.mark.parametrize("where", ["nowhere", ".netrc", "settings"])
def test_credentials_are_found_where_wandb_looks_and_wandb_is_imported_only_if_a_file_exists(tmp_path, where):
    """Without a key in the environment and without any file wandb reads one from, the answer is
    `no credentials` without importing wandb (1.2 s of every control-plane command)."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    if where == ".netrc":
        (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
        (home / ".netrc").chmod(0o600)
    elif where == "settings":
        (home / ".config" / "wandb").mkdir(parents=True)
        (home / ".config" / "wandb" / "settings").write_text("[default]\nmode = online\n")
    code = ("import sys; from sslprune.control import wandb_mode; "
            "print(wandb_mode.has_credentials(), 'wandb' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "NETRC"))}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                       env={**env, "HOME": str(home)}, check=True)
    assert p.stdout.split() == {"nowhere": ["False", "False"], ".netrc": ["True", "True"],
                                "settings": ["False", "True"]}[where]
