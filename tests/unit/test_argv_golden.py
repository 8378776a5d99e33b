"""The pure argv builders, pinned by golden files (STYLE.md habit 5), and their security bits.

Each builder's output is compared with tests/unit/golden/<case>.json. After an intended change,
regenerate them with

    VMSBX_TEST_UPDATE_GOLDEN=1 pytest tests/unit/test_argv_golden.py

and review the diff of the JSON files like any other change. The explicit checks below the
goldens hold whatever the goldens say: a regenerated golden cannot quietly drop a wall.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from vmsbx.paths import data_dir
from vmsbx.providers.image import (
    load_recipe,
    render_convert_argv,
    render_mkfs_argv,
    render_mmdebstrap_argv,
    templates_dir,
)
from vmsbx.providers.qemu_argv import (
    SANDBOX_OPTION,
    Accel,
    FwCfgItem,
    GuestNetwork,
    QemuLaunch,
    render_accel_probe_argv,
    render_overlay_argv,
    render_qemu_argv,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE = os.environ.get("VMSBX_TEST_UPDATE_GOLDEN") == "1"
# Stands for the machine-specific folder holding vm-templates/ (the checkout or the wheel's _data).
DATA_PLACEHOLDER = "<data>"

VM_DIR = Path("/state/vmsbx/vms/default")
IMAGE_DIR = Path("/cache/vmsbx/images/bookworm-0123456789abcdef/20250101T000000Z")


def assert_matches_golden(name: str, argv: list[str]) -> None:
    """Compare `argv` with golden/<name>.json, or (re)write that file when updating."""
    path = GOLDEN_DIR / f"{name}.json"
    text = json.dumps(argv, indent=2, ensure_ascii=False) + "\n"
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.is_file():
        pytest.fail(f"no golden file {path}; create it with VMSBX_TEST_UPDATE_GOLDEN=1", pytrace=False)
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert argv == expected, (
        f"argv differs from {path}; if intended, regenerate with VMSBX_TEST_UPDATE_GOLDEN=1"
    )


def launch(*, accel: Accel, network: GuestNetwork, fw_cfg: bool = True, vm_dir: Path = VM_DIR) -> QemuLaunch:
    items = (
        (
            FwCfgItem(name="ssh_host_ed25519_key", path=vm_dir / "keys" / "ssh_host_ed25519_key"),
            FwCfgItem(name="ssh_host_ed25519_key.pub", path=vm_dir / "keys" / "ssh_host_ed25519_key.pub"),
            FwCfgItem(name="authorized_keys", path=vm_dir / "authorized_keys"),
        )
        if fw_cfg
        else ()
    )
    return QemuLaunch(
        accel=accel,
        cpus=2,
        memory_mib=4096,
        kernel=IMAGE_DIR / "vmlinuz",
        initrd=IMAGE_DIR / "initrd",
        disk=vm_dir / "disk.qcow2",
        ssh_port=40022,
        network=network,
        qmp_socket=vm_dir / "qmp.sock",
        serial_log=vm_dir / "serial.log",
        pid_file=vm_dir / "qemu.pid",
        fw_cfg=items,
    )


def option_values(argv: list[str], option: str) -> list[str]:
    """Every value given to `option` (e.g. all -netdev arguments)."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == option]


def single(argv: list[str], option: str) -> str:
    values = option_values(argv, option)
    assert len(values) == 1, f"expected exactly one {option}, got {values}"
    return values[0]


def normalise_data_path(argv: list[str]) -> list[str]:
    """Replace the machine-specific location of the shipped templates with <data>."""
    hook = templates_dir() / "customize.sh"
    placeholder_hook = f"{DATA_PLACEHOLDER}/{hook.relative_to(data_dir()).as_posix()}"
    return [
        arg.replace(shlex.quote(str(hook)), placeholder_hook).replace(str(data_dir()), DATA_PLACEHOLDER)
        for arg in argv
    ]


# --- goldens -------------------------------------------------------------------------------

QEMU_CASES = [
    ("qemu_restricted_kvm", "kvm", "restricted"),
    ("qemu_restricted_tcg", "tcg", "restricted"),
    ("qemu_nat_kvm", "kvm", "nat"),
    ("qemu_nat_tcg", "tcg", "nat"),
]


