"""How the qemu provider reads a VM's state from its directory, without running QEMU.

Every VM directory here is written by hand under a throw-away VMSBX_HOME, in the formats of
qemu.py (vm.json is a QemuVMRecord, runtime.json a QemuRuntime). "Running" is decided from
/proc/<pid>/cmdline holding the VM's disk path, so the pytest process itself (os.getpid()) is a
live pid that is not this VM's QEMU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vmsbx.config.models import VMSettings
from vmsbx.errors import VMNotFound, VMNotRunning
from vmsbx.paths import vm_dir
from vmsbx.providers.base import VMState
from vmsbx.providers.qemu import QemuProvider, QemuRuntime, QemuVMRecord, list_vm_names

# Above Linux's largest pid_max (2**22): no process can have it.
IMPOSSIBLE_PID = 2**22 + 1


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "vmsbx-home"
    monkeypatch.setenv("VMSBX_HOME", str(root))
    return root


@pytest.fixture
def provider(home: Path) -> QemuProvider:
    return QemuProvider(VMSettings())


def write_record(name: str) -> Path:
    directory = vm_dir(name)
    directory.mkdir(parents=True)
    record = QemuVMRecord(
        name=name,
        image="bookworm",
        image_dir=Path("/cache/vmsbx/images/bookworm-0123456789abcdef/20250101T000000Z"),
        cpus=2,
        memory_mib=4096,
        disk_size="20480M",
        accel="auto",
        network="restricted",
        created_at="2025-01-01T00:00:00+00:00",
    )
    (directory / "vm.json").write_text(record.model_dump_json(indent=2))
    return directory


def write_stopped_vm(name: str) -> Path:
    directory = write_record(name)
    (directory / "disk.qcow2").write_bytes(b"QFI\xfb")
    return directory


def write_runtime(directory: Path, pid: int) -> None:
    runtime = QemuRuntime(pid=pid, ssh_port=40022, accel="tcg", started_at="2025-01-01T00:00:00+00:00")
    (directory / "runtime.json").write_text(runtime.model_dump_json())


def test_vm_dir_lives_under_vmsbx_home(home: Path) -> None:
    assert vm_dir("default") == home / "vms" / "default"


def test_no_directory_is_absent(provider: QemuProvider) -> None:
    assert provider.state("default") is VMState.ABSENT


def test_directory_without_record_is_absent(provider: QemuProvider) -> None:
    # What an interrupted create could leave behind: no vm.json means no VM.
    directory = vm_dir("default")
    directory.mkdir(parents=True)
    (directory / "disk.qcow2").write_bytes(b"")
    assert provider.state("default") is VMState.ABSENT


def test_record_without_disk_is_broken(provider: QemuProvider) -> None:
    write_record("default")
    assert provider.state("default") is VMState.BROKEN


def test_record_and_disk_without_runtime_is_stopped(provider: QemuProvider) -> None:
    write_stopped_vm("default")
    assert provider.state("default") is VMState.STOPPED
    assert not provider.alive("default")


def test_runtime_of_a_live_pid_that_is_not_this_vms_qemu_is_stopped(provider: QemuProvider) -> None:
    directory = write_stopped_vm("default")
    write_runtime(directory, os.getpid())
    cmdline = Path(f"/proc/{os.getpid()}/cmdline").read_bytes()
    assert str(directory / "disk.qcow2").encode() not in cmdline
    assert provider.state("default") is VMState.STOPPED
    assert not provider.alive("default")


def test_runtime_of_a_dead_pid_is_stopped(provider: QemuProvider) -> None:
    directory = write_stopped_vm("default")
    write_runtime(directory, IMPOSSIBLE_PID)
    assert provider.state("default") is VMState.STOPPED


def test_unreadable_runtime_is_stopped(provider: QemuProvider) -> None:
    directory = write_stopped_vm("default")
    (directory / "runtime.json").write_text('{"pid": "not a pid"')
    assert provider.state("default") is VMState.STOPPED


def test_ssh_info_of_a_stopped_vm_raises_vm_not_running(provider: QemuProvider) -> None:
    directory = write_stopped_vm("default")
    with pytest.raises(VMNotRunning) as caught:
        provider.ssh_info("default")
    assert caught.value.exit_code == 4
    assert "vmsbx up --name default" in (caught.value.hint or "")
    write_runtime(directory, os.getpid())
    with pytest.raises(VMNotRunning):
        provider.ssh_info("default")


def test_ssh_info_of_an_absent_vm_raises_vm_not_running(provider: QemuProvider) -> None:
    with pytest.raises(VMNotRunning) as caught:
        provider.ssh_info("nothere")
    assert caught.value.exit_code == 4


def test_record_round_trips_and_absent_record_is_not_found(provider: QemuProvider) -> None:
    write_stopped_vm("work-2")
    record = provider.record("work-2")
    assert record.name == "work-2"
    assert record.network == "restricted"
    with pytest.raises(VMNotFound) as caught:
        provider.record("nothere")
    assert caught.value.exit_code == 4


def test_record_file_is_the_documented_json(provider: QemuProvider) -> None:
    directory = write_stopped_vm("default")
    data = json.loads((directory / "vm.json").read_text())
    assert data["provider"] == "qemu"
    assert set(data) == set(QemuVMRecord.model_fields)


def test_list_vm_names_lists_only_complete_vms(home: Path) -> None:
    assert list_vm_names() == []
    write_stopped_vm("beta")
    write_record("alpha")  # broken (no disk) but it has a record: still a VM to show
    (home / "vms" / "no-record").mkdir()
    (home / "vms" / ".gamma.creating-123").mkdir()
    (home / "vms" / ".gamma.creating-123" / "vm.json").write_text("{}")
    assert list_vm_names() == ["alpha", "beta"]


def test_list_vm_names_without_a_home_is_empty(home: Path) -> None:
    assert not home.exists()
    assert list_vm_names() == []


def test_stop_of_a_stopped_vm_is_a_no_op_that_clears_leftovers(provider: QemuProvider) -> None:
    directory = write_stopped_vm("default")
    write_runtime(directory, os.getpid())
    (directory / "qemu.pid").write_text(str(os.getpid()))
    provider.stop("default")
    assert not (directory / "runtime.json").exists()
    assert not (directory / "qemu.pid").exists()
    assert (directory / "disk.qcow2").is_file()
    provider.stop("default", force=True)
    assert provider.state("default") is VMState.STOPPED


def test_stop_of_an_absent_vm_is_a_no_op(provider: QemuProvider, home: Path) -> None:
    provider.stop("nothere")
    provider.stop("nothere", force=True)
    assert not (home / "vms" / "nothere").exists()


def test_destroy_removes_a_stopped_vm_and_succeeds_when_gone(provider: QemuProvider) -> None:
    directory = write_stopped_vm("default")
    write_runtime(directory, os.getpid())
    provider.destroy("default")
    assert not directory.exists()
    assert provider.state("default") is VMState.ABSENT
    provider.destroy("default")


def test_serial_log_tail_is_stripped_of_control_sequences(provider: QemuProvider) -> None:
    directory = write_stopped_vm("default")
    assert provider.serial_log_tail("default") == ""
    lines = [f"line {i}" for i in range(50)]
    (directory / "serial.log").write_bytes(
        ("\x1b]0;title\x07\x1b[2J" + "\r\n".join(lines) + "\r\n\r\n").encode()
    )
    tail = provider.serial_log_tail("default", lines=3)
    assert tail == "line 47\nline 48\nline 49"


def test_invalid_names_never_reach_the_filesystem(provider: QemuProvider) -> None:
    for name in ("../x", "Default", "", "a/b", "-x", "a" * 41):
        with pytest.raises(ValueError, match="invalid VM name"):
            provider.state(name)
