"""Render the Lima instance file vmsbx creates instances from (pure).

`vm-templates/lima/vmsbx.yaml` holds the static hardening; this appends what differs per VM:
the guest image (vmsbx's own Debian build, booted with its kernel and initrd, each pinned by
sha256), the size, and one `mode: system` provision entry carrying the pinned host key and
vmsbx's client key. Appended values are JSON, which YAML reads as-is, so vmsbx needs no YAML
library and no value can break out of its field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The same root device and serial console as the qemu provider's direct kernel boot; hvc0 is
# the console under Apple's Virtualization.framework (Lima's vz driver), ttyS0 under QEMU.
KERNEL_CMDLINE = "root=/dev/vda rw console=hvc0 console=ttyS0 panic=-1"

_APPENDED = ("arch:", "images:", "cpus:", "memory:", "disk:", "provision:")


class LimaImage(BaseModel):
    """vmsbx's Lima guest image on the host: files and their sha256 (Lima checks them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    arch: Literal["x86_64", "aarch64"]
    disk: Path = Field(description="The root filesystem image (qcow2, no partition table).")
    disk_sha256: str
    kernel: Path
    kernel_sha256: str
    initrd: Path
    initrd_sha256: str


def render_images(image: LimaImage) -> list[dict[str, object]]:
    """The `images:` list: one entry, booted directly with its own kernel and initrd."""

    def file(path: Path, digest: str) -> dict[str, object]:
        return {"location": str(path), "arch": image.arch, "digest": f"sha256:{digest}"}

    return [
        {
            **file(image.disk, image.disk_sha256),
            "kernel": {**file(image.kernel, image.kernel_sha256), "cmdline": KERNEL_CMDLINE},
            "initrd": file(image.initrd, image.initrd_sha256),
        }
    ]


def render_lima_yaml(
    template: str,
    *,
    image: LimaImage,
    cpus: int,
    memory_bytes: int,
    disk_bytes: int,
    setup_script: str,
) -> str:
    for key in _APPENDED:
        if any(line.startswith(key) for line in template.splitlines()):
            raise ValueError(f"the Lima template must not set {key[:-1]!r}: vmsbx appends it")
    gib = 1024**3
    extra = {
        # Set, not left to Lima: its default is the host's arch, and an image of another arch
        # would then not be found (an x86_64 image runs emulated on an arm64 Mac).
        "arch": image.arch,
        "images": render_images(image),
        "cpus": cpus,
        "memory": f"{memory_bytes / gib:g}GiB",
        "disk": f"{disk_bytes / gib:g}GiB",
        "provision": [{"mode": "system", "script": setup_script}],
    }
    lines = [f"{key}: {json.dumps(value)}" for key, value in extra.items()]
    return template.rstrip("\n") + "\n\n# Added by vmsbx for this VM.\n" + "\n".join(lines) + "\n"
