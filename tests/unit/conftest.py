"""Unit tests spawn nothing and open no socket (STYLE.md habit 6): any attempt fails loudly.

Every way this process could start another program (subprocess, the exec/spawn/fork family,
os.system) and every way a socket reaches anything (connect, connect_ex, bind, sendto) is
replaced for the duration of each unit test by a guard that raises AssertionError naming the
call and its arguments (see unit_guard.py). Code under test might swallow that error in a broad
`except`, so each attempt is also recorded and the test fails at teardown if any were made.

Tests that check the guard itself take the `spawn_guard` fixture and clear its `attempts`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_guard import SpawnGuard, install


@pytest.fixture(autouse=True)
def spawn_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[SpawnGuard]:
    guard = install(monkeypatch)
    yield guard
    if guard.attempts:
        pytest.fail(
            "this unit test tried to spawn a process or use a socket (the error may have been "
            "swallowed): " + "; ".join(guard.attempts),
            pytrace=False,
        )


@pytest.fixture
def vmsbx_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """vmsbx's state, cache and user config under tmp_path, no VMSBX_* of the caller's: for
    tests that drive the command line. Returns tmp_path."""
    for name in list(os.environ):
        if name.startswith("VMSBX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VMSBX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VMSBX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VMSBX_CONFIG", str(tmp_path / "config.toml"))
    return tmp_path
