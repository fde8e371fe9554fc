"""Hydra's process-wide state, set aside while sslprune composes its own configs.

Hydra's compose API works on one global per process (`GlobalHydra`): `initialize_config_module`
refuses to run while a caller (a running Hydra app, a notebook) has initialised it, and has no
public way to set the caller's state aside and put it back. `GlobalHydra` lives in `hydra.core`
and its methods carry no underscore, but Hydra documents only `compose` and the `initialize*`
contexts; so this module, and only this one, touches `GlobalHydra` (`instance`, `is_initialized`,
`clear`, `initialize` and its `hydra` attribute). tests/test_library_apis.py checks that they
still behave as used here, and fails naming what moved when Hydra changes them.
"""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def set_aside():
    """Within the block Hydra is not initialised; afterwards it is exactly as the caller had it
    (the same Hydra object, or not initialised), whatever the block did or raised."""
    from hydra.core.global_hydra import GlobalHydra

    state = GlobalHydra.instance()
    caller = state.hydra if state.is_initialized() else None
    state.clear()
    try:
        yield
    finally:
        # Hydra's initialize* contexts replace the instance with their own backup on exit: ask again.
        state = GlobalHydra.instance()
        state.clear()
        if caller is not None:
            state.initialize(caller)
