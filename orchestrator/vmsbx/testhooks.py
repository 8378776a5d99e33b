"""Stage hooks: named points in long operations where the fault tests interrupt vmsbx.

Inert unless `VMSBX_TEST_STAGE_HOOK` is set (a reserved `VMSBX_TEST_*` name the config loader
never reads as a setting). Its value is `STAGE` or `STAGE/SIGNAL` (default KILL): when the
operation reaches STAGE, vmsbx sends itself SIGNAL — the test's stand-in for a crash, a closed
terminal or Ctrl-C at exactly that point, without timed sleeps.
"""

from __future__ import annotations

import os
import signal

HOOK_ENV = "VMSBX_TEST_STAGE_HOOK"


def stage(name: str) -> None:
    """Mark reaching stage `name`; does nothing unless the hook names it."""
    wanted = os.environ.get(HOOK_ENV)
    if not wanted:
        return
    target, _, signal_name = wanted.partition("/")
    if target != name:
        return
    sig = getattr(signal, f"SIG{signal_name or 'KILL'}", None)
    if not isinstance(sig, signal.Signals):
        return
    os.kill(os.getpid(), sig)
