"""The host terminal in raw/cbreak mode (vmsbx/terminal.py): on a real pseudo-terminal here, and
the Windows console path against a stand-in for kernel32 (the only part that cannot run here)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from vmsbx import terminal
from vmsbx.terminal import (
    ENABLE_ECHO_INPUT,
    ENABLE_LINE_INPUT,
    ENABLE_PROCESSED_INPUT,
    ENABLE_VIRTUAL_TERMINAL_INPUT,
    ENABLE_VIRTUAL_TERMINAL_PROCESSING,
    windows_input_mode,
    windows_output_mode,
)

_PROBE = r"""
import json, termios, sys
from vmsbx.terminal import key_mode, read_keys
def flags():
    lflag = termios.tcgetattr(0)[3]
    return {"icanon": bool(lflag & termios.ICANON), "echo": bool(lflag & termios.ECHO),
            "isig": bool(lflag & termios.ISIG)}
out = {"before": flags()}
with key_mode(raw=sys.argv[1] == "raw"):
    out["inside"] = flags()
    out["nothing"] = read_keys(0.2)
    sys.stdout.write("READY\n"); sys.stdout.flush()
    out["typed"] = read_keys(10).decode()
out["after"] = flags()
sys.stdout.write(json.dumps(out) + "\n")
"""


@pytest.mark.parametrize("raw", [True, False])
def test_key_mode_on_a_real_terminal_and_restored(raw: bool) -> None:
    master, slave = os.openpty()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen(
        [sys.executable, "-c", _PROBE, "raw" if raw else "cbreak"],
        stdin=slave, stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(slave)
    assert child.stdout is not None
    assert child.stdout.readline() == b"READY\n"
    os.write(master, b"q")
    out = json.loads(child.stdout.readline())
    child.wait(timeout=10)
    os.close(master)
    assert out["before"] == out["after"] == {"icanon": True, "echo": True, "isig": True}
    # raw: Ctrl-C is a byte for the guest; cbreak (vmsbx top): it still interrupts here.
    assert out["inside"] == {"icanon": False, "echo": False, "isig": not raw}
    assert out["nothing"] is None and out["typed"] == "q"  # a key, without Enter


def test_windows_console_modes() -> None:
    cooked = ENABLE_PROCESSED_INPUT | ENABLE_LINE_INPUT | ENABLE_ECHO_INPUT | 0x0080
    raw = windows_input_mode(cooked, raw=True)
    assert raw & (ENABLE_PROCESSED_INPUT | ENABLE_LINE_INPUT | ENABLE_ECHO_INPUT) == 0
    assert raw & ENABLE_VIRTUAL_TERMINAL_INPUT and raw & 0x0080  # unrelated bits kept
    cbreak = windows_input_mode(cooked, raw=False)
    assert cbreak & ENABLE_PROCESSED_INPUT and not cbreak & (ENABLE_LINE_INPUT | ENABLE_ECHO_INPUT)
    assert windows_output_mode(0) & ENABLE_VIRTUAL_TERMINAL_PROCESSING


class _Kernel32:
    """GetStdHandle/GetConsoleMode/SetConsoleMode as the Windows console answers them."""

    def __init__(self, *, output_is_console: bool) -> None:
        self.modes = {-10: ENABLE_PROCESSED_INPUT | ENABLE_LINE_INPUT | ENABLE_ECHO_INPUT, -11: 0x0003}
        self.output_is_console = output_is_console
        self.calls: list[tuple[int, int]] = []

    def GetStdHandle(self, which: int) -> int:
        return which

    def GetConsoleMode(self, handle: int, pointer: Any) -> int:
        if handle == -11 and not self.output_is_console:
            return 0  # redirected to a file: not a console
        pointer._obj.value = self.modes[handle]
        return 1

    def SetConsoleMode(self, handle: int, mode: int) -> int:
        self.calls.append((handle, mode))
        self.modes[handle] = mode
        return 1


@pytest.mark.parametrize("output_is_console", [True, False])
def test_windows_console_is_set_raw_and_restored(
    monkeypatch: pytest.MonkeyPatch, output_is_console: bool
) -> None:
    kernel32 = _Kernel32(output_is_console=output_is_console)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error=False: kernel32, raising=False)
    before = dict(kernel32.modes)
    with terminal._windows_mode(raw=True):
        assert kernel32.modes[-10] == windows_input_mode(before[-10], raw=True)
        expected_out = windows_output_mode(before[-11]) if output_is_console else before[-11]
        assert kernel32.modes[-11] == expected_out
    assert kernel32.modes == before  # restored, input last changed first restored
    assert len(kernel32.calls) == (4 if output_is_console else 2)
