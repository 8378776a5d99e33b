"""The one interface every provider implements, and the typed records it returns.

A provider turns a `VMSpec` into a running Linux guest reachable over SSH with a pinned host key.
Lima, Multipass, WSL2 and QEMU all answer the same questions in the same types, so nothing above
this layer knows which one is in use.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.sshinfo import SSHInfo


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VMState(enum.StrEnum):
    """Provider-neutral VM states; each provider maps its own words onto these."""

    ABSENT = "absent"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    BROKEN = "broken"


class ProviderFeatures(_Record):
    """What a provider can do. Capabilities are declared, never faked by raising at call time."""

    create: bool = Field(description="Can create and destroy VMs (False for an existing SSH host).")
    forced_stop: bool = Field(description="Can kill a VM that does not shut down.")
    reset: bool = Field(description="Can return a VM to a fresh copy of its base image quickly.")
    restricted_network: bool = Field(description="Can cut the guest off from every network.")


class ProbeResult(_Record):
    """Whether a provider's host tools are present, and how to install what is missing."""

    provider: str
    usable: bool
    version: str | None = None
    missing: tuple[str, ...] = Field(default=(), description="Programs or features not found.")
    install_hint: str | None = Field(default=None, description="Command that installs them.")
    notes: tuple[str, ...] = ()


class Provider(Protocol):
    """Lifecycle of one VM. Every method is safe to call again after an interruption."""

    name: str
    features: ProviderFeatures

    def probe(self) -> ProbeResult:
        """Report whether this provider's tools are installed; never raises for a missing tool."""
        ...

    def state(self, vm: str) -> VMState:
        """Return the VM's current state; ABSENT when it does not exist."""
        ...

    def create(self, vm: str) -> None:
        """Create the VM, not started. MUST be a no-op when the VM already exists."""
        ...

    def start(self, vm: str) -> None:
        """Boot the VM and return once the provider reports it started (SSH may still be coming up).
        MUST be a no-op when it is already running."""
        ...

    def stop(self, vm: str, *, force: bool = False) -> None:
        """Shut the guest down gracefully (or kill it with `force`).
        MUST be a no-op when it is stopped or absent."""
        ...

    def destroy(self, vm: str) -> None:
        """Remove the VM with its disks and keys. MUST succeed when it is already gone."""
        ...

    def ssh_info(self, vm: str) -> SSHInfo:
        """Connection details of a running VM; raises VMNotRunning otherwise."""
        ...

    def serial_log_tail(self, vm: str, lines: int = 40) -> str:
        """The last lines the guest printed on its console, for boot-failure messages ('' if none)."""
        ...


@runtime_checkable
class SupportsReset(Protocol):
    """Providers whose features say `reset=True` also offer this."""

    def reset(self, vm: str) -> None:
        """Replace the VM's disk with a fresh copy of its base image; leaves it stopped."""
        ...