@pytest.mark.parametrize(("golden", "accel", "network"), QEMU_CASES, ids=[c[0] for c in QEMU_CASES])
def test_qemu_argv_golden(golden: str, accel: Accel, network: GuestNetwork) -> None:
    assert_matches_golden(golden, render_qemu_argv(launch(accel=accel, network=network)))


def test_qemu_argv_without_fw_cfg_golden() -> None:
    argv = render_qemu_argv(launch(accel="tcg", network="restricted", fw_cfg=False))
    assert "-fw_cfg" not in argv
    assert_matches_golden("qemu_restricted_tcg_no_fw_cfg", argv)


def test_overlay_argv_golden() -> None:
    base, overlay = IMAGE_DIR / "base.qcow2", VM_DIR / "disk.qcow2"
    assert_matches_golden("overlay_sized", render_overlay_argv(base, overlay, size="20480M"))
    assert_matches_golden("overlay_unsized", render_overlay_argv(base, overlay))


def test_accel_probe_argv_golden() -> None:
    argv = render_accel_probe_argv("qemu-system-x86_64", IMAGE_DIR / "vmlinuz")
    assert_matches_golden("accel_probe", argv)


def test_mmdebstrap_argv_golden() -> None:
    argv = render_mmdebstrap_argv(load_recipe("bookworm"), Path("/cache/build/rootfs"))
    assert_matches_golden("mmdebstrap_bookworm", normalise_data_path(argv))


def test_mkfs_argv_golden() -> None:
    argv = render_mkfs_argv(Path("/cache/build/rootfs"), Path("/cache/build/disk.raw"), "8G")
    assert_matches_golden("mkfs", argv)


def test_convert_argv_golden() -> None:
    argv = render_convert_argv(Path("/cache/build/disk.raw"), Path("/cache/build/base.qcow2"))
    assert_matches_golden("convert", argv)


def test_goldens_have_no_machine_specific_paths() -> None:
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        assert str(data_dir()) not in text, f"{path} holds this machine's checkout path"


# --- what must hold whatever the goldens say ----------------------------------------------

ALL_LAUNCHES = [
    pytest.param(accel, network, id=f"{network}-{accel}")
    for accel in ("kvm", "tcg")
    for network in ("restricted", "nat")
]


def test_restricted_network_sets_restrict_on() -> None:
    for accel in ("kvm", "tcg"):
        netdev = single(render_qemu_argv(launch(accel=accel, network="restricted")), "-netdev")
        assert netdev.startswith("user,")
        assert "restrict=on" in netdev.split(",")


def test_nat_network_is_not_restricted() -> None:
    for accel in ("kvm", "tcg"):
        netdev = single(render_qemu_argv(launch(accel=accel, network="nat")), "-netdev")
        assert netdev.startswith("user,")
        assert "restrict" not in netdev


@pytest.mark.parametrize(("accel", "network"), ALL_LAUNCHES)
def test_ssh_is_forwarded_from_loopback_only(accel: Accel, network: GuestNetwork) -> None:
    argv = render_qemu_argv(launch(accel=accel, network=network))
    netdev = single(argv, "-netdev")
    forwards = [part for part in netdev.split(",") if part.startswith("hostfwd=")]
    assert forwards == ["hostfwd=tcp:127.0.0.1:40022-:22"]
    assert "guestfwd" not in netdev
    assert all("0.0.0.0" not in arg for arg in argv)


@pytest.mark.parametrize(("accel", "network"), ALL_LAUNCHES)
def test_qmp_is_a_unix_socket_never_tcp(accel: Accel, network: GuestNetwork) -> None:
    argv = render_qemu_argv(launch(accel=accel, network=network))
    assert single(argv, "-qmp") == f"unix:{VM_DIR / 'qmp.sock'},server=on,wait=off"
    for option in ("-qmp", "-monitor", "-chardev", "-serial", "-gdb"):
        for value in option_values(argv, option):
            assert not value.startswith(("tcp:", "telnet:", "udp:")), f"{option} {value}"
    for remote_display in ("-vnc", "-spice", "-gdb", "-s", "-incoming"):
        assert remote_display not in argv


