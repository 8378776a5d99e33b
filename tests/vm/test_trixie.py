"""Both sandbox modes on a second guest release: Debian trixie (systemd 257), since Lima and
Multipass guests carry newer systemd than bookworm's 252. One guest for the module; per mode
one batched probe run inside the sandbox with the same probes as root outside it as the
positive control, then the limits (time, memory, disk, tasks). nsjail mode also shows that a
jail which cannot be built is reported as such (125 and nsjail's reason), not as the
command's exit code."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from vmcli import Cli

pytestmark = pytest.mark.vm

VM = "trixie"
MODES = ("systemd", "nsjail")
# nsjail's outer unit must allow namespaces and mounts: it is held to its own threshold.
EXPOSURE_LIMIT = {"systemd": 1.0, "nsjail": 4.0}
# The run's own user: a fresh DynamicUser (61184-65519) in systemd mode, the jail's user 1000
# (mapped to an unprivileged outside id) in nsjail mode.
RUN_UID = {"systemd": range(61184, 65520), "nsjail": range(1000, 1001)}
PROBES = r"""
p() { if sh -c "$2" >/dev/null 2>&1; then echo "$1=yes"; else echo "$1=no"; fi; }
p workspace_write 'echo x > probe-file && rm probe-file'
p python_site 'python3 -c "import sitecustomize"'
p etc_write 'touch /etc/vmsbx-probe && rm /etc/vmsbx-probe'
p usr_write 'touch /usr/vmsbx-probe && rm /usr/vmsbx-probe'
p root_list 'ls /root'
p shadow_read 'cat /etc/shadow'
p guest_sshd 'timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/22"'
p many_processes 'test "$(ls -d /proc/[0-9]* | wc -l)" -gt 20'
p user_namespace 'unshare -U true'
mnt=/run/vmsbx-probe-mnt
p mount_tmpfs "mkdir -p $mnt && mount -t tmpfs x $mnt && umount $mnt"
bus='import socket; socket.socket(socket.AF_UNIX).connect("/run/dbus/system_bus_socket")'
p system_dbus "python3 -c '$bus'"
p kernel_log 'timeout 5 head -c 1 /proc/kmsg'
p dmesg 'dmesg'
echo "uid=$(id -u)"
"""
WORKS_INSIDE = ("workspace_write", "python_site")
WALLED = (
    "etc_write",
    "usr_write",
    "root_list",
    "shadow_read",
    "guest_sshd",
    "many_processes",
    "user_namespace",
    "mount_tmpfs",
    "system_dbus",
    "kernel_log",
    "dmesg",
)


def _parse(output: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.decode().splitlines() if "=" in line)


@pytest.fixture(scope="module")
def trixie(cli: Cli) -> Iterator[dict[str, object]]:
    summary = cli.json("up", "--name", VM, "--image", "trixie")
    assert isinstance(summary, dict)
    yield summary
    cli.run("destroy", "-y", "--name", VM, timeout=120)


@pytest.fixture(scope="module")
def control(cli: Cli, trixie: dict[str, object]) -> dict[str, str]:
    """The probes as root in the guest, outside any sandbox: each must succeed there."""
    found = _parse(cli.ok("ssh", "--name", VM, "--", "bash", "-c", PROBES).stdout)
    assert found["uid"] == "0"
    for probe in (*WORKS_INSIDE, *WALLED):
        assert found[probe] == "yes", f"positive control {probe} failed outside the wall"
    return found


def _newest_run(cli: Cli) -> dict[str, object]:
    runs = cli.json("runs")
    assert isinstance(runs, list)
    newest = runs[-1]
    assert isinstance(newest, dict)
    return newest


def test_trixie_guest_has_newer_systemd(trixie: dict[str, object]) -> None:
    assert int(str(trixie["systemd"]).split(".")[0]) >= 257


@pytest.mark.parametrize("mode", MODES)
def test_walls_hold_on_trixie_with_controls(cli: Cli, control: dict[str, str], mode: str) -> None:
    inside = cli.run("run", "--name", VM, "--sandbox", mode, "--", "bash", "-c", PROBES)
    assert inside.returncode == 0, inside.stderr
    walled = _parse(inside.stdout)
    assert int(walled["uid"]) in RUN_UID[mode], walled["uid"]
    for probe in WORKS_INSIDE:
        assert walled[probe] == "yes", f"{probe} failed inside the {mode} sandbox"
    for probe in WALLED:
        assert walled[probe] == "no", f"{probe} succeeded inside the {mode} sandbox"
    newest = _newest_run(cli)
    assert newest["vm"] == VM
    assert newest["sandbox"] == mode
    assert newest["exposure"] <= EXPOSURE_LIMIT[mode]
    assert newest["exit_code"] == 0
    journal = (cli.home / "runs" / str(newest["id"]) / "journal.jsonl").read_text().splitlines()
    unit = f"vmsbx-run-{newest['id']}.service"
    assert any(json.loads(line).get("_SYSTEMD_UNIT") == unit for line in journal)


@pytest.mark.parametrize("mode", MODES)
def test_limits_hold_on_trixie(cli: Cli, trixie: dict[str, object], mode: str) -> None:
    small = ("--name", VM, "--sandbox", mode, "--workspace-size", "64M")
    timed_out = cli.run("run", *small, "--timeout", "5s", "--", "sleep", "60")
    assert timed_out.returncode == 143, timed_out.stderr
    oom = cli.run(
        "run", *small, "--memory", "128M", "--", "python3", "-c", "b = [b'x' * (10 << 20) for _ in range(40)]"
    )
    assert oom.returncode == 137, oom.stderr
    assert b"out of memory" in oom.stderr
    filled = cli.run(
        "run", *small, "--tmp-size", "16M", "--", "sh", "-c",
        "dd if=/dev/zero of=fill bs=1M count=100 2>&1 | grep -c 'No space'; "
        "dd if=/dev/zero of=/tmp/fill bs=1M count=100 2>&1 | grep -c 'No space'",
    )  # fmt: skip
    assert filled.stdout.split() == [b"1", b"1"], filled.stderr
    bomb = cli.run("run", *small, "--tasks", "48", "--timeout", "15s", "--", "bash", "-c", ":(){ :|:& };:")
    if mode == "systemd":
        assert bomb.returncode != 0
    # nsjail mode: the holder is the jail's PID 1, so once bash itself returns 0 the PID
    # namespace ends and takes the bomb with it; that 0 is the command's own (as on bookworm).
    newest = _newest_run(cli)
    assert newest["exit_code"] == bomb.returncode, bomb.stderr[-500:]
    resources = newest["resources"]
    assert isinstance(resources, dict)
    assert resources["tasks_limit_hits"] > 0
    assert newest["state"] in ("exited", "failed")
    # The guest is fine afterwards, and a command's own 255 is still the command's.
    alive = cli.run("run", *small, "--", "sh", "-c", "echo alive; exit 255")
    assert (alive.returncode, alive.stdout) == (255, b"alive\n"), alive.stderr


def test_a_jail_that_cannot_be_built_exits_125_with_nsjails_reason(
    cli: Cli, trixie: dict[str, object]
) -> None:
    # Anything mounted over part of the guest's /proc makes the kernel refuse the jail's own
    # procfs (mount_too_revealing) on trixie's kernel: what ProtectKernelLogs= did to the jail.
    cli.ok("ssh", "--name", VM, "--", "mount", "--bind", "/dev/null", "/proc/kmsg")
    try:
        refused = cli.run("run", "--name", VM, "--sandbox", "nsjail", "--", "true")
    finally:
        cli.ok("ssh", "--name", VM, "--", "umount", "/proc/kmsg")
    assert refused.returncode == 125, refused.stderr
    assert b"the sandbox failed before the command started (exit status 255)" in refused.stderr
    assert b"nsjail: Failed to mount mandatory point: '/proc'" in refused.stderr
    assert b"Operation not permitted" in refused.stderr
    newest = _newest_run(cli)
    assert (newest["state"], newest["exit_code"]) == ("failed", 125)
    # Undone, the next jail starts again.
    assert cli.ok("run", "--name", VM, "--sandbox", "nsjail", "--", "echo", "again").stdout == b"again\n"
