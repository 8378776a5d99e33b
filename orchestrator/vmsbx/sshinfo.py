"""How to reach a guest over SSH: the one record every provider returns and the transport takes.

It lives outside both: providers build it and never open SSH, the transport connects from it
alone, so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class SSHInfo(BaseModel):
    """How to reach a guest: everything a pinned SSH connection needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(description="Address to connect to; loopback for forwarded guests.")
    port: int = Field(ge=1, le=65535, description="TCP port of the guest's sshd as seen from the host.")
    user: str = Field(description="Login user in the guest.")
    key_file: Path = Field(description="Private client key vmsbx generated for this VM.")
    known_hosts: Path = Field(description="known_hosts file holding only this VM's pinned host key.")
    host_key_alias: str = Field(description="Name the host key is pinned under (port-independent).")
