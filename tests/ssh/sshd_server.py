"""The test sshd's record and helpers, shared by conftest.py and the test modules.

A plain module rather than conftest.py itself, because `import conftest` is ambiguous once
other test folders have their own.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
HOST_KEY_ALIAS = "vmsbx-test-guest"


@dataclass(frozen=True)
class Sshd:
    """The running test sshd and the key material that reaches it."""

    port: int
    root: Path
    host_key: Path
    host_public_line: str
    client_key: Path
    log: Path
    user: str


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_banner(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {port}:\n{log.read_text()}")
