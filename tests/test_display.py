"""sslprune-run's progress: one live display on a terminal (stages done / total, the time left from
measured stage times, one line per running worker), plain lines at a fixed cadence elsewhere, and
Ctrl-C that stops the same way in both."""
from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sslprune.control.display import Display

from conftest import ROOT

# The default tier's longest tests here (seconds on its 2 cores, idle): handed out first (conftest).
LONGEST = {"test_a_log_gets_plain_lines_at_a_fixed_cadence": 12}

HEADLINE = re.compile(r"\[sslprune\] demo: (\d+)/(\d+) stages done, elapsed \d\d:\d\d, "
                      r"(about \d\d:\d\d left|time left: after the first stage)")
ARGS = ["model.width=4", "seeds=[0]", "prune.levels=1", "retrain.schemes=[winning_ticket]", "probe.signals=[]",
        "signals.labels.optim.epochs=3", "signals.rotnet.optim.epochs=3", "retrain.optim.epochs=2",
        "signals.labels.optim.milestones=[]", "signals.rotnet.optim.milestones=[]", "retrain.optim.milestones=[]",
        "run.log_every=5", "run.quiet=false"]


def test_time_left_is_measured_per_kind_of_stage_and_shared_by_the_workers():
    d = Display("demo", total=10, done=0, remaining_kinds={"imp": 4, "probe": 6}, workers=2, live=False,
                stream=io.StringIO(), every=3600)
    assert d.eta() is None  # nothing measured yet: no number is better than a made-up one
    d.event("start", "w1", "imp a", "imp")
    d.running["w1"]["since"] -= 100.0  # an IMP level that took 100 s
    d.event("finish", "w1")
    d.event("start", "w1", "probe a", "probe")
    d.running["w1"]["since"] -= 4.0
    d.event("finish", "w1")
    assert d.done == 2 and d.left == {"imp": 3, "probe": 5}
    assert d.eta() == pytest.approx((3 * 100 + 5 * 4) / 2, rel=1e-3)  # kinds weighted by their own times
    d.event("start", "w2", "imp b", "imp")
    d.running["w2"]["since"] -= 30.0  # running for 30 s of its expected 100
    assert d.eta() == pytest.approx((3 * 100 + 5 * 4 - 30) / 2, rel=1e-3)
    d.event("stopped", "w2")  # interrupted: neither done nor measured
    assert d.done == 2 and "w2" not in d.running and d.left == {"imp": 3, "probe": 5}
    assert d.seconds["imp"] == [pytest.approx(100.0, abs=0.5)]


def test_a_log_gets_plain_lines_at_a_fixed_cadence(tmp_path):
    # One epoch per stage and a status line every half second: the same 8 stages and as many
    # lines as at 3 epochs and 2 s, in a third of the time (the cadence does not depend on either).
    args = [a for a in ARGS if ".optim.epochs=" not in a] + [
        "signals.labels.optim.epochs=1", "signals.rotnet.optim.epochs=1", "retrain.optim.epochs=1"]
    p = subprocess.run(["sslprune-run", f"store={tmp_path / 's'}", *args, "run.progress_seconds=0.5"], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    heads = [HEADLINE.match(line) for line in p.stdout.splitlines()]
    heads = [h for h in heads if h]
    assert len(heads) >= 3 and heads[-1].group(1) == heads[-1].group(2) == "8"
    assert any(h.group(3).startswith("about") for h in heads)  # once a stage ended, a measured estimate
    assert "\x1b[" not in p.stdout  # no terminal control codes in a log
    assert not re.search(r"\] epoch [\d.]+ step", p.stdout)  # no per-step lines of each stage
    running = [line for line in p.stdout.splitlines() if re.match(r"\[sslprune\]   (imp|retrain) \w+ .*: (starting|step)", line)]
    assert running  # the running stages, under their status line


def _pty_run(args: list[str], stop_when=None) -> tuple[int, str]:
    """Run a command on a pseudo-terminal, as in a user's terminal; type Ctrl-C once stop_when() holds."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdout is the terminal
        os.chdir(ROOT)
        os.environ["OMP_NUM_THREADS"] = "1"
        os.execvp(args[0], args)
    out, t0, sent = b"", time.monotonic(), False
    while True:
        if stop_when is not None and not sent and stop_when():
            os.write(fd, b"\x03")  # the terminal turns it into SIGINT for the foreground process group
            sent = True
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            try:
                while True:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    out += chunk
            except OSError:
                pass
            return os.waitstatus_to_exitcode(status), out.decode(errors="replace")
        assert time.monotonic() - t0 < 900, "the run did not end"
    _, status = os.waitpid(pid, 0)  # the terminal closed (EIO): the command has ended
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.mark.slow
def test_a_terminal_gets_one_live_display_and_ctrl_c_stops_it_checkpointed(tmp_path):
    store = tmp_path / "store"
    code, out = _pty_run(["sslprune-run", f"store={store}", *ARGS])
    assert code == 0, out[-3000:]
    assert "\x1b[" in out  # redrawn in place
    assert re.search(r"worker 1 +imp \w+ seed=0 level=0: (starting|step \d+/\d+)", out)
    assert re.search(r"\[sslprune\] demo: 8/8 stages done", out)
    assert "report written" in out
    # Ctrl-C typed at the terminal: the same stop as without a terminal.
    other = tmp_path / "other"
    code, out = _pty_run(["sslprune-run", f"store={other}", *ARGS, "signals.labels.optim.epochs=20",
                          "signals.rotnet.optim.epochs=20", "run.checkpoint_steps=10"],
                         stop_when=lambda: any(other.glob("imp/*/seed_0/level_0/checkpoint.pt")))
    assert code == 128 + signal.SIGINT, out[-3000:]
    assert "stopped by SIGINT" in out and "re-run the same command to resume" in out
    assert any(Path(other).rglob("checkpoint.pt"))
