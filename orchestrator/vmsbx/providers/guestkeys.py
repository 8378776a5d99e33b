"""The key material vmsbx makes for a VM of any provider, and the record of which provider made it.

Every provider's VM directory holds the same things as the qemu provider's: `keys/` with the
guest's SSH host key and vmsbx's client key (both generated here, never by the guest), and
`known_hosts` pinning that host key under the alias `vmsbx-<vm>` before the first connection.
How the host key reaches the guest is the provider's business (Lima provision script,
cloud-init `ssh_keys`, a setup script through wsl.exe).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.sshkeys import generate_keypair, write_known_hosts

HOST_KEY = "ssh_host_ed25519_key"
CLIENT_KEY = "client_ed25519"


class VMKeys(BaseModel):
    """The public halves and the host private key a provider hands to its guest."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host_private: str = Field(description="OpenSSH private host key (PEM text); the guest's own.")
    host_public: str = Field(description="`ssh-ed25519 AAAA… comment` line of the host key.")
    client_public: str = Field(description="vmsbx's client public key, for root's authorized_keys.")


def host_key_alias(vm: str) -> str:
    return f"vmsbx-{vm}"


def create_vm_keys(directory: Path, vm: str) -> VMKeys:
    """Generate a fresh host key and client key in `directory/keys` and pin the host key."""
    keys = directory / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    host_public = generate_keypair(keys / HOST_KEY, f"vmsbx-{vm}-host")
    generate_keypair(keys / CLIENT_KEY, f"vmsbx-{vm}-client")
    write_known_hosts(directory / "known_hosts", host_key_alias(vm), host_public)
    return load_vm_keys(directory)


def load_vm_keys(directory: Path) -> VMKeys:
    keys = directory / "keys"
    return VMKeys(
        host_private=(keys / HOST_KEY).read_text(),
        host_public=(keys / f"{HOST_KEY}.pub").read_text().strip(),
        client_public=(keys / f"{CLIENT_KEY}.pub").read_text().strip(),
    )


def client_key_file(directory: Path) -> Path:
    return directory / "keys" / CLIENT_KEY


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