@pytest.mark.parametrize(("accel", "network"), ALL_LAUNCHES)
def test_qemu_runs_confined_and_without_defaults(accel: Accel, network: GuestNetwork) -> None:
    argv = render_qemu_argv(launch(accel=accel, network=network))
    sandbox = single(argv, "-sandbox")
    assert sandbox == SANDBOX_OPTION
    parts = sandbox.split(",")
    assert parts[0] == "on"
    for rule in ("spawn=deny", "elevateprivileges=deny", "obsolete=deny", "resourcecontrol=deny"):
        assert rule in parts
    assert "-nodefaults" in argv
    assert "-no-user-config" in argv
    assert single(argv, "-display") == "none"


@pytest.mark.parametrize(("accel", "network"), ALL_LAUNCHES)
def test_no_host_folder_is_shared(accel: Accel, network: GuestNetwork) -> None:
    argv = render_qemu_argv(launch(accel=accel, network=network))
    for option in ("-virtfs", "-fsdev", "-hda", "-hdb", "-cdrom", "-usb"):
        assert option not in argv
    joined = " ".join(argv)
    for marker in ("smb=", "virtio-9p", "vhost-user-fs", "tftp=", "bootfile="):
        assert marker not in joined
    # The only drive is the VM's own overlay.
    assert option_values(argv, "-drive") == [
        f"file={VM_DIR / 'disk.qcow2'},if=virtio,format=qcow2,discard=unmap"
    ]


def test_tcg_uses_multithreaded_tcg_and_cpu_max() -> None:
    for network in ("restricted", "nat"):
        argv = render_qemu_argv(launch(accel="tcg", network=network))
        assert single(argv, "-accel") == "tcg,thread=multi"
        assert single(argv, "-cpu") == "max"
        assert "kvm" not in " ".join(argv)


def test_kvm_uses_kvm_and_cpu_host() -> None:
    for network in ("restricted", "nat"):
        argv = render_qemu_argv(launch(accel="kvm", network=network))
        assert single(argv, "-accel") == "kvm"
        assert single(argv, "-cpu") == "host"


def test_fw_cfg_items_are_named_under_opt_vmsbx() -> None:
    argv = render_qemu_argv(launch(accel="tcg", network="restricted"))
    assert option_values(argv, "-fw_cfg") == [
        f"name=opt/vmsbx/ssh_host_ed25519_key,file={VM_DIR / 'keys' / 'ssh_host_ed25519_key'}",
        f"name=opt/vmsbx/ssh_host_ed25519_key.pub,file={VM_DIR / 'keys' / 'ssh_host_ed25519_key.pub'}",
        f"name=opt/vmsbx/authorized_keys,file={VM_DIR / 'authorized_keys'}",
    ]


def test_sandbox_comes_last_after_fw_cfg() -> None:
    argv = render_qemu_argv(launch(accel="kvm", network="restricted"))
    assert argv[-2:] == ["-sandbox", SANDBOX_OPTION]


def test_accel_probe_never_touches_disk_or_network() -> None:
    argv = render_accel_probe_argv("qemu-system-x86_64", IMAGE_DIR / "vmlinuz")
    assert "-nodefaults" in argv
    for option in ("-drive", "-netdev", "-nic", "-net", "-qmp", "-monitor"):
        assert option not in argv


def test_mmdebstrap_hook_runs_the_shipped_customize_script_through_sh() -> None:
    argv = render_mmdebstrap_argv(load_recipe("bookworm"), Path("/cache/build/rootfs"))
    hooks = [arg for arg in argv if arg.startswith("--customize-hook=")]
    assert len(hooks) == 1
    words = shlex.split(hooks[0].removeprefix("--customize-hook="))
    assert words == ["sh", str(templates_dir() / "customize.sh"), "$1"]
    assert Path(words[1]).is_file()


def test_commas_in_paths_are_escaped_for_qemu() -> None:
    odd_dir = Path("/home/a,format=raw/vms/default")
    argv = render_qemu_argv(launch(accel="tcg", network="restricted", vm_dir=odd_dir))
    drive = single(argv, "-drive")
    assert drive.startswith("file=/home/a,,format=raw/vms/default/disk.qcow2,")
