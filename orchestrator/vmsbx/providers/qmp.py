"""A minimal QMP client: enough to ask a guest to power down, or QEMU to quit."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class QMPError(Exception):
    pass


def qmp_command(sock_path: Path, command: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """Connect, negotiate capabilities, run one command, return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(sock_path))
        except OSError as exc:
            raise QMPError(f"cannot reach QMP socket {sock_path}: {exc}") from exc
        stream = sock.makefile("rw", encoding="utf-8")
        _read_reply(stream, greeting=True)
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}) + "\n")
            stream.flush()
            reply = _read_reply(stream)
        return reply


def _read_reply(stream: Any, *, greeting: bool = False) -> dict[str, Any]:
    while True:
        line = stream.readline()
        if not line:
            raise QMPError("QMP socket closed")
        message: dict[str, Any] = json.loads(line)
        if greeting and "QMP" in message:
            return message
        if "error" in message:
            raise QMPError(str(message["error"]))
        if "return" in message:
            return message
        # Asynchronous events (POWERDOWN, SHUTDOWN, …) are not replies: skip them.
