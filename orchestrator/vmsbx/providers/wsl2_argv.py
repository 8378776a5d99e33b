"""argv of every `wsl.exe` call the wsl2 provider makes (pure; pinned by golden files).

Commands in the distro always use `-e` (no default shell interprets them) and `--cd /`;
vmsbx sets WSL_UTF8=1 for every call, and still decodes UTF-16LE when it sees it.
"""

from __future__ import annotations

from pathlib import PurePath

WSL = "wsl.exe"
WSL_ENV = {"WSL_UTF8": "1"}


def distro_name(vm: str) -> str:
    return f"vmsbx-{vm}"


def render_version_argv() -> list[str]:
    return [WSL, "--version"]


def render_list_verbose_argv() -> list[str]:
    return [WSL, "--list", "--verbose"]


def render_import_argv(distro: str, location: PurePath | str, rootfs: PurePath | str) -> list[str]:
    return [WSL, "--import", distro, str(location), str(rootfs), "--version", "2"]


def render_exec_argv(distro: str, argv: list[str], *, user: str = "root") -> list[str]:
    return [WSL, "--distribution", distro, "--user", user, "--cd", "/", "--exec", *argv]


def render_terminate_argv(distro: str) -> list[str]:
    return [WSL, "--terminate", distro]


def render_unregister_argv(distro: str) -> list[str]:
    return [WSL, "--unregister", distro]
