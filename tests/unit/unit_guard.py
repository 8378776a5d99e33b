"""The guard behind tests/unit/conftest.py: process and socket calls replaced by loud refusals.

Every way this process could start another program (subprocess, the exec/spawn/fork family,
os.system) and every way a socket reaches anything (connect, connect_ex, bind, sendto) is
replaced for the duration of each unit test by a guard that raises AssertionError naming the
call and its arguments. Code under test might swallow that error in a broad `except`, so the
guard also records each attempt and the test fails at teardown if any were made.

It lives apart from conftest.py so that tests can import it by a name no other conftest shares.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pytest

# Everything in `os` that starts a process or replaces this one. os.execl* and os.spawn* call
# os.execv*/os.fork through the module, but are listed too so the message names what was called.
_OS_CALLS = (
    "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
    "fork", "forkpty", "posix_spawn", "posix_spawnp",
    "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
    "system",
)  # fmt: skip
_SOCKET_CALLS = ("connect", "connect_ex", "bind", "sendto")
GUARD_MARK = "__vmsbx_unit_guard__"


@dataclass
class SpawnGuard:
    """The process and socket attempts made during one unit test (there should be none)."""

    attempts: list[str] = field(default_factory=list)

    def refuse(self, what: str) -> NoReturn:
        self.attempts.append(what)
        raise AssertionError(
            f"unit test attempted {what}; unit tests spawn no process and open no socket "
            "(STYLE.md habit 6): move this test under an integration marker or test the pure part"
        )


def _describe(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    shown = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    text = ", ".join(shown)
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{name}({text})"


def _guard_function(guard: SpawnGuard, name: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        guard.refuse(_describe(name, args, kwargs))

    setattr(refuse, GUARD_MARK, True)
    return refuse


def _guard_method(guard: SpawnGuard, name: str) -> Callable[..., NoReturn]:
    def refuse(self: object, *args: Any, **kwargs: Any) -> NoReturn:
        guard.refuse(_describe(name, args, kwargs))

    setattr(refuse, GUARD_MARK, True)
    return refuse


def install(monkeypatch: pytest.MonkeyPatch) -> SpawnGuard:
    """Replace every process and socket entry point for as long as `monkeypatch` is active."""
    guard = SpawnGuard()
    # Popen.__init__ covers subprocess.run/call/check_output, os.popen and asyncio subprocesses.
    monkeypatch.setattr(subprocess.Popen, "__init__", _guard_method(guard, "subprocess.Popen"))
    for name in _OS_CALLS:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _guard_function(guard, f"os.{name}"))
    for name in _SOCKET_CALLS:
        monkeypatch.setattr(socket.socket, name, _guard_method(guard, f"socket.{name}"))
    return guard
