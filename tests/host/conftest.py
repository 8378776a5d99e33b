"""Host tests use the fakes that ship in tests/fakes (the fake Messages API, a throw-away CA)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))


@pytest.fixture
def never_blocks() -> Iterator[None]:
    """A step that blocks (a FIFO opened without O_NONBLOCK) fails the test instead of hanging:
    for the guest's root helpers, which must never wait on a path a run planted."""

    def _blocked(*_: object) -> None:
        raise AssertionError("root blocked on a path the run planted")

    previous = signal.signal(signal.SIGALRM, _blocked)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
