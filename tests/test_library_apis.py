"""Tripwires for the library internals sslprune uses, one adapter module per library:
sslprune/control/wandb_login.py (wandb), sslprune/control/hydra_globals.py (Hydra) and
sslprune/compute/torch_internals.py (torch). Each test checks that an internal still exists and
does what the adapter relies on, and says which one moved when a library update breaks it.
submitit needs no adapter: its preemption signal is the public `JobEnvironment.USR_SIG`, and its
handler is reached through the signal itself.

Heavy libraries are imported inside the tests (collection stays fast); wandb runs in a subprocess
with a home of its own, so its process-wide settings never see the developer's credentials.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest


KEY = "a" * 40  # the shape of a W&B API key; no server is asked


def _python(code: str, home, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "NETRC", "SUBMITIT_", "SSLPRUNE_"))}
    home.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          cwd=home, env={**clean, "HOME": str(home), **env})


# ---------------------------------------------------------------- wandb


def test_wandbs_private_credential_lookup_still_does_what_wandb_login_relies_on(tmp_path):
    code = """
        import inspect, json, os
        from pathlib import Path
        from urllib.parse import urlsplit
        from wandb.errors import AuthenticationError
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth
        from sslprune.control.wandb_login import AUTHENTICATE_KEYWORDS

        out = {}
        host = wandb_setup.singleton().settings.base_url
        out["server"] = host == os.environ["WANDB_BASE_URL"]
        params = inspect.signature(wbauth.authenticate_session).parameters
        out["keywords"] = [k for k in AUTHENTICATE_KEYWORDS if k in params]

        def lookup():
            return wbauth.authenticate_session(host=host, source="tripwire", prompt=False, update_session=False)

        out["nothing configured"] = lookup()
        os.environ["WANDB_API_KEY"] = "%s"
        out["environment"] = type(lookup()).__name__
        out["session left alone"] = wbauth.session_credentials(host=host) is None
        os.environ["WANDB_API_KEY"] = "short"
        try:
            lookup()
            out["malformed key"] = "accepted"
        except AuthenticationError:
            out["malformed key"] = "AuthenticationError"
        del os.environ["WANDB_API_KEY"]
        netrc = Path.home() / ".netrc"
        netrc.write_text(f"machine {urlsplit(host).hostname}\\n  login user\\n  password %s\\n")
        netrc.chmod(0o600)
        out[".netrc"] = type(lookup()).__name__
        print(json.dumps(out))
    """ % (KEY, KEY)
    p = _python(code, tmp_path / "home", WANDB_BASE_URL="https://api.example.org")
    assert p.returncode == 0, "wandb's private API used by sslprune/control/wandb_login.py moved:\n" + p.stderr[-3000:]
    assert json.loads(p.stdout) == {
        "server": True,  # wandb_setup.singleton().settings.base_url: the server wandb would use
        "keywords": ["host", "source", "prompt", "update_session"],
        "nothing configured": None,
        "environment": "AuthApiKey",
        "session left alone": True,  # update_session=False: a check, not a login
        "malformed key": "AuthenticationError",  # wandb_login counts it as configured
        ".netrc": "AuthApiKey",
    }, "wandb's private API used by sslprune/control/wandb_login.py behaves differently now"
    assert "Loaded credentials" not in p.stderr  # a check prints nothing


@pytest.mark.parametrize("change", ["signature", "module"])
def test_a_wandb_that_moved_its_private_api_is_named_never_read_as_credentials(tmp_path, change):
    """The old check answered True ("credentials found", so wandb.mode=auto went online) when
    the call raised anything but ImportError, and fell back to reading .netrc on ImportError."""
    home = tmp_path / "home"
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".config" / "wandb" / "settings").write_text("[default]\nmode = online\n")  # no key in it
    code = """
        import sys
        if "%s" == "module":
            sys.modules["wandb.sdk.lib.wbauth"] = None  # wandb moved it: import fails
        else:
            from wandb.sdk.lib import wbauth

            def authenticate_session(*, host, source, prompt=True):  # update_session renamed away
                return None

            wbauth.authenticate_session = authenticate_session
        from sslprune.control import wandb_mode
        from sslprune.core.schema import WandbConfig

        try:
            print("answered", wandb_mode.has_credentials())
        except RuntimeError as e:
            print("refused:", e)
        print("announce", wandb_mode.announce(WandbConfig()))
    """ % change
    p = _python(code, home)
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.splitlines()
    version = importlib.metadata.version("wandb")
    assert first.startswith(f"refused: wandb {version} changed wandb.sdk.lib.wbauth.authenticate_session (")
    assert ("has no parameter update_session" if change == "signature" else "ModuleNotFoundError") in first
    assert second == "announce disabled"
    assert "W&B disabled: could not resolve wandb.mode (wandb " in p.stderr


# ---------------------------------------------------------------- Hydra


def test_hydras_global_state_is_set_aside_and_put_back_as_the_caller_had_it(tmp_path):
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from sslprune.control import hydra_globals

    for name in ("instance", "is_initialized", "clear", "initialize"):
        assert callable(getattr(GlobalHydra, name, None)), f"Hydra's GlobalHydra.{name} (hydra_globals) is gone"
    conf, ours = tmp_path / "conf", tmp_path / "ours"
    conf.mkdir(), ours.mkdir()
    (conf / "mine.yaml").write_text("answer: 42\n")
    (ours / "config.yaml").write_text("experiment: demo\n")
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        caller = GlobalHydra.instance().hydra
        assert caller is not None
        # Why set_aside exists: Hydra refuses a second initialisation.
        with pytest.raises(ValueError, match="GlobalHydra is already initialized"):
            initialize_config_module(config_module="sslprune.conf", version_base=None)
        for _ in range(2):  # composed repeatedly in one process
            with hydra_globals.set_aside():
                assert not GlobalHydra.instance().is_initialized()
                with initialize_config_dir(config_dir=str(ours), version_base=None):
                    assert compose("config", overrides=["experiment=twin"]).experiment == "twin"
            assert GlobalHydra.instance().hydra is caller
        with pytest.raises(KeyError):
            with hydra_globals.set_aside():
                raise KeyError("the block failed")
        assert GlobalHydra.instance().hydra is caller
        assert compose("mine").answer == 42  # the caller's search path is back
    assert not GlobalHydra.instance().is_initialized()
    with hydra_globals.set_aside():
        pass
    assert not GlobalHydra.instance().is_initialized()


# ---------------------------------------------------------------- submitit


def test_submitits_preemption_signal_is_its_public_usr_sig(tmp_path):
    code = """
        from sslprune.control import job
        try:
            print(job.preemption_signal().name)
        except RuntimeError as e:
            print(e)
    """
    for name, expected in [(None, "SIGUSR2"), ("USR1", "SIGUSR1"), ("NOPE", "SUBMITIT_PREEMPT_SIGNAL='NOPE' names no "
                                                                           "signal (e.g. USR2)")]:
        p = _python(code, tmp_path / "home", **({"SUBMITIT_PREEMPT_SIGNAL": name} if name else {}))
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == expected


def test_submitits_handler_runs_through_the_signal_once_the_checkpoint_is_saved(monkeypatch):
    """USR2 only sets a flag while training; after the checkpoint, the handler submitit had
    installed (checkpoint, requeue, exit) receives the signal, as it would have from SLURM."""
    from sslprune.control import job

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    got = []

    def submitit_handler(signum, frame):
        got.append(signal.Signals(signum).name)
        sys.exit(-1)

    previous = {s: signal.signal(s, submitit_handler if s == signal.SIGUSR2 else signal.getsignal(s))
                for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        sig = job.Signals().install()
        os.kill(os.getpid(), signal.SIGUSR2)  # preemption notice mid-training
        assert sig.poll() and sig.usr2 and got == []
        monkeypatch.setattr(job, "requeue_self", lambda job_id: got.append(f"scontrol requeue {job_id}"))
        stage_job = job.StageJob.__new__(job.StageJob)
        stage_job.launcher = job.LauncherConfig()
        with pytest.raises(SystemExit):
            stage_job._interrupted(SimpleNamespace(global_rank=0, job_id="7"), sig, job.Interrupted(5))
        assert got == ["SIGUSR2"]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- torch


def test_torch_internals_do_what_sslprune_relies_on():
    import torch
    from torch import nn
    from torch.nn import functional as F

    from sslprune.compute import torch_internals
    from sslprune.compute.runtime import GlobalBatchNorm

    weights = [torch.arange(6.0).view(2, 3), torch.arange(1.0, 5.0)]
    masks = [torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), torch.tensor([0.0, 1.0, 1.0, 0.0])]
    same = [id(w) for w in weights]
    torch_internals.multiply_(weights, masks)  # torch._foreach_mul_
    assert [id(w) for w in weights] == same
    assert [w.tolist() for w in weights] == [[[0.0, 0.0, 2.0], [0.0, 4.0, 0.0]], [0.0, 2.0, 3.0, 0.0]]

    # nn.modules.batchnorm._BatchNorm: BatchNorm1d/2d are it with another _check_input_dim.
    for public in (nn.BatchNorm1d, nn.BatchNorm2d):
        assert issubclass(public, torch_internals.BatchNorm) and public.forward is torch_internals.BatchNorm.forward
    bn = GlobalBatchNorm(3)
    assert list(bn.state_dict()) == list(nn.BatchNorm2d(3).state_dict())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias):
            t.copy_(torch.rand(3, generator=g) + 0.5)
    bn.eval()
    for shape in ((4, 3), (4, 3, 5), (2, 3, 4, 4)):  # BatchNorm1d's inputs and BatchNorm2d's
        x = torch.randn(shape, generator=g)
        assert torch.equal(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1,
                                               bn.eps))
    with pytest.raises(ValueError, match=r"expected 2-d, 3-d or 4-d input \(got 5-d\)"):  # our _check_input_dim ran
        bn(torch.zeros(1, 3, 1, 1, 1))
