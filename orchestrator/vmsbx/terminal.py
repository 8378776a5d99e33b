"""The host terminal in raw or cbreak mode: POSIX terminals (termios) and the Windows console.

`--tty` runs need raw mode (every key, Ctrl-C included, goes to the program in the guest, and the
guest's pseudo-terminal does the echoing); `vmsbx top` needs cbreak (keys without Enter, Ctrl-C
still interrupts). On Windows the console's input mode is changed instead of termios: no line
editing, no local echo, and VT input, so arrow keys arrive as the same escape sequences a POSIX
terminal sends; output gets VT processing so the guest's colours and cursor moves render.
Nothing here is imported at module load that Windows lacks (tests/host/test_windows_import.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial

# wincon.h console mode flags.
ENABLE_PROCESSED_INPUT = 0x0001
ENABLE_LINE_INPUT = 0x0002
ENABLE_ECHO_INPUT = 0x0004
ENABLE_VIRTUAL_TERMINAL_INPUT = 0x0200
ENABLE_PROCESSED_OUTPUT = 0x0001
ENABLE_VIRTUAL_TERMINAL_PROCESSING = 0x0004
_STD_INPUT_HANDLE = -10
_STD_OUTPUT_HANDLE = -11


def windows_input_mode(mode: int, *, raw: bool) -> int:
    """The console input mode for raw (Ctrl-C is a byte for the guest) or cbreak (Ctrl-C stays
    an interrupt here): never line input or local echo; always VT input."""
    cleared = ENABLE_LINE_INPUT | ENABLE_ECHO_INPUT | (ENABLE_PROCESSED_INPUT if raw else 0)
    return (mode & ~cleared) | ENABLE_VIRTUAL_TERMINAL_INPUT


def windows_output_mode(mode: int) -> int:
    return mode | ENABLE_PROCESSED_OUTPUT | ENABLE_VIRTUAL_TERMINAL_PROCESSING


@contextlib.contextmanager
def key_mode(*, raw: bool) -> Iterator[None]:
    """Raw (`raw=True`) or cbreak mode while inside; restored on the way out. A no-op when
    stdin is not a terminal."""
    if not sys.stdin.isatty():
        yield
        return
    if os.name == "posix":
        with _posix_mode(raw=raw):
            yield
    else:
        with _windows_mode(raw=raw):
            yield


@contextlib.contextmanager
def _posix_mode(*, raw: bool) -> Iterator[None]:
    import termios
    import tty

    saved = termios.tcgetattr(0)
    if raw:
        tty.setraw(0)
    else:
        tty.setcbreak(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _windows_mode(*, raw: bool) -> Iterator[None]:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
    handles = (kernel32.GetStdHandle(_STD_INPUT_HANDLE), kernel32.GetStdHandle(_STD_OUTPUT_HANDLE))
    changes: tuple[Callable[[int], int], ...] = (partial(windows_input_mode, raw=raw), windows_output_mode)
    saved: list[tuple[object, int]] = []
    try:
        for handle, change in zip(handles, changes, strict=True):
            mode = wintypes.DWORD()
            if not kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
                continue  # redirected: not a console, nothing to change
            if kernel32.SetConsoleMode(handle, change(mode.value)):
                saved.append((handle, mode.value))
        yield
    finally:
        for handle, mode_value in reversed(saved):
            kernel32.SetConsoleMode(handle, mode_value)


def read_keys(timeout: float) -> bytes | None:
    """Bytes typed within `timeout` seconds (b"" at end of input, None when nothing came)."""
    if os.name == "posix":
        import select

        ready, _, _ = select.select([0], [], [], timeout)
        return os.read(0, 64) if ready else None
    import msvcrt  # the console has no select(): poll it

    deadline = time.monotonic() + timeout
    while not msvcrt.kbhit():  # type: ignore[attr-defined,unused-ignore]
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
    return os.read(0, 64)
