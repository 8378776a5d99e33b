"""Where the CLI reaches its VM's host agent: a Unix socket, or loopback TCP with a shared key.

The default is `agent.sock` in the VM's state folder (0700): only this user can reach it.
CPython has no AF_UNIX on Windows (python/cpython#77589), so there the agent listens on
127.0.0.1, on a port the system picks, and writes the port and a fresh 256-bit key to
`agent.endpoint` in the same folder, readable by this user only (on Windows the folder is in the
user's profile, which only that user can read). Any local process can connect to a loopback
port, so each connection starts with a mutual proof of that key: the agent proves it to the CLI
(a stale endpoint file whose port another program has since taken gets no request and no data)
and the CLI proves it to the agent; the key itself never crosses the socket.

`VMSBX_TEST_AGENT_TRANSPORT=tcp` forces the TCP path on any host: the tests run it on Linux.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vmsbx.agent.protocol import recv_line, send_line
from vmsbx.errors import ConfigError

SOCKET_FILE = "agent.sock"
ENDPOINT_FILE = "agent.endpoint"
Transport = Literal["unix", "tcp"]
_HANDSHAKE_SECONDS = 5.0


class HandshakeFailed(OSError):
    """The other side did not prove it holds this VM's agent key."""


def transport() -> Transport:
    """The platform's way to the agent, unless VMSBX_TEST_AGENT_TRANSPORT names one."""
    forced = os.environ.get("VMSBX_TEST_AGENT_TRANSPORT", "")
    if forced not in ("", "unix", "tcp"):
        raise ConfigError(
            f"VMSBX_TEST_AGENT_TRANSPORT={forced!r} is not a transport",
            hint="use `unix` or `tcp`, or unset it",
        )
    if forced == "tcp" or not hasattr(socket, "AF_UNIX"):
        if forced == "unix":  # pragma: no cover - only on a host without AF_UNIX
            raise ConfigError("this Python has no Unix sockets", hint="unset VMSBX_TEST_AGENT_TRANSPORT")
        return "tcp"
    return "unix"


def proof(key: str, role: str, first: str, second: str) -> str:
    """HMAC-SHA256 of the two nonces under the key, bound to the prover's role."""
    message = f"vmsbx-agent/{role}/{first}/{second}".encode()
    return hmac.new(bytes.fromhex(key), message, hashlib.sha256).hexdigest()


@dataclass
class Listener:
    """The agent's listening socket and, for TCP, the key connections must prove."""

    sock: socket.socket
    folder: Path
    key: str | None

    def admit(self, client: socket.socket) -> bool:
        """Run the agent's side of the handshake on a new connection (TCP only)."""
        if self.key is None:
            return True
        client.settimeout(_HANDSHAKE_SECONDS)
        try:
            ours = secrets.token_hex(16)
            send_line(client, {"nonce": ours})
            hello = recv_line(client, limit=512)
            theirs = str((hello or {}).get("nonce", ""))
            shown = str((hello or {}).get("proof", ""))
            if not theirs or not hmac.compare_digest(shown, proof(self.key, "cli", ours, theirs)):
                return False
            send_line(client, {"proof": proof(self.key, "agent", theirs, ours)})
        except (OSError, ValueError):
            return False
        client.settimeout(None)
        return True

    def close(self) -> None:
        self.sock.close()
        for name in (SOCKET_FILE, ENDPOINT_FILE):
            (self.folder / name).unlink(missing_ok=True)


def listen(folder: Path, kind: Transport) -> Listener:
    """Bind the agent's endpoint in `folder` (the VM's state folder) and publish it."""
    for name in (SOCKET_FILE, ENDPOINT_FILE):
        (folder / name).unlink(missing_ok=True)
    if kind == "unix":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            server.bind(str(folder / SOCKET_FILE))
        finally:
            os.umask(old_umask)
        server.listen(16)
        return Listener(server, folder, None)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    key = secrets.token_hex(32)
    _write_private(folder / ENDPOINT_FILE, json.dumps({"port": server.getsockname()[1], "key": key}))
    return Listener(server, folder, key)


def connect(folder: Path, kind: Transport, timeout: float | None) -> socket.socket:
    """A connection to the agent whose endpoint is in `folder`; raises OSError if none answers
    (HandshakeFailed if something answers that is not this VM's agent)."""
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(folder / SOCKET_FILE))
        except OSError:
            sock.close()
            raise
        return sock
    try:
        published = json.loads((folder / ENDPOINT_FILE).read_text(encoding="utf-8"))
        port, key = int(published["port"]), str(published["key"])
        bytes.fromhex(key)
    except (KeyError, TypeError, ValueError) as exc:
        raise OSError(f"{folder / ENDPOINT_FILE} is damaged") from exc
    sock = socket.create_connection(("127.0.0.1", port), timeout=_HANDSHAKE_SECONDS)
    try:
        challenge = recv_line(sock, limit=512)
        theirs = str((challenge or {}).get("nonce", ""))
        if not theirs:
            raise HandshakeFailed(f"127.0.0.1:{port} is not this VM's host agent")
        ours = secrets.token_hex(16)
        send_line(sock, {"nonce": ours, "proof": proof(key, "cli", theirs, ours)})
        answer = recv_line(sock, limit=512)
        if not hmac.compare_digest(str((answer or {}).get("proof", "")), proof(key, "agent", ours, theirs)):
            raise HandshakeFailed(f"127.0.0.1:{port} did not prove it is this VM's host agent")
    except (OSError, ValueError) as exc:
        sock.close()
        raise exc if isinstance(exc, OSError) else HandshakeFailed(str(exc)) from exc
    sock.settimeout(timeout)
    return sock


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by this user only."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    temp.replace(path)
