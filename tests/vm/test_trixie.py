"""The systemd-mode walls on a second guest release: Debian trixie (systemd 257), since Lima
and Multipass guests carry newer systemd than bookworm's 252. One batched probe run inside the
sandbox with the same probes as root outside it as the positive control, then the limits
(time, memory, disk, tasks)."""

from __future__ import annotations

import json

import pytest
from vmcli import Cli

pytestmark = pytest.mark.vm

VM = "trixie"
PROBES = r"""
p() { if sh -c "$2" >/dev/null 2>&1; then echo "$1=yes"; else echo "$1=no"; fi; }
p workspace_write 'echo x > probe-file && rm probe-file'
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
echo "uid=$(id -u)"
"""


def _parse(output: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.decode().splitlines() if "=" in line)


@pytest.fixture(scope="module")
def trixie(cli: Cli) -> dict[str, object]:
    summary = cli.json("up", "--name", VM, "--image", "trixie")
    assert isinstance(summary, dict)
    yield summary
    cli.run("destroy", "-y", "--name", VM, timeout=120)


def test_trixie_guest_has_newer_systemd(trixie: dict[str, object]) -> None:
    assert int(str(trixie["systemd"]).split(".")[0]) >= 257


def test_walls_hold_on_trixie_with_controls(cli: Cli, trixie: dict[str, object]) -> None:
    inside = cli.run("run", "--name", VM, "--", "bash", "-c", PROBES)
    assert inside.returncode == 0, inside.stderr
    walled = _parse(inside.stdout)
    control = _parse(cli.ok("ssh", "--name", VM, "--", "bash", "-c", PROBES).stdout)
    assert control["uid"] == "0"
    assert int(walled["uid"]) >= 61184  # a dynamic user, not root
    assert walled["workspace_write"] == "yes"
    for probe in (
        "etc_write",
        "usr_write",
        "root_list",
        "shadow_read",
        "guest_sshd",
        "many_processes",
        "user_namespace",
        "mount_tmpfs",
        "system_dbus",
    ):
        assert control[probe] == "yes", f"positive control {probe} failed outside the wall"
        assert walled[probe] == "no", f"{probe} succeeded inside the sandbox"
    runs = cli.json("runs")
    assert isinstance(runs, list)
    newest = runs[-1]
    assert newest["vm"] == VM
    assert newest["exposure"] <= 1.0
    assert newest["exit_code"] == 0
    journal = (cli.home / "runs" / newest["id"] / "journal.jsonl").read_text().splitlines()
    unit = f"vmsbx-run-{newest['id']}.service"
    assert any(json.loads(line).get("_SYSTEMD_UNIT") == unit for line in journal)


def test_limits_hold_on_trixie(cli: Cli, trixie: dict[str, object]) -> None:
    small = ("--name", VM, "--workspace-size", "64M")
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
    assert bomb.returncode != 0
    runs = cli.json("runs")
    assert isinstance(runs, list)
    newest = runs[-1]
    assert newest["resources"]["tasks_limit_hits"] > 0
    assert newest["state"] in ("exited", "failed")
    # The guest is fine afterwards.
    assert cli.ok("run", *small, "--", "echo", "alive").stdout == b"alive\n"
