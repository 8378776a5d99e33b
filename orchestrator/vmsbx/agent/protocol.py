"""Wire format between the CLI and the host agent.

A client sends one JSON request line. Simple requests get one JSON reply line. An `exec` reply
line is followed, in both directions, by frames: 1 byte type, 4 bytes big-endian length, payload.
"""

from __future__ import annotations

import enum
import hashlib
import json
import socket
import struct
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

HEADER = struct.Struct(">BI")


def agent_build() -> str:
    """Fingerprint of the agent's code: a CLI replaces an agent started by other code."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for source in (here / "server.py", here / "protocol.py", here.parent / "transport" / "ssh.py"):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


MAX_FRAME = 1 << 20


class Frame(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    STDIN_EOF = 3
    RESIZE = 4  # payload: {"cols": int, "rows": int}
    EXIT = 5  # payload: {"code": int}


class ExecRequest(BaseModel):
    """Run argv in the guest over the agent's connection, streaming through frames."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    op: str = "exec"
    argv: tuple[str, ...] = Field(min_length=1, description="Command, quoted once at the SSH edge.")
    pty: bool = Field(default=False, description="Allocate a terminal in the guest.")
    term: str = Field(default="xterm-256color", description="TERM for the terminal.")
    cols: int = Field(default=80, ge=1, le=1000)
    rows: int = Field(default=24, ge=1, le=1000)


class PutRequest(BaseModel):
    """Write a file in the guest: `size` raw bytes follow the request line."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    op: str = "put"
    remote: str = Field(pattern=r"^/[A-Za-z0-9._/-]+$", description="Absolute guest path.")
    mode: int = Field(ge=0, le=0o7777, description="File mode in the guest.")
    size: int = Field(ge=0, le=64 * 1024 * 1024, description="Number of bytes that follow.")


class AgentStatus(BaseModel):
    """agent.json: what the agent is doing, for `vmsbx up` to wait on and `status` to show."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pid: int
    phase: str = Field(description="connecting | ready | failed | stopped")
    error: str | None = None
    updated_at: str


def send_line(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def recv_line(sock: socket.socket, limit: int = 1 << 16) -> dict[str, Any] | None:
    """Read one JSON line byte by byte (frames may follow, so nothing past it is consumed)."""
    buf = bytearray()
    while len(buf) < limit:
        ch = sock.recv(1)
        if not ch:
            return None
        if ch == b"\n":
            decoded: dict[str, Any] = json.loads(buf)
            return decoded
        buf += ch
    raise ValueError("request line too long")


def send_frame(sock: socket.socket, kind: Frame, payload: bytes = b"") -> None:
    sock.sendall(HEADER.pack(kind, len(payload)) + payload)


class FrameWriter:
    """Sends whole frames from several threads (stdin pump, resize handler) without interleaving."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, kind: Frame, payload: bytes = b"") -> None:
        with self._lock:
            send_frame(self.sock, kind, payload)


def recv_exact(sock: socket.socket, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[Frame, bytes] | None:
    header = recv_exact(sock, HEADER.size)
    if header is None:
        return None
    kind, length = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is too large")
    payload = recv_exact(sock, length) if length else b""
    if payload is None:
        return None
    return Frame(kind), payload
