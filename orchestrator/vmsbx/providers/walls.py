"""How loose a VM's outer wall is, read from the record vmsbx wrote when it made the VM.

The project file may choose a VM only at or below the default VM's place in `VMWall` (see the
loader); this module is the one place that order is defined.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, ValidationError

from vmsbx.paths import vm_dir

# A vm.json is a few hundred bytes; anything far larger is not one of vmsbx's records.
_MAX_RECORD_BYTES = 64 * 1024


class VMWall(enum.IntEnum):
    """A VM's outer wall, strictest first: a higher value lets a run reach more."""

    RESTRICTED_GUEST = 0
    """A throw-away guest whose only way out is vmsbx's relay (qemu, guest_network restricted)."""
    NAT_GUEST = 1
    """A throw-away guest with a routed network of its own: qemu with guest_network nat, and
    every lima, multipass and wsl2 guest (those providers cannot cut the guest off)."""
    REAL_HOST = 2
    """An existing machine the ssh provider logs into: not throw-away, with its own network,
    files and users. Also any record vmsbx cannot read: unknown counts as loosest."""

    def describe(self) -> str:
        """The wall in words, for messages."""
        return _WORDS[self]


_WORDS = {
    VMWall.RESTRICTED_GUEST: "a guest that reaches only vmsbx's relay",
    VMWall.NAT_GUEST: "a guest with its own network (NAT)",
    VMWall.REAL_HOST: "a real host reached over SSH (ssh provider)",
}

# Providers whose guests have one wall whatever the settings; qemu's depends on its record.
_PROVIDER_WALLS = {
    "lima": VMWall.NAT_GUEST,
    "multipass": VMWall.NAT_GUEST,
    "wsl2": VMWall.NAT_GUEST,
    "ssh": VMWall.REAL_HOST,
}


class _RecordedWall(BaseModel):
    """The two fields of any provider's vm.json that decide the wall (the rest are ignored)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    provider: str
    network: str | None = None


def recorded_wall(vm: str) -> VMWall | None:
    """The wall of VM `vm` as its vm.json records it; None when no such VM exists.

    A record that cannot be read or names an unknown provider or network is REAL_HOST, so that
    a broken or foreign record never counts as strict.
    """
    path = vm_dir(vm) / "vm.json"
    if not path.exists():
        return None
    try:
        with path.open("rb") as handle:
            record = _RecordedWall.model_validate_json(handle.read(_MAX_RECORD_BYTES + 1))
    except (OSError, ValidationError):
        return VMWall.REAL_HOST
    if record.provider == "qemu":
        return {"restricted": VMWall.RESTRICTED_GUEST, "nat": VMWall.NAT_GUEST}.get(
            record.network or "", VMWall.REAL_HOST
        )
    return _PROVIDER_WALLS.get(record.provider, VMWall.REAL_HOST)
