"""Provider selection. Every provider answers the same `Provider` interface (see base.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from vmsbx.errors import UsageError
from vmsbx.paths import vm_dir

if TYPE_CHECKING:
    from vmsbx.config.models import VMSettings
    from vmsbx.providers.base import Provider
    from vmsbx.providers.image import Progress

AVAILABLE = ("qemu", "lima", "multipass", "wsl2", "ssh")
PLANNED: tuple[str, ...] = ()

# What `auto` tries, in order, per host platform: the first whose tools are usable wins.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "linux": ("qemu", "lima", "multipass"),
    "darwin": ("lima", "multipass"),
    "win32": ("wsl2", "multipass"),
}


def platform_key(platform: str = sys.platform) -> str:
    if platform.startswith("linux"):
        return "linux"
    return platform if platform in AUTO_ORDER else "linux"


def platform_default(platform: str = sys.platform) -> str:
    """The provider `auto` prefers on this host (before checking what is installed)."""
    return AUTO_ORDER[platform_key(platform)][0]


def choose_auto(order: tuple[str, ...], usable: Callable[[str], bool]) -> str:
    """The first provider of `order` that is usable; the first of all when none is, so that the
    error the user sees names the platform default's install command."""
    return next((name for name in order if usable(name)), order[0])


def resolve_name(configured: str, settings: VMSettings | None = None) -> str:
    if configured == "auto":
        from vmsbx.config.models import VMSettings

        base = settings or VMSettings()
        order = AUTO_ORDER[platform_key()]
        return choose_auto(order, lambda name: get_provider(name, base).probe().usable)
    if configured not in AVAILABLE:
        raise UsageError(f"unknown provider {configured!r}", hint=f"choose one of: {', '.join(AVAILABLE)}")
    return configured


def existing_provider_name(vm: str) -> str | None:
    """The provider an existing VM was created with (its vm.json says), or None if absent."""
    record = vm_dir(vm) / "vm.json"
    if not record.is_file():
        return None
    name = json.loads(record.read_text()).get("provider")
    return str(name) if name else None


def get_provider(name: str, settings: VMSettings, *, progress: Progress | None = None) -> Provider:
    if name == "qemu":
        from vmsbx.providers.qemu import QemuProvider

        return QemuProvider(settings, progress=progress)
    if name == "lima":
        from vmsbx.providers.lima import LimaProvider

        return LimaProvider(settings, progress=progress)
    if name == "multipass":
        from vmsbx.providers.multipass import MultipassProvider

        return MultipassProvider(settings, progress=progress)
    if name == "wsl2":
        from vmsbx.providers.wsl2 import Wsl2Provider

        return Wsl2Provider(settings, progress=progress)
    if name == "ssh":
        from vmsbx.providers.ssh import SSHHostProvider

        return SSHHostProvider(settings, progress=progress)
    raise UsageError(f"unknown provider {name!r}", hint=f"choose one of: {', '.join(AVAILABLE)}")
