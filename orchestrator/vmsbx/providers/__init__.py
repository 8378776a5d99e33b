"""Provider selection. Every provider answers the same `Provider` interface (see base.py)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from vmsbx.errors import UsageError
from vmsbx.paths import vm_dir

if TYPE_CHECKING:
    from vmsbx.config.models import VMSettings
    from vmsbx.providers.base import Provider
    from vmsbx.providers.image import Progress

# Lima, Multipass, WSL2 and SSH join this table as they land; until then naming them is an error
# that says so, rather than a silent fallback to another provider.
AVAILABLE = ("qemu",)
PLANNED = ("lima", "multipass", "wsl2", "ssh")


def platform_default() -> str:
    """The provider `auto` means on this host."""
    if sys.platform.startswith("linux"):
        return "qemu"
    if sys.platform == "darwin":
        return "lima"
    return "wsl2"


def resolve_name(configured: str) -> str:
    name = platform_default() if configured == "auto" else configured
    if name in PLANNED:
        raise UsageError(
            f"the {name} provider is not available in this version of vmsbx",
            hint=f"use one of: {', '.join(AVAILABLE)} (vm.provider in your user config, or --provider)",
        )
    if name not in AVAILABLE:
        raise UsageError(f"unknown provider {name!r}", hint=f"choose one of: {', '.join(AVAILABLE)}")
    return name


def existing_provider_name(vm: str) -> str | None:
    """The provider an existing VM was created with (its vm.json says), or None if absent."""
    record = vm_dir(vm) / "vm.json"
    if not record.is_file():
        return None
    name = json.loads(record.read_text()).get("provider")
    return str(name) if name else None


def get_provider(name: str, settings: VMSettings, *, progress: Progress | None = None) -> Provider:
    resolved = resolve_name(name)
    if resolved == "qemu":
        from vmsbx.providers.qemu import QemuProvider

        return QemuProvider(settings, progress=progress)
    raise UsageError(f"unknown provider {name!r}")  # pragma: no cover - resolve_name guards
