"""Pure builders of the QEMU command lines vmsbx runs. Pinned by golden files in tests/unit.

Nothing here touches the world: the provider decides paths, ports and acceleration, these
functions only turn that decision into argv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Accel = Literal["kvm", "tcg"]
GuestNetwork = Literal["restricted", "nat"]

# Process-level confinement of QEMU itself (seccomp): no exec, no setuid, no obsolete syscalls,
# no scheduler/affinity games. Measured to boot the guest under TCG on these machines.
SANDBOX_OPTION = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


class FwCfgItem(BaseModel):
    """A file handed to the guest firmware config, readable in the guest under opt/vmsbx/<name>."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Item name below opt/vmsbx/.")
    path: Path = Field(description="Host file whose content the guest reads.")


class QemuLaunch(BaseModel):
    """Everything one boot of a vmsbx QEMU guest depends on."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    binary: str = Field(default="qemu-system-x86_64", description="QEMU system emulator.")
    machine: str = Field(default="q35", description="Machine type.")
    accel: Accel = Field(description="kvm when probed to boot, else tcg.")
    cpus: int = Field(ge=1, description="Virtual CPUs.")
    memory_mib: int = Field(ge=256, description="Guest RAM in MiB.")
    kernel: Path = Field(description="Kernel for direct boot.")
    initrd: Path = Field(description="Initramfs for direct boot.")
    disk: Path = Field(description="The VM's qcow2 overlay.")
    ssh_port: int = Field(ge=1, le=65535, description="Host port on 127.0.0.1 forwarded to guest :22.")
    network: GuestNetwork = Field(description="restricted: the guest reaches nothing; nat: internet.")
    qmp_socket: Path = Field(description="QMP Unix socket inside the VM's 0700 directory.")
    serial_log: Path = Field(description="File receiving the guest's serial console.")
    pid_file: Path = Field(description="File QEMU writes its pid to.")
    fw_cfg: tuple[FwCfgItem, ...] = Field(default=(), description="Per-VM secrets for first boot.")
    kernel_cmdline: str = Field(
        default="root=/dev/vda rw console=ttyS0 panic=-1",
        description="Kernel command line (direct boot).",
    )


def _opt(path: Path) -> str:
    """A path inside a QEMU option value: a literal comma must be doubled, or it starts a new option."""
    return str(path).replace(",", ",,")


def render_qemu_argv(launch: QemuLaunch) -> list[str]:
    """argv that boots the guest headless, SSH forwarded to loopback only, QEMU confined."""
    cpu = "host" if launch.accel == "kvm" else "max"
    accel = "kvm" if launch.accel == "kvm" else "tcg,thread=multi"
    netdev = f"user,id=net0,hostfwd=tcp:127.0.0.1:{launch.ssh_port}-:22"
    if launch.network == "restricted":
        # restrict=on: the guest reaches neither the host nor the outside; only hostfwd enters.
        netdev += ",restrict=on"
    argv = [
        launch.binary,
        "-name", f"vmsbx,process=vmsbx-{launch.disk.parent.name}",
        "-nodefaults",
        "-no-user-config",
        "-machine", launch.machine,
        "-accel", accel,
        "-cpu", cpu,
        "-smp", str(launch.cpus),
        "-m", str(launch.memory_mib),
        "-display", "none",
        "-kernel", _opt(launch.kernel),
        "-initrd", _opt(launch.initrd),
        "-append", launch.kernel_cmdline,
        "-drive", f"file={_opt(launch.disk)},if=virtio,format=qcow2,discard=unmap",
        "-netdev", netdev,
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{_opt(launch.serial_log)}",
        "-qmp", f"unix:{_opt(launch.qmp_socket)},server=on,wait=off",
        "-pidfile", _opt(launch.pid_file),
    ]  # fmt: skip
    for item in launch.fw_cfg:
        argv += ["-fw_cfg", f"name=opt/vmsbx/{item.name},file={_opt(item.path)}"]
    argv += ["-sandbox", SANDBOX_OPTION]
    return argv


def render_overlay_argv(base: Path, overlay: Path, *, size: str | None = None) -> list[str]:
    """argv of `qemu-img create` for a copy-on-write overlay on the (read-only) base image."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)]
    if size:
        argv.append(size)
    return argv


def render_accel_probe_argv(binary: str, kernel: Path) -> list[str]:
    """argv that boots only the kernel under KVM, printing to stdout, to see whether KVM works.

    On paravirtual KVM hosts a stock kernel prints nothing after "Probing EDD", so "Linux version"
    appearing within seconds is the signal that KVM really runs a guest.
    """
    return [
        binary,
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256",
        "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 earlyprintk=serial",
        "-serial", "stdio",
    ]  # fmt: skip


def parse_qemu_version(output: str) -> str | None:
    """The version `qemu-system-* --version` prints on its first line, with the distribution's
    package version when it gives one: "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)" ->
    "7.2.22 (Debian 1:7.2+dfsg-7)". None when the first line is not QEMU's."""
    first = output.splitlines()[0].strip() if output.strip() else ""
    marker = "QEMU emulator version "
    if not first.startswith(marker) or len(first) > 200:
        return None
    return first[len(marker) :].strip() or None
