"""Read the SSH endpoint out of Lima's per-instance `ssh.config` (pure).

Only `Hostname` and `Port` (and, for the record, `User` and `IdentityFile`) are taken. The same
file says `StrictHostKeyChecking no` and `UserKnownHostsFile /dev/null`: vmsbx ignores every
other option, because it checks the guest's host key against the one it pinned itself.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict

from vmsbx.errors import ProviderError


class LimaSSHEndpoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    hostname: str
    port: int
    user: str | None = None
    identity_file: str | None = None


def parse_lima_ssh_config(text: str, host: str) -> LimaSSHEndpoint:
    """The options of the `Host <host>` block. Raises ProviderError when the endpoint is missing
    or is not a loopback address (Lima forwards SSH to the host's loopback for every driver but
    wsl2, which vmsbx does not use through Lima)."""
    values: dict[str, str] = {}
    in_block = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key.lower() == "host":
            in_block = value.strip() == host
            continue
        if in_block:
            values.setdefault(key.lower(), value.strip().strip('"'))
    hostname, port = values.get("hostname"), values.get("port", "")
    if not hostname or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ProviderError(
            f"Lima's ssh.config has no usable Hostname/Port for {host}",
            hint="`limactl stop` and `vmsbx up` again rewrite it",
        )
    try:
        loopback = ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        loopback = hostname == "localhost"
    if not loopback:
        raise ProviderError(
            f"Lima's ssh.config points {host} at {hostname}, not at this host's loopback",
            hint="vmsbx only uses Lima's forwarded SSH port on 127.0.0.1",
        )
    return LimaSSHEndpoint(
        hostname=hostname, port=int(port), user=values.get("user"), identity_file=values.get("identityfile")
    )
