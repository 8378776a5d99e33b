"""tests/conftest.py gives Ctrl-C back to a test session that was started with SIGINT ignored
(scripts/test starts its shards as background jobs, which a shell starts so): the `vmsbx`
processes the Ctrl-C tests interrupt are its children and would ignore SIGINT too."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
CHILD = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"


def _child_has_ctrl_c(restore: bool) -> str:
    code = (
        f"import subprocess, sys; sys.path.insert(0, {str(TESTS)!r}); import conftest\n"
        + ("" if restore else "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n")
        + f"done = subprocess.run([sys.executable, '-c', {CHILD!r}], capture_output=True, text=True)\n"
        + "print(done.stdout.strip())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a background job
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_session_started_with_sigint_ignored_gives_its_children_ctrl_c_back() -> None:
    assert _child_has_ctrl_c(restore=True) == "True"


def test_without_it_the_children_would_ignore_ctrl_c() -> None:
    # The control: importing conftest restored it; ignoring it again is what a child then gets.
    assert _child_has_ctrl_c(restore=False) == "False"
