"""The host agent's side of the resident guest agent (provision/guest/guestd.py).

A launcher call (`python3 -S guest.py VERB …`) without a terminal goes to the guest agent over a
direct-streamlocal channel of the agent's one SSH connection, instead of an SSH session that
starts a shell and a Python in the guest. Its reply frames are the agent protocol's own, so the
CLI sees the same stream either way. When the guest agent cannot take the call (a guest
provisioned by an older vmsbx, a host whose login is not root, another bundle), the call goes
over SSH as before: the same launcher on disk, the same sandbox, only slower; the agent's log
says so once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import cast

import paramiko

from vmsbx.agent.protocol import Frame, recv_exact, recv_frame, send_frame
from vmsbx.contract import GUEST_ARGV, GUESTD_REQUEST_HEADER, GUESTD_REQUEST_MAX, GUESTD_SOCKET
from vmsbx.errors import TransportError
from vmsbx.guestbundle import bundle_version
from vmsbx.transport import Connection

log = logging.getLogger("vmsbx.agent.guestd")
_REPLY_MAX = 4096


def launcher_verb(argv: Sequence[str], *, pty: bool) -> list[str] | None:
    """The launcher's arguments if `argv` is a launcher call the guest agent can serve."""
    if pty or tuple(argv[: len(GUEST_ARGV)]) != GUEST_ARGV or len(argv) == len(GUEST_ARGV):
        return None
    return list(argv[len(GUEST_ARGV) :])


class GuestAgentLink:
    """Opens guest agent calls; remembers why the last one could not be made (logged once)."""

    def __init__(self) -> None:
        self._unavailable = ""

    def open(self, conn: Connection, verb: list[str]) -> paramiko.Channel | None:
        """A channel on which `verb` runs, or None (the caller uses SSH) if the guest agent did
        not take it. Nothing of the call has run when None is returned."""
        try:
            channel = conn.open_socket(GUESTD_SOCKET)
        except TransportError as exc:
            self._not_taken(f"no guest agent: {exc}")
            return None
        refusal = _ask(channel, verb)
        if refusal:
            channel.close()
            self._not_taken(refusal)
            return None
        if self._unavailable:
            log.info("the guest agent takes launcher calls again")
            self._unavailable = ""
        return channel

    def _not_taken(self, reason: str) -> None:
        if reason != self._unavailable:
            log.warning("%s; launcher calls go over SSH sessions", reason)
            self._unavailable = reason


def _ask(channel: paramiko.Channel, verb: list[str]) -> str:
    """Send the request's header; '' if the guest agent accepted it, else why not."""
    header = json.dumps({"version": bundle_version(), "argv": verb}).encode()
    if len(header) > GUESTD_REQUEST_MAX:
        return f"a request of {len(header)} bytes is too long for the guest agent"
    try:
        channel.sendall(GUESTD_REQUEST_HEADER.pack(len(header)) + header)
        reply = _read_reply(channel)
    except (OSError, EOFError, ValueError, paramiko.SSHException) as exc:
        return f"the guest agent broke off: {exc}"
    if reply.get("accepted") is not True:
        return f"the guest agent refused: {str(reply.get('error'))[:200]}"
    return ""


def _read_reply(channel: paramiko.Channel) -> dict[str, object]:
    head = _recv_exact(channel, GUESTD_REQUEST_HEADER.size)
    (size,) = GUESTD_REQUEST_HEADER.unpack(head)
    if size > _REPLY_MAX:
        raise ValueError(f"a reply of {size} bytes")
    reply = json.loads(_recv_exact(channel, size))
    if not isinstance(reply, dict):
        raise ValueError("the reply is not a JSON object")
    return reply


def _recv_exact(channel: paramiko.Channel, size: int) -> bytes:
    data = recv_exact(cast(socket.socket, channel), size)
    if data is None:
        raise EOFError("the guest agent closed the channel")
    return data


def relay(
    channel: paramiko.Channel,
    client: socket.socket,
    stdin_pump: Callable[[socket.socket, paramiko.Channel], None],
) -> None:
    """Carry one accepted call: the CLI's stdin frames to the guest agent (by `stdin_pump`, the
    agent's own for SSH sessions: raw bytes, then a half-close), its frames back. A channel cut
    before the EXIT frame ends without one, which tells the CLI so (as a dropped SSH session
    does)."""
    threading.Thread(target=stdin_pump, args=(client, channel), daemon=True).start()
    try:
        while True:
            frame = recv_frame(cast(socket.socket, channel))
            if frame is None:
                break
            kind, payload = frame
            if kind in (Frame.STDOUT, Frame.STDERR):
                send_frame(client, kind, payload)
            elif kind is Frame.EXIT:
                code = int(json.loads(payload)["code"])
                send_frame(client, Frame.EXIT, json.dumps({"code": code}).encode())
                return
            else:
                raise ValueError(f"the guest agent sent a frame of kind {kind.name}")
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        log.warning("a guest agent call broke off: %s", exc)
    finally:
        channel.close()
    log.warning("a guest agent call ended before its exit")
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_RDWR)
