"""W&B's mode for a command: online, offline or disabled, decided once and said once.

`wandb.mode=auto` resolves once per command: WANDB_MODE if set, else online when W&B credentials
are configured, else disabled with one line saying so, printed by the command's main process
before work starts (announce) and inherited by its workers (AUTO_ENV). An online start-up that
fails (dashboard.open_run) turns the rest of the process to wandb.fallback (fall_back). `wandb`
is imported only where a credential file exists and its key must be read (wandb_login).
"""
from __future__ import annotations

import os
import sys

from ..core.schema import WandbConfig

# The auto mode decided by the command (online or disabled), passed to its worker processes.
AUTO_ENV = "SSLPRUNE_WANDB_AUTO"
# The mode an online start-up that failed fell back to, for the rest of this process (None: none failed).
_fallback: dict = {"mode": None}


def say(text: str) -> None:
    print(f"[sslprune] {text}", file=sys.stderr, flush=True)


def fall_back(mode: str) -> None:
    """Online start-up failed: `mode` (wandb.fallback) for the rest of this process."""
    _fallback["mode"] = mode


def credential_files() -> list[str]:
    """Every file wandb reads a key from besides the environment: the .netrc ($NETRC, ~/.netrc,
    ~/_netrc) and its settings files ($WANDB_CONFIG_DIR or ~/.config/wandb, and ./wandb)."""
    home = os.path.expanduser("~")
    config = os.environ.get("WANDB_CONFIG_DIR") or os.path.join(home, ".config", "wandb")
    netrcs = [os.path.expanduser(os.environ["NETRC"])] if os.environ.get("NETRC") else \
        [os.path.join(home, ".netrc"), os.path.join(home, "_netrc")]
    return netrcs + [os.path.join(config, "settings"), os.path.join(os.getcwd(), "wandb", "settings")]


def has_credentials() -> bool:
    """Whether wandb would find an API key without prompting (env, .netrc or wandb settings)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    if not any(os.path.exists(p) for p in credential_files()):
        # Nowhere a key could be: no need to import wandb (1.2 s, most of a re-submission's time).
        return False
    from . import wandb_login

    # A library change raises (announce and observer say so, W&B stays off), never reads as an answer.
    return wandb_login.has_key()


def resolve(w: WandbConfig) -> str:
    """online, offline or disabled, for this process."""
    if _fallback["mode"] and w.mode in ("auto", "online"):
        return _fallback["mode"]
    if w.mode != "auto":
        return w.mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env in ("dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}[env]
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    return _auto()


def _auto() -> str:
    """online or disabled by the credentials: decided once per command.

    The first process to decide (the command's main process, see announce) prints the state
    line and exports the decision in AUTO_ENV as `<mode>@<its pid>`; the worker processes it
    starts (local runs, local submitit jobs) inherit it and neither check the credentials again
    nor print the line again. A SLURM job inherits the variable too (sbatch passes the
    environment on) but is not the decider's child, so it decides for itself: its node may have
    credentials the submitting shell lacks (launcher.setup)."""
    mode, _, pid = os.environ.get(AUTO_ENV, "").partition("@")
    decided = mode if mode in ("online", "disabled") and pid in (str(os.getpid()), str(os.getppid())) else ""
    if not decided:
        decided = "online" if has_credentials() else "disabled"
        os.environ[AUTO_ENV] = f"{decided}@{os.getpid()}"
        if decided == "disabled":
            say("W&B disabled: no W&B credentials configured (WANDB_API_KEY, ~/.netrc or `wandb login`). "
                 "Use wandb=offline to log locally and upload later with sslprune-sync, or wandb=disabled "
                 "to silence this line.")
    return decided


def announce(w: WandbConfig) -> str:
    """Decide W&B's mode for this command before it works (its state line, if any, is printed
    now, once); returns the mode. Never raises: W&B must not stop a command."""
    try:
        return resolve(w)
    except Exception as e:
        say(f"W&B disabled: could not resolve wandb.mode ({e})")
        return "disabled"
