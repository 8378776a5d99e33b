"""The real `vmsbx` CLI as the VM tests drive it: a child process with the session's environment."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cli:
    """Runs the real `vmsbx` CLI in a child process with the session's environment."""

    env: dict[str, str]
    cwd: Path

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        extra_env: dict[str, str] | None = None,
        timeout: float = 900,
    ) -> subprocess.CompletedProcess[bytes]:
        env = dict(self.env, **(extra_env or {}))
        return subprocess.run(
            [sys.executable, "-m", "vmsbx", *args],
            input=input,
            capture_output=True,
            env=env,
            cwd=self.cwd,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        result = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode == 0, (
            f"vmsbx {' '.join(args)} exited {result.returncode}\n"
            f"stdout: {result.stdout.decode(errors='replace')}\n"
            f"stderr: {result.stderr.decode(errors='replace')}"
        )
        return result

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "--json").stdout)

    @property
    def home(self) -> Path:
        return Path(self.env["VMSBX_HOME"])


def read_pty_until(fd: int, marker: bytes | None, seconds: float) -> bytes:
    """Read a pseudo-terminal until `marker` shows up (or EOF, when marker is None)."""
    seen = b""
    deadline = time.monotonic() + seconds
    while (marker is None or marker not in seen) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen
