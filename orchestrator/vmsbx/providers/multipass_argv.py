"""argv of every `multipass` call the multipass provider makes (pure; pinned by golden files).

User-data always goes through stdin (`--cloud-init -`): on Linux the snap-confined client cannot
read files in hidden folders or /tmp, where vmsbx's state would otherwise be.
"""

from __future__ import annotations

MULTIPASS = "multipass"
# Launching `primary` mounts the user's home folder into the instance: never use that name.
FORBIDDEN_NAMES = frozenset({"primary"})


def instance_name(vm: str) -> str:
    name = f"vmsbx-{vm}"
    if name in FORBIDDEN_NAMES:  # pragma: no cover - the prefix already rules it out
        raise ValueError(name)
    return name


def render_version_argv() -> list[str]:
    return [MULTIPASS, "version", "--format", "json"]


def render_info_argv(instance: str) -> list[str]:
    return [MULTIPASS, "info", "--format", "json", instance]


def render_launch_argv(
    instance: str, *, image: str, cpus: int, memory_mib: int, disk_gib: int, timeout_seconds: int
) -> list[str]:
    return [
        MULTIPASS, "launch", image,
        "--name", instance,
        "--cpus", str(cpus),
        "--memory", f"{memory_mib}M",
        "--disk", f"{disk_gib}G",
        "--cloud-init", "-",
        "--timeout", str(timeout_seconds),
    ]  # fmt: skip


def render_start_argv(instance: str, timeout_seconds: int) -> list[str]:
    return [MULTIPASS, "start", instance, "--timeout", str(timeout_seconds)]


def render_stop_argv(instance: str, *, force: bool) -> list[str]:
    return [MULTIPASS, "stop", *(["--force"] if force else []), instance]


def render_delete_argv(instance: str) -> list[str]:
    return [MULTIPASS, "delete", "--purge", instance]
