"""The systemd-mode sandbox renderer, pinned by golden files, and the walls it must keep.

Regenerate after an intended change with VMSBX_TEST_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from goldens import check_golden

from vmsbx.config.models import SandboxSettings
from vmsbx.sandbox.layout import RunLayout, is_run_id, new_run_id
from vmsbx.sandbox.systemd import render_systemd_run_argv, render_unit_file, render_unit_properties

LAYOUT = RunLayout(run_id="0123456789ab")
GiB = 1 << 30


def props(policy: SandboxSettings | None = None) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for prop in render_unit_properties(policy or SandboxSettings(), LAYOUT):
        key, _, value = prop.partition("=")
        table.setdefault(key, []).append(value)
    return table


def test_systemd_run_argv_matchescheck_golden() -> None:
    argv = render_systemd_run_argv(SandboxSettings(), LAYOUT)
    check_golden("systemd_run_default.json", json.dumps(argv, indent=2) + "\n")


def test_unit_file_matchescheck_golden() -> None:
    check_golden("systemd_unit_default.service", render_unit_file(SandboxSettings(), LAYOUT))


def test_limits_follow_the_policy() -> None:
    policy = SandboxSettings(
        memory_max=2 * GiB, cpus=1.5, tasks_max=64, timeout=90.5, open_files=4096, tmp_size=GiB
    )
    table = props(policy)
    assert table["MemoryMax"] == [str(2 * GiB)]
    assert "MemoryHigh" not in table  # a throttle without swap stalls a run; MemoryMax= kills it
    assert table["MemorySwapMax"] == ["0"]
    assert table["CPUQuota"] == ["150%"]
    assert table["TasksMax"] == ["64"]
    assert table["RuntimeMaxSec"] == ["91s"]
    assert table["LimitNOFILE"] == ["4096"]


def test_the_walls_are_all_there() -> None:
    table = props()
    must = {
        "DynamicUser": "yes",
        "PrivateUsers": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "PrivateNetwork": "yes",
        "PrivateIPC": "yes",
        "PrivateMounts": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "IPAddressDeny": "any",
        "DevicePolicy": "closed",
        "KeyringMode": "private",
        "SystemCallArchitectures": "native",
        "SystemCallErrorNumber": "EPERM",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "KillMode": "control-group",
    }
    for key, value in must.items():
        assert table.get(key) == [value], key
    assert table["SystemCallFilter"] == [
        "@system-service",
        "~@privileged @resources",
        "~io_uring_setup io_uring_enter io_uring_register keyctl add_key request_key",
    ]
    assert "/run/dbus/system_bus_socket" in table["InaccessiblePaths"][0]
    # No secrets or user-chosen text in unit properties: the environment travels in the spec.
    assert "Environment" not in table
    assert "SetCredential" not in table


def test_journal_keeps_every_line() -> None:
    table = props()
    assert table["LogRateLimitIntervalSec"] == ["1s"]
    assert int(table["LogRateLimitBurst"][0]) >= 1_000_000


def test_writable_places_are_only_the_capped_ones() -> None:
    table = props()
    assert table["StateDirectory"] == [LAYOUT.state_name]
    assert table["BindPaths"] == [f"{LAYOUT.tmp_dir}:/tmp {LAYOUT.tmp_dir}:/var/tmp"]
    assert "ReadWritePaths" not in table
    # RuntimeDirectory/LogsDirectory would let a run fill /run or the guest disk.
    assert "RuntimeDirectory" not in table
    assert "LogsDirectory" not in table


def test_the_command_is_not_in_the_unit() -> None:
    argv = render_systemd_run_argv(SandboxSettings(), LAYOUT)
    separator = argv.index("--")
    holder = ["/usr/bin/python3", "-S", "/usr/local/lib/vmsbx/holder.py", LAYOUT.run_id]
    assert argv[separator + 1 :] == holder
    assert f"--unit={LAYOUT.unit}" in argv


def test_memory_deny_write_execute_stays_off_for_node() -> None:
    assert props()["MemoryDenyWriteExecute"] == ["no"]


def test_run_ids() -> None:
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(is_run_id(i) for i in ids)
    for bad in ("", "../x", "ABCDEF123456", "0123456789abc", "0123456789a/"):
        assert not is_run_id(bad)
    with pytest.raises(ValueError):
        RunLayout(run_id="../../etc")


def test_an_old_systemd_is_refused_by_property_name() -> None:
    from vmsbx.sandbox.systemd import unsupported_properties

    properties = render_unit_properties(SandboxSettings(), LAYOUT)
    assert unsupported_properties(properties, 252) == []
    assert unsupported_properties(properties, 257) == []
    missing = unsupported_properties(properties, 246)
    assert "ProtectProc (systemd 247)" in missing
    assert "PrivateIPC (systemd 248)" in missing
    assert "DynamicUser (systemd 232)" not in missing
    assert len(missing) == len(set(missing))


DENIED = {"io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key"}


def test_io_uring_and_the_keyrings_are_denied_in_both_units() -> None:
    """After the mode's own filter lines: a `~` line then narrows systemd mode's allow list
    and extends the nsjail unit's deny list (systemd.exec(5))."""
    from vmsbx.sandbox.nsjail import render_nsjail_unit_properties

    for properties in (
        render_unit_properties(SandboxSettings(), LAYOUT),
        render_nsjail_unit_properties(SandboxSettings(mode="nsjail"), LAYOUT),
    ):
        filters = [p.partition("=")[2] for p in properties if p.startswith("SystemCallFilter=")]
        assert filters[-1].startswith("~")
        assert set(filters[-1][1:].split()) == DENIED
        assert not any("@aio" in f or "@keyring" in f for f in filters[:-1] if f.startswith("~"))


