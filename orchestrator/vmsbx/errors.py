"""Typed, expected failures. Each names its remedy and maps to a stable exit code.

Tracebacks are for bugs only: the CLI catches `VmsbxError` and prints its message.
"""

from __future__ import annotations

from typing import ClassVar


class VmsbxError(Exception):
    """An expected failure whose message tells the user what to do next."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message


class ConfigError(VmsbxError):
    """Bad settings: a file, key or value that is not allowed."""

    exit_code = 2


class UsageError(VmsbxError):
    """A bad name or argument given on the command line."""

    exit_code = 2


class ToolMissing(VmsbxError):
    """A host program a provider needs is not installed."""

    exit_code = 3


class ProviderError(VmsbxError):
    """The provider's tool failed or the VM is in a state that forbids the action."""

    exit_code = 4


class VMNotFound(ProviderError):
    """The named VM does not exist."""

    exit_code = 4


class VMNotRunning(ProviderError):
    """The action needs a running VM."""

    exit_code = 4


class ImageBuildError(VmsbxError):
    """Building the base image failed."""

    exit_code = 5


class BootTimeout(VmsbxError):
    """The guest did not answer SSH in time; the message carries the serial log tail."""

    exit_code = 6


class HostKeyMismatch(VmsbxError):
    """The guest presented a host key other than the one vmsbx pinned for it."""

    exit_code = 7


class TransportError(VmsbxError):
    """The SSH connection failed or dropped."""

    exit_code = 8


class AgentError(VmsbxError):
    """The host agent could not be reached or refused a request."""

    exit_code = 9


class GuestCheckFailed(VmsbxError):
    """The guest cannot hold a wall (no systemd, no cgroup v2, …): vmsbx refuses to go on."""

    exit_code = 10


class SyncError(VmsbxError):
    """Syncing the workspace or applying the agent's changes failed (the host is unchanged)."""

    exit_code = 11
