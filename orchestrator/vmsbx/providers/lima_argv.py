"""argv of every `limactl` call the lima provider makes (pure; pinned by golden files).

Creation is always the explicit `create --name=N FILE`: `limactl start N` on a missing instance
would silently create one from Lima's default template, which mounts the home folder.
"""

from __future__ import annotations

from pathlib import Path

LIMACTL = "limactl"


def instance_name(vm: str) -> str:
    """The Lima instance behind vmsbx VM `vm` (vmsbx names are valid Lima names)."""
    return f"vmsbx-{vm}"


def render_version_argv() -> list[str]:
    return [LIMACTL, "--version"]


def render_list_argv(instance: str) -> list[str]:
    return [LIMACTL, "list", "--json", instance]


def render_create_argv(instance: str, template: Path) -> list[str]:
    return [LIMACTL, "--tty=false", "create", f"--name={instance}", str(template)]


def render_start_argv(instance: str, timeout_seconds: int) -> list[str]:
    return [LIMACTL, "--tty=false", "start", f"--timeout={timeout_seconds}s", instance]


def render_stop_argv(instance: str, *, force: bool) -> list[str]:
    return [LIMACTL, "stop", *(["-f"] if force else []), instance]


def render_delete_argv(instance: str) -> list[str]:
    return [LIMACTL, "delete", "-f", instance]
