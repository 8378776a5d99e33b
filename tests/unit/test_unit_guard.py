"""The unit-test guard of conftest.py: every process or socket attempt raises AssertionError.

Each test checks that the callable is the guard before calling it, so a broken guard fails the
test instead of really forking pytest or connecting somewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from unit_guard import GUARD_MARK, SpawnGuard


def _assert_guarded(func: Callable[..., Any]) -> None:
    assert getattr(func, GUARD_MARK, False), f"{func!r} is not replaced by the unit-test guard"


def _refused(guard: SpawnGuard, call: Callable[[], object], expected: str) -> None:
    with pytest.raises(AssertionError, match="spawn no process") as caught:
        call()
    assert expected in str(caught.value)
    assert guard.attempts, "the attempt was not recorded"
    guard.attempts.clear()


def test_subprocess_run_is_refused_and_named(spawn_guard: SpawnGuard) -> None:
    _assert_guarded(subprocess.Popen.__init__)
    _refused(spawn_guard, lambda: subprocess.run(["true"], check=False), "subprocess.Popen(['true']")


def test_popen_helpers_are_refused(spawn_guard: SpawnGuard) -> None:
    _refused(spawn_guard, lambda: subprocess.check_output(["echo", "hi"]), "subprocess.Popen")
    _refused(spawn_guard, lambda: os.popen("echo hi"), "subprocess.Popen")


def test_asyncio_subprocess_is_refused(spawn_guard: SpawnGuard) -> None:
    async def spawn() -> None:
        await asyncio.create_subprocess_exec("true")

    with pytest.raises(AssertionError, match=r"subprocess\.Popen"):
        asyncio.run(spawn())
    spawn_guard.attempts.clear()


@pytest.mark.parametrize("name", ["fork", "forkpty", "execv", "execve", "execvp", "execvpe", "system"])
def test_os_process_calls_are_refused(spawn_guard: SpawnGuard, name: str) -> None:
    func = getattr(os, name)
    _assert_guarded(func)
    args: dict[str, tuple[object, ...]] = {
        "fork": (),
        "forkpty": (),
        "execv": ("/bin/true", ["true"]),
        "execve": ("/bin/true", ["true"], {}),
        "execvp": ("true", ["true"]),
        "execvpe": ("true", ["true"], {}),
        "system": ("true",),
    }
    _refused(spawn_guard, lambda: func(*args[name]), f"os.{name}(")


def test_execl_goes_through_the_guard(spawn_guard: SpawnGuard) -> None:
    _assert_guarded(os.execl)
    _refused(spawn_guard, lambda: os.execl("/bin/true", "true"), "os.execl(")


def test_unix_socket_connect_is_refused(spawn_guard: SpawnGuard, tmp_path: Path) -> None:
    _assert_guarded(socket.socket.connect)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        _refused(spawn_guard, lambda: sock.connect(str(tmp_path / "agent.sock")), "socket.connect(")
        _refused(spawn_guard, lambda: sock.connect_ex(str(tmp_path / "agent.sock")), "socket.connect_ex(")


def test_tcp_connect_and_bind_are_refused(spawn_guard: SpawnGuard) -> None:
    _assert_guarded(socket.socket.bind)
    _refused(spawn_guard, lambda: socket.create_connection(("127.0.0.1", 9)), "socket.connect(")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        _refused(spawn_guard, lambda: sock.bind(("127.0.0.1", 0)), "socket.bind(('127.0.0.1', 0))")


def test_udp_sendto_is_refused(spawn_guard: SpawnGuard) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _refused(spawn_guard, lambda: sock.sendto(b"x", ("127.0.0.1", 9)), "socket.sendto(")


def test_a_swallowed_attempt_is_still_recorded(spawn_guard: SpawnGuard) -> None:
    # The point: code under test might swallow the error in a broad except.
    with contextlib.suppress(Exception):
        subprocess.run(["true"], check=False)
    assert spawn_guard.attempts == ["subprocess.Popen(['true'])"]
    spawn_guard.attempts.clear()
