"""A direct-streamlocal@openssh.com channel: a connection to a Unix socket in the guest, made by
the guest's sshd itself (no session, no shell, no process started), over the pinned connection.

Paramiko opens only the channel types it knows (session, direct-tcpip, forwarded-tcpip, x11);
this one differs only in the fields of its CHANNEL_OPEN message (RFC 4254 section 5.1, and
OpenSSH's PROTOCOL section 2.4: the socket path, a reserved string, a reserved uint32). So it
is opened as paramiko opens the others, with those fields; the channel is then a plain paramiko
Channel. paramiko's internals used here have been the same since 2.x (pinned by
tests/ssh/test_streamlocal.py against the real sshd).
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import paramiko
from paramiko.common import cMSG_CHANNEL_OPEN

KIND = "direct-streamlocal@openssh.com"


def open_streamlocal(transport: paramiko.Transport, path: str, *, timeout: float) -> paramiko.Channel:
    """Connect to the Unix socket `path` of the far side. Raises paramiko.ChannelException (the
    far side refused: no such socket, not allowed) or paramiko.SSHException (link or timeout)."""
    t = cast(Any, transport)  # the private parts paramiko's own open_channel uses
    if not transport.is_active():
        raise paramiko.SSHException("SSH session not active")
    with t.lock:
        window_size = t._sanitize_window_size(None)
        max_packet_size = t._sanitize_packet_size(None)
        chanid = t._next_channel()
        message = paramiko.Message()
        message.add_byte(cMSG_CHANNEL_OPEN)
        message.add_string(KIND)
        message.add_int(chanid)
        message.add_int(window_size)
        message.add_int(max_packet_size)
        message.add_string(path)
        message.add_string("")  # reserved
        message.add_int(0)  # reserved
        channel = paramiko.Channel(chanid)
        t._channels.put(chanid, channel)
        event = t.channel_events[chanid] = threading.Event()
        t.channels_seen[chanid] = True
        cast(Any, channel)._set_transport(transport)
        cast(Any, channel)._set_window(window_size, max_packet_size)
    t._send_user_message(message)
    deadline = time.monotonic() + timeout
    while not event.wait(0.1):
        if not transport.is_active():
            raise transport.get_exception() or paramiko.SSHException("the SSH link dropped")
        if time.monotonic() > deadline:
            raise paramiko.SSHException(f"no answer to opening {path} within {timeout:g}s")
    opened = t._channels.get(chanid)
    if opened is None:
        # paramiko stored the refusal (a ChannelException with sshd's reason) for this channel.
        raise transport.get_exception() or paramiko.ChannelException(2, "connect failed")
    return cast(paramiko.Channel, opened)
