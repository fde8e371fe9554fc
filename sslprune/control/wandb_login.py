"""What wandb's login would find here, without logging in: the server and whether a key is set.

wandb has no public call for either. `wandb.login(prompt=False)` answers "is a key configured",
but it also adopts the key for the session, prints, and rewrites wandb's settings file;
`wandb.Api()` asks the server. So this module, and only this one, uses wandb's private API:
the settings singleton (`wandb.sdk.wandb_setup.singleton().settings`) and the credential lookup
of `wandb.login` (`wandb.sdk.lib.wbauth.authenticate_session`, without prompting and without
touching the session). tests/test_library_apis.py checks that both still exist and behave as
used here; when wandb changes them, that test fails, and here a call raises a RuntimeError
naming what moved: a wandb change never reads as "credentials found" or "none found".
"""
from __future__ import annotations

import inspect

# The keyword arguments of authenticate_session this module passes (wandb 0.31).
AUTHENTICATE_KEYWORDS = ("host", "source", "prompt", "update_session")


def _changed(what: str, error: BaseException) -> RuntimeError:
    from importlib import metadata

    try:
        version = metadata.version("wandb")  # without importing it: the import may be what broke
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    return RuntimeError(f"wandb {version} changed {what} ({type(error).__name__}: {error}): sslprune cannot tell "
                        "which W&B server and credentials wandb would use (sslprune/control/wandb_login.py; "
                        "tests/test_library_apis.py shows what moved); set wandb.mode=online, offline or disabled "
                        "rather than auto, or install a wandb that test passes with")


def server() -> str:
    """The W&B server wandb would use (WANDB_BASE_URL, wandb's settings files, or its default)."""
    try:
        from wandb.sdk import wandb_setup

        return str(wandb_setup.singleton().settings.base_url)
    except (ImportError, AttributeError) as e:
        raise _changed("wandb.sdk.wandb_setup.singleton().settings.base_url", e) from e


def has_key() -> bool:
    """Whether wandb would find credentials for its server without prompting: WANDB_API_KEY,
    WANDB_IDENTITY_TOKEN_FILE, the .netrc or wandb's settings files. A key that is there but
    malformed (or a malformed server URL) counts as configured: wandb.init then says what is wrong,
    and the run falls back to wandb.fallback."""
    try:
        from wandb.errors import AuthenticationError
        from wandb.sdk.lib import wbauth

        authenticate = wbauth.authenticate_session
        missing = [k for k in AUTHENTICATE_KEYWORDS if k not in inspect.signature(authenticate).parameters]
        if missing:
            raise TypeError(f"authenticate_session() has no parameter {', '.join(missing)}")
    except (ImportError, AttributeError, TypeError) as e:
        raise _changed("wandb.sdk.lib.wbauth.authenticate_session", e) from e
    try:
        auth = authenticate(host=server(), source="sslprune", prompt=False, update_session=False)
    except AuthenticationError:  # a key in the wrong format (wbauth.AuthApiKey checks it)
        return True
    except ValueError:  # an invalid server URL (wandb's settings validation, wbauth.HostUrl)
        return True
    return auth is not None
