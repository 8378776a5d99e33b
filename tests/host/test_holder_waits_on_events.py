"""The session holder (provision/guest/session_holder.py) notices its command's end as an event
(a pidfd), not by looking every 0.2 s: on a real command, every wait before the end has no
timeout, and the holder returns the command's code. Each 0.2 s poll was up to 0.2 s more per
run before the unit could stop."""

from __future__ import annotations

import importlib.util
import selectors
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

GUEST = Path(__file__).resolve().parents[2] / "provision" / "guest"


def _holder_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("session_holder_under_test", GUEST / "session_holder.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_commands_end_is_waited_for_not_polled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = _holder_module()
    monkeypatch.setattr(holder, "HOLDER_DIR", str(tmp_path / ".vmsbx"))
    # The host has no seccomp filter: the probe is the VM tests' (test_sandbox_walls).
    monkeypatch.setattr(holder, "unfiltered_syscalls", list)
    timeouts: list[float | None] = []

    class Recording(selectors.DefaultSelector):
        def select(self, timeout: float | None = None) -> Any:
            timeouts.append(timeout)
            return super().select(timeout)

    monkeypatch.setattr(holder.selectors, "DefaultSelector", Recording)
    spec = {"argv": ["sh", "-c", "exec 1>&- 2>&-; sleep 0.5; exit 7"], "cwd": str(tmp_path),
            "home": str(tmp_path / "home")}  # fmt: skip
    code = holder.Holder(spec).run()
    assert code == 7
    assert timeouts, "the holder never waited"
    # The outputs close at once; the command's exit (0.5 s later) must wake the holder itself.
    assert 0.2 not in timeouts, timeouts
    assert sys.platform != "linux" or timeouts[0] is None