def test_the_holder_and_verify_try_every_denied_call_by_its_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session holder refuses to run when a denied call reaches the kernel; it and the
    verify attempts must know the same calls, with the kernel's numbers per architecture."""
    import importlib.util
    import sys

    from vmsbx import contract
    from vmsbx.sandbox.systemd import DENIED_SYSCALLS

    root = Path(__file__).resolve().parents[2] / "provision"
    # The holder imports the contract as the guest has it: a flat module beside it.
    monkeypatch.setitem(sys.modules, "contract", contract)
    modules = {}
    for name, path in (
        ("holder", root / "guest" / "session_holder.py"),
        ("attempts", root / "verify" / "attempts.py"),
    ):
        spec = importlib.util.spec_from_file_location(f"vmsbx_test_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[name] = module
    holder_table = modules["holder"].DENIED_SYSCALLS
    assert set(holder_table) == set(DENIED_SYSCALLS) == DENIED
    for name, (_args, numbers) in holder_table.items():
        assert set(numbers) == {"x86_64", "aarch64"}
        for arch, number in numbers.items():
            assert modules["attempts"].SYSCALLS[arch][name] == number, (name, arch)
    # The kernel's tables (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h).
    assert holder_table["keyctl"][1] == {"x86_64": 250, "aarch64": 219}
    assert holder_table["io_uring_setup"][1] == {"x86_64": 425, "aarch64": 425}


def test_io_caps_follow_the_policy_on_the_workspace_and_root_devices() -> None:
    policy = SandboxSettings(io_read_bps=GiB, io_write_bps=2 << 20, io_read_iops=None, io_write_iops=100)
    table = props(policy)
    devices = [LAYOUT.workspace_mount, "/"]
    assert table["IOReadBandwidthMax"] == [f"{d} {GiB}" for d in devices]
    # Bytes, never "2M": systemd reads a suffix here as a power of 1000.
    assert table["IOWriteBandwidthMax"] == [f"{d} {2 << 20}" for d in devices]
    assert "IOReadIOPSMax" not in table  # "max": no cap
    assert table["IOWriteIOPSMax"] == [f"{d} 100" for d in devices]
    check = [c for c in table["ExecStartPre"] if "io.max" in c]
    assert len(check) == 1
    assert f"/sys/fs/cgroup/system.slice/{LAYOUT.unit}/io.max" in check[0]
    assert "-ge 2 ]" in check[0] and "exit 1" in check[0]
    # The check runs before the run's first process, as root (+), in the same one shell as
    # the stamp after it (each ExecStartPre= is a process start PID 1 waits for).
    assert table["ExecStartPre"] == check
    assert check[0].startswith("+/bin/sh -c ")
    assert check[0].index("exit 1") < check[0].index(LAYOUT.started_stamp)


def test_no_io_caps_and_no_check_when_every_cap_is_max() -> None:
    table = props(
        SandboxSettings(io_read_bps="max", io_write_bps="max", io_read_iops="max", io_write_iops="max")
    )
    assert not [key for key in table if key.startswith("IO")]
    assert not [c for c in table["ExecStartPre"] if "io.max" in c]


def test_the_nsjail_unit_caps_the_same_devices() -> None:
    from vmsbx.sandbox.nsjail import render_nsjail_unit_properties

    policy = SandboxSettings(mode="nsjail", io_write_bps=2 << 20)
    nsjail_io = [p for p in render_nsjail_unit_properties(policy, LAYOUT) if p.startswith("IO")]
    assert nsjail_io == [p for p in render_unit_properties(policy, LAYOUT) if p.startswith("IO")]
    assert f"IOWriteBandwidthMax={LAYOUT.workspace_mount} {2 << 20}" in nsjail_io
