"""Shared plumbing of the fake `limactl`, `multipass` and `wsl.exe` (see README.md here).

State lives in plain JSON files under a directory the tests choose, so every call of a fake sees
what the previous call did. Failures are injected with VMSBX_TEST_FAKE_FAIL (a comma list of words
each fake documents). When VMSBX_TEST_FAKE_BACKEND names a JSON file describing a real guest
(host, port, user, key_file, known_hosts, alias), the fakes act on that guest over real,
pinned SSH instead of pretending: provisioning scripts run there, `shell`/`exec`/`-e` commands
run there, and the connection details they report lead there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def failures() -> set[str]:
    return {word.strip() for word in os.environ.get("VMSBX_TEST_FAKE_FAIL", "").split(",") if word.strip()}


def state_dir(tool: str) -> Path:
    root = os.environ.get("VMSBX_TEST_FAKE_STATE")
    if not root:
        sys.stderr.write(f"fake {tool}: VMSBX_TEST_FAKE_STATE is not set\n")
        sys.exit(99)
    path = Path(root) / tool
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked_state(path: Path) -> Iterator[dict[str, Any]]:
    """Load the JSON state at `path`, yield it for changes, write it back (one writer at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        yield data
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)


def log_call(tool: str, argv: list[str]) -> None:
    """Every call is appended to calls.jsonl, so tests can check what the provider ran."""
    with open(state_dir(tool) / "calls.jsonl", "a") as handle:
        handle.write(json.dumps(argv) + "\n")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def backend() -> dict[str, Any] | None:
    path = os.environ.get("VMSBX_TEST_FAKE_BACKEND")
    if not path:
        return None
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def backend_ssh_argv(info: dict[str, Any], remote: list[str] | str) -> list[str]:
    """OpenSSH argv to the backend guest, host key pinned (never StrictHostKeyChecking=no)."""
    import shlex

    command = remote if isinstance(remote, str) else shlex.join(remote)
    return [
        "ssh", "-F", "/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={info['known_hosts']}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"HostKeyAlias={info['alias']}",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
        "-o", "LogLevel=ERROR",
        "-i", str(info["key_file"]), "-p", str(info["port"]),
        f"{info['user']}@{info['host']}", command,
    ]  # fmt: skip


def backend_run(remote: list[str] | str, *, stdin: bytes | None = None, passthrough: bool = False) -> int:
    """Run `remote` in the backend guest; with passthrough its output goes to ours."""
    info = backend()
    assert info is not None
    argv = backend_ssh_argv(info, remote)
    if passthrough:
        return subprocess.run(argv, check=False).returncode
    result = subprocess.run(argv, input=stdin, capture_output=True, check=False, timeout=120)
    if result.returncode != 0:
        sys.stderr.buffer.write(result.stdout + result.stderr)
    return result.returncode


def backend_install_host_key(public_line: str) -> None:
    """After provisioning put a new host key in the guest, the backend's own pin follows it."""
    info = backend()
    assert info is not None
    keytype, blob = public_line.split()[:2]
    Path(info["known_hosts"]).write_text(f"{info['alias']} {keytype} {blob}\n")
