"""SSH to guests with a pinned host key: keys, one connection type, one wait-for-boot policy.

Importing this package loads paramiko; the CLI imports it only in verbs that talk to a guest.
"""

from __future__ import annotations

from vmsbx.sshkeys import (
    fingerprint,
    generate_keypair,
    public_key_line,
    read_pinned_key,
    read_pinned_keys,
    write_known_hosts,
)
from vmsbx.transport.ssh import (
    CommandResult,
    Connection,
    RemoteForward,
    SSHAuthFailed,
    SSHUnreachable,
)
from vmsbx.transport.wait import SERIAL_TAIL_LINES, wait_for_ssh

__all__ = [
    "SERIAL_TAIL_LINES",
    "CommandResult",
    "Connection",
    "RemoteForward",
    "SSHAuthFailed",
    "SSHUnreachable",
    "fingerprint",
    "generate_keypair",
    "public_key_line",
    "read_pinned_key",
    "read_pinned_keys",
    "wait_for_ssh",
    "write_known_hosts",
]
