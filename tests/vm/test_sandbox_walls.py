"""The second wall, for real: what a `vmsbx run` sandbox (a transient DynamicUser unit) forbids,
what it limits, and what it records.

Every negative probe is paired with a positive control: the same probe, run as root in the guest
outside the sandbox (`vmsbx ssh`), succeeds there. A probe that fails everywhere proves nothing.
Probes are batched (tests/vm/probes/walls.sh prints one `name=result` line each) because every
run costs seconds under TCG. Tests run in file order and share the session's VM; the hostile runs
(out of memory, full disks, a fork bomb) come last, each followed by a check that the guest is
still healthy.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmcli import Cli

from vmsbx.sandbox.workdir import run_workdir

pytestmark = pytest.mark.vm

PROBES = Path(__file__).parent / "probes"
GUEST_PROBES = "/run/vmsbx-walls"
STARTED = re.compile(rb"vmsbx: run ([0-9a-f]{12}) started")
RUN_ID = re.compile(r"[0-9a-f]{12}")
# Small workspaces start faster (mkfs); runs that do not test the workspace use one.
SMALL_WORKSPACE = ("--workspace-size", "64M")
# systemd's DynamicUser= range (systemd.exec(5)).
DYNAMIC_UIDS = range(61184, 65520)
# Both sandbox kinds must hold every wall (nsjail runs inside its own transient unit).
MODES = ("systemd", "nsjail")
# nsjail's outer unit must allow namespaces and mounts: it is held to its own threshold.
EXPOSURE_LIMIT = {"systemd": 1.0, "nsjail": 4.0}
MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished `vmsbx run` (or `attach`) as the host saw it, and the record it left."""

    id: str
    code: int
    stdout: bytes
    stderr: bytes
    seconds: float
    home: Path

    @property
    def record(self) -> dict[str, object]:
        return json.loads((self.home / "runs" / self.id / "run.json").read_text())

    @property
    def journal(self) -> list[dict[str, object]]:
        path = self.home / "runs" / self.id / "journal.jsonl"
        return [json.loads(line) for line in path.read_bytes().splitlines()]

    @property
    def results(self) -> dict[str, str]:
        return _results(self.stdout)

    def explain(self) -> str:
        return (
            f"run {self.id} exited {self.code} after {self.seconds:.1f}s\n"
            f"stdout: {self.stdout.decode(errors='replace')[-3000:]}\n"
            f"stderr: {self.stderr.decode(errors='replace')[-3000:]}"
        )


def _results(output: bytes) -> dict[str, str]:
    """`name=result` lines as a dict."""
    return dict(line.split("=", 1) for line in output.decode(errors="replace").splitlines() if "=" in line)


def _run(cli: Cli, *args: str, input: bytes = b"", timeout: float = 900) -> Run:
    """`vmsbx run ARGS` (stdin closed unless given), with its id from the start line."""
    started = time.monotonic()
    done = cli.run("run", *args, input=input, timeout=timeout)
    seconds = time.monotonic() - started
    found = STARTED.search(done.stderr)
    assert found, f"no run started: exit {done.returncode}\n{done.stderr.decode(errors='replace')}"
    return Run(found.group(1).decode(), done.returncode, done.stdout, done.stderr, seconds, cli.home)


def _root(cli: Cli, script: str, *args: str, input: bytes | None = None) -> str:
    """A shell script as root in the guest, outside any sandbox."""
    return cli.ok("ssh", "--", "sh", "-c", script, "sh", *args, input=input, timeout=300).stdout.decode()


def _project(tmp_path_factory: pytest.TempPathFactory, name: str, *probes: str) -> Path:
    project = tmp_path_factory.mktemp(name)
    for probe in probes:
        shutil.copy(PROBES / probe, project / probe)
    return project


def _guest_disk(cli: Cli) -> tuple[int, int]:
    """The guest root filesystem's free bytes, and the bytes its project mirrors' images take (-x:
    not what is in them, they are mounted)."""
    free, mirrors = _root(
        cli, "df -B1 --output=avail / | tail -n 1; du -sxB1 /var/lib/vmsbx/projects | cut -f1"
    ).split()
    return int(free), int(mirrors)


def _assert_guest_healthy(cli: Cli) -> None:
    """The guest still answers as root, and a plain run starts and finishes."""
    assert cli.run("ssh", "--", "true", timeout=120).returncode == 0
    follow = _run(cli, *SMALL_WORKSPACE, "--", "echo", "still-alive")
    assert (follow.code, follow.stdout) == (0, b"still-alive\n"), follow.explain()


# -- the walls: one batched run of probes/walls.sh, and the same probes as root outside it -----


@dataclasses.dataclass(frozen=True)
class Walls:
    mode: str
    guest_ip: str
    inside: Run
    outside: dict[str, str]
    aftermath: dict[str, str]
    setuid_as_nobody: str
    root_markers_next_session: dict[str, str]
    project: Path


SETUP = """
set -e
systemd-run --unit=vmsbx-walls-dns --collect --quiet python3 "$1/dns_responder.py" "$2"
printf 'nameserver %s\\noptions timeout:2 attempts:1\\n' "$2" >"$1/resolv.conf"
mount --bind "$1/resolv.conf" /etc/resolv.conf
echo secret >/root/vmsbx-walls-secret
install -o root -g root -m 4755 /usr/bin/id /usr/local/bin/vmsbx-walls-suid-id
for _ in $(seq 50); do getent ahostsv4 walls-probe.vmsbx.test >/dev/null && exit 0; sleep 0.2; done
echo "the DNS responder did not answer" >&2
exit 1
"""

# What the sandboxed run left behind, seen as root right after it (before the controls run).
AFTERMATH = """
for f in /etc /usr /home /root; do
    if [ -e "$f/.vmsbx-walls-probe" ]; then echo "left:$f=yes"; else echo "left:$f=no"; fi
done
if grep -q '^dummy ' /proc/modules; then echo "dummy_loaded=yes"; else echo "dummy_loaded=no"; fi
if mountpoint -q /mnt; then echo "mnt_mounted=yes"; else echo "mnt_mounted=no"; fi
"""

TEARDOWN = """
systemctl stop vmsbx-walls-dns 2>/dev/null
umount /etc/resolv.conf 2>/dev/null
rm -f /root/vmsbx-walls-secret /usr/local/bin/vmsbx-walls-suid-id \
    /tmp/vmsbx-walls-marker /var/tmp/vmsbx-walls-marker /root/vmsbx-walls-marker
rm -rf "$1"
true
"""


@pytest.fixture(scope="module", params=MODES)
def walls(
    request: pytest.FixtureRequest,
    cli: Cli,
    default_vm: dict[str, object],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Walls]:
    mode = str(request.param)
    guest_ip = _root(cli, "hostname -I").split()[0]
    for name in ("walls.sh", "dns_responder.py"):
        _root(cli, 'mkdir -p "$1" && cat >"$1/$2"', GUEST_PROBES, name, input=(PROBES / name).read_bytes())
    project = _project(tmp_path_factory, "walls", "walls.sh")
    try:
        _root(cli, SETUP, GUEST_PROBES, guest_ip)
        # The default policy, unchanged: this is the wall every run gets.
        inside = _run(
            dataclasses.replace(cli, cwd=project),
            "--sandbox",
            mode,
            "--",
            "bash",
            "walls.sh",
            "probe",
            guest_ip,
        )
        aftermath = _results(_root(cli, AFTERMATH).encode())
        outside = _results(
            _root(cli, 'cd "$(mktemp -d)" && bash "$1/walls.sh" probe "$2"', GUEST_PROBES, guest_ip).encode()
        )
        setuid_as_nobody = _root(
            cli, "setpriv --reuid=65534 --regid=65534 --clear-groups /usr/local/bin/vmsbx-walls-suid-id -u"
        ).strip()
        # Control for the next-run test: root's markers are still there for a later session.
        root_markers = _results(_root(cli, 'bash "$1/walls.sh" markers', GUEST_PROBES).encode())
        print(f"\ninside the sandbox (run {inside.id}, {inside.seconds:.1f}s):\n{inside.stdout.decode()}")
        print(f"as root outside it:\n{json.dumps(outside, indent=1)}\naftermath: {aftermath}")
        yield Walls(mode, guest_ip, inside, outside, aftermath, setuid_as_nobody, root_markers, project)
    finally:
        _root(cli, TEARDOWN, GUEST_PROBES)


def _denied_inside_allowed_outside(walls: Walls, *names: str) -> None:
    inside, outside = walls.inside.results, walls.outside
    for name in names:
        assert outside.get(name) == "ok", f"control {name}: as root outside the sandbox: {outside.get(name)}"
        assert str(inside.get(name)).startswith("fail:"), f"{name} inside the sandbox: {inside.get(name)}"


def test_the_probe_run_itself_succeeds(walls: Walls) -> None:
    assert walls.inside.code == 0, walls.inside.explain()
    assert walls.outside.get("uid") == "0"


def test_workspace_is_writable_the_system_is_not(walls: Walls) -> None:
    assert walls.inside.results["workspace_write"] == "ok", walls.inside.explain()
    _denied_inside_allowed_outside(
        walls, "etc_write", "usr_write", "home_write", "root_write", "root_read", "shadow_read"
    )
    assert walls.aftermath["left:/etc"] == walls.aftermath["left:/root"] == "no"


def test_no_network_not_even_the_guests_own_sshd_nor_dns(walls: Walls) -> None:
    _denied_inside_allowed_outside(walls, "ssh_loopback", "ssh_guest_ip", "dns")


def test_privileged_operations_fail(walls: Walls) -> None:
    probes = ["mount_tmpfs", "unshare_user", "unshare_net", "ptrace_child", "su", "modprobe", "insmod"]
    if walls.mode == "systemd":
        # In a jail, PID 1 is the jail's own holder and the workspace is mounted nosuid under
        # no_new_privs: reading its environ or setting a setuid bit there reaches nothing.
        # suid_euid below is the proof that matters in both modes.
        probes += ["proc1_environ", "chmod_suid"]
    _denied_inside_allowed_outside(walls, *probes)
    # Nothing the sandbox tried stayed done.
    assert walls.aftermath["dummy_loaded"] == "no"
    assert walls.aftermath["mnt_mounted"] == "no"
    # A setuid-root binary raises a non-root caller to euid 0 outside the sandbox, not inside.
    assert walls.setuid_as_nobody == "0"
    assert walls.inside.results["suid_euid"] == walls.inside.results["uid"] != "0"


def test_other_processes_of_the_guest_are_invisible(walls: Walls) -> None:
    inside, outside = walls.inside.results, walls.outside
    assert inside["process_uids"] == inside["uid"], inside
    assert int(inside["pid_count"]) <= 8, inside
    assert not {"systemd", "sshd", "systemd-journal", "dbus-daemon"} & set(inside["commands"].split(","))
    # Control: as root, the guest's own processes are there to be seen.
    assert int(outside["pid_count"]) > 30
    assert {"systemd", "sshd", "systemd-journal"} <= set(outside["commands"].split(","))
    assert len(outside["process_uids"].split(",")) > 1


def test_the_runs_user_has_no_privilege_no_password_and_no_sudo(walls: Walls) -> None:
    inside = walls.inside.results
    if walls.mode == "systemd":
        assert int(inside["uid"]) in DYNAMIC_UIDS, inside["id"]
    else:
        assert inside["uid"] == "1000", inside["id"]
        outside_uid = walls.inside.record["outside_uid"]
        assert isinstance(outside_uid, int) and 60000 <= outside_uid <= 60999
        assert walls.inside.record["jail_problems"] == []
    assert "(root)" not in inside["id"] and "sudo" not in inside["id"], inside["id"]
    _denied_inside_allowed_outside(walls, "shadow_read")
    assert inside["sudo_present"] == walls.outside["sudo_present"]
    assert inside["sudo"].startswith("fail:"), inside["sudo"]


def test_nothing_outside_the_workspace_reaches_the_next_run(cli: Cli, walls: Walls) -> None:
    inside = walls.inside.results
    # The first run did write its markers (it read them back) ...
    assert [inside["mark_tmp"], inside["mark_var_tmp"], inside["mark_home"]] == ["ok"] * 3
    # ... and outside the sandbox such files do outlive the session that wrote them (control) ...
    assert set(walls.root_markers_next_session.values()) == {"present"}, walls.root_markers_next_session
    # ... but the next run sees none of them.
    second = _run(
        dataclasses.replace(cli, cwd=walls.project),
        "--sandbox",
        walls.mode,
        "--",
        "bash",
        "walls.sh",
        "markers",
    )
    assert second.code == 0, second.explain()
    assert len(second.results) == 3, second.explain()
    assert set(second.results.values()) == {"absent"}, second.explain()


def test_the_run_is_recorded_on_the_host_with_its_journal(cli: Cli, walls: Walls) -> None:
    run = walls.inside
    record = run.record
    assert record["state"] == "exited"
    assert record["exit_code"] == 0
    assert record["reason"] == "exited with code 0"
    assert record["service_result"] == "success"
    resources = record["resources"]
    assert isinstance(resources, dict)
    assert int(resources["memory_peak"]) > 0
    assert float(str(record["exposure"])) <= EXPOSURE_LIMIT[walls.mode]
    assert record["sandbox"] == walls.mode
    unit = f"vmsbx-run-{run.id}.service"
    assert record["unit"] == unit
    messages = {
        e.get("MESSAGE") for e in run.journal if e.get("_SYSTEMD_UNIT") == unit and e.get("_PID") != "1"
    }
    assert set(run.stdout.decode().splitlines()) <= messages
    listed = cli.json("runs")
    assert isinstance(listed, list)
    assert [r["exit_code"] for r in listed if r["id"] == run.id] == [0]
    logs = cli.ok("logs", run.id, "--json").stdout.splitlines()
    assert [json.loads(line) for line in logs] == run.journal


# -- pass-through: exit codes, arguments, stdin -------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_exit_codes_and_arguments_pass_through_literally(
    cli: Cli, default_vm: dict[str, object], mode: str
) -> None:
    literal = _run(
        cli, "--sandbox", mode, *SMALL_WORKSPACE, "--", "sh", "-c", 'echo "$1"; exit 3', "x", "a; rm -rf /"
    )
    assert (literal.code, literal.stdout) == (3, b"a; rm -rf /\n"), literal.explain()
    assert literal.record["exit_code"] == 3
    missing = _run(cli, "--sandbox", mode, *SMALL_WORKSPACE, "--", "no-such-cmd")
    assert missing.code == 127, missing.explain()
    assert missing.record["exit_code"] == 127
    assert b"no-such-cmd" in missing.stderr


def test_stdin_is_forwarded(cli: Cli, default_vm: dict[str, object]) -> None:
    run = _run(cli, *SMALL_WORKSPACE, "--", "sh", "-c", "cat; exit 42", input=b"data")
    assert (run.code, run.stdout) == (42, b"data"), run.explain()


# -- detach, attach, several at once, stop-run --------------------------------------------------


# As root outside the sandboxes: wait for each run's /tmp mark, show its workspace tag and marks,
# then let both runs go on.
NEIGHBOURS_SEEN_BY_ROOT = """
for id in "$@"; do
    ws=/var/lib/private/vmsbx-ws-$id tmp=/var/lib/vmsbx/runs/$id/tmp
    for _ in $(seq 300); do [ -e "$tmp/mark-$(cat "$ws/who")" ] && break; sleep 0.2; done
    echo "$id=$(cat "$ws/who"),$(ls "$tmp" | grep '^mark-')"
done
for id in "$@"; do touch "/var/lib/private/vmsbx-ws-$id/go"; done
"""


def test_two_detached_runs_at_once_are_apart_and_attach_follows_each(
    cli: Cli, default_vm: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> None:
    projects = {}
    for tag, code in (("left", 7), ("right", 9)):
        project = _project(tmp_path_factory, tag, "neighbour.sh")
        (project / "who").write_text(tag + "\n")
        (project / "code").write_text(f"{code}\n")
        projects[tag] = project
    neighbour = ["bash", "neighbour.sh"]
    started = time.monotonic()
    detaching = {
        tag: subprocess.Popen(
            [sys.executable, "-m", "vmsbx", "run", "--detach", *SMALL_WORKSPACE, "--", *neighbour],
            cwd=project,
            env=cli.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for tag, project in projects.items()
    }
    ids, detach_seconds = {}, {}
    for tag, proc in detaching.items():
        out, err = proc.communicate(timeout=300)
        detach_seconds[tag] = time.monotonic() - started
        assert proc.returncode == 0, err.decode(errors="replace")
        ids[tag] = out.decode().strip()
        assert RUN_ID.fullmatch(ids[tag]), out
    print(f"detach returned after {detach_seconds}")
    assert max(detach_seconds.values()) < 90
    assert ids["left"] != ids["right"]
    # Detach returned while both commands still wait for us: both units are active at once.
    states = cli.json("runs")
    assert isinstance(states, list)
    assert {r["id"]: r["state"] for r in states if r["id"] in ids.values()} == dict.fromkeys(
        ids.values(), "running"
    )
    units = [f"vmsbx-run-{i}.service" for i in ids.values()]
    assert _root(cli, 'systemctl is-active "$@"', *units).split() == ["active", "active"]
    # Control: root outside sees both workspaces and both /tmp marks once the runs made them.
    control = _root(cli, NEIGHBOURS_SEEN_BY_ROOT, *ids.values())
    assert _results(control.encode()) == {ids["left"]: "left,mark-left", ids["right"]: "right,mark-right"}
    uids = set()
    for tag, expected_code in (("left", 7), ("right", 9)):
        attached = cli.run("attach", ids[tag], timeout=300)
        seen = _results(attached.stdout)
        assert attached.returncode == expected_code, attached.stderr.decode(errors="replace")
        assert seen["go"] == "yes"
        assert seen["tag"] == tag
        assert seen["unit"] == f"vmsbx-run-{ids[tag]}.service"
        assert seen["workspace"] == run_workdir(str(projects[tag].resolve()))  # its stable path
        assert seen["workspace_files"] == "code,go,neighbour.sh,who"
        assert seen["tmp_marks"] == f"mark-{tag}"
        assert seen["tags_seen"] == tag
        assert seen["uids_seen"] == seen["uid"]
        record = json.loads((cli.home / "runs" / ids[tag] / "run.json").read_text())
        assert (record["state"], record["exit_code"]) == ("exited", expected_code)
        uids.add(seen["uid"])
    assert len(uids) == 2  # a dynamic user of its own each


def test_stop_run_ends_a_long_run(cli: Cli, default_vm: dict[str, object]) -> None:
    started = time.monotonic()
    detached = cli.ok("run", "--detach", *SMALL_WORKSPACE, "--", "sleep", "600", input=b"")
    detach_seconds = time.monotonic() - started
    run_id = detached.stdout.decode().strip()
    assert RUN_ID.fullmatch(run_id)
    unit = f"vmsbx-run-{run_id}.service"
    assert _root(cli, 'systemctl is-active "$1"', unit).strip() == "active"
    started = time.monotonic()
    stopped = cli.ok("stop-run", run_id, timeout=300)
    stop_seconds = time.monotonic() - started
    print(f"detach took {detach_seconds:.1f}s, stop-run {stop_seconds:.1f}s")
    assert stop_seconds < 120
    assert f"{run_id}: stopped".encode() in stopped.stdout
    state = cli.run("ssh", "--", "systemctl", "is-active", unit).stdout.decode().strip()
    assert state in ("inactive", "failed"), state
    record = json.loads((cli.home / "runs" / run_id / "run.json").read_text())
    assert record["state"] in ("exited", "failed")
    assert record["exit_code"] == 143, record
    assert float(str(record["duration"])) < 300


# -- limits: time, memory, disk, journal volume, tasks ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_timeout_ends_the_run_with_143(cli: Cli, default_vm: dict[str, object], mode: str) -> None:
    run = _run(cli, "--sandbox", mode, *SMALL_WORKSPACE, "--timeout", "5s", "--", "sleep", "60")
    print(f"the timed-out run took {run.seconds:.1f}s (record: {run.record['duration']}s)")
    assert run.code == 143, run.explain()
    assert "timeout" in str(run.record["reason"])
    assert b"timeout" in run.stderr
    assert run.seconds < 45
    assert float(str(run.record["duration"])) < 30


ALLOCATE_600M = """
chunks = []
for i in range(60):
    chunks.append(b"x" * (10 << 20))  # written, so really resident
    print(i, flush=True)
print("allocated")
"""


@pytest.mark.parametrize("mode", MODES)
def test_memory_limit_kills_the_run_with_137_and_the_guest_survives(
    cli: Cli, default_vm: dict[str, object], mode: str
) -> None:
    # Control: the guest itself has room for the allocation.
    assert _root(cli, 'python3 -c "$1"', ALLOCATE_600M).splitlines()[-1] == "allocated"
    run = _run(
        cli, "--sandbox", mode, *SMALL_WORKSPACE, "--memory", "256M", "--", "python3", "-c", ALLOCATE_600M
    )
    assert run.code == 137, run.explain()
    assert b"allocated" not in run.stdout
    record = run.record
    assert "out of memory" in str(record["reason"]), record
    assert b"out of memory" in run.stderr
    resources = record["resources"]
    assert isinstance(resources, dict)
    assert resources["oom_kills"] >= 1
    assert 0 < int(resources["memory_peak"]) <= 256 * MiB
    _assert_guest_healthy(cli)


DISK_FILLER = """
probe() {
    err=$(dd if=/dev/zero of="$2" bs=1M count=200 2>&1 >/dev/null)
    echo "$1_rc=$?"
    echo "$1_error=$(printf '%s' "$err" | grep -m 1 'error writing')"
    echo "$1_bytes=$(stat -c %s "$2")"
}
probe workspace ./filler
probe tmp /tmp/filler
"""


@pytest.mark.parametrize("mode", MODES)
def test_disk_caps_hold_and_the_guest_disk_is_untouched(
    cli: Cli, default_vm: dict[str, object], mode: str
) -> None:
    # Control: outside the sandbox the same 200 MB fit on the guest's disk, in both places.
    control = _root(
        cli,
        'for where in /var/tmp /tmp; do d=$(mktemp -d "$where/walls-XXXX") && '
        'dd if=/dev/zero of="$d/filler" bs=1M count=200 status=none && rm -rf "$d" && echo ok; done',
    )
    assert control.split() == ["ok", "ok"]
    before, mirrors_before = _guest_disk(cli)
    run = _run(
        cli, "--sandbox", mode, "--workspace-size", "64M", "--tmp-size", "32M", "--", "sh", "-c", DISK_FILLER
    )
    after, mirrors_after = _guest_disk(cli)
    leftovers = _root(cli, "mount | grep vmsbx || true; losetup -a; du -sh /var/lib/vmsbx/runs/* 2>/dev/null")
    _assert_guest_healthy(cli)
    seen = run.results
    assert run.code == 0, run.explain()
    for where, cap in (("workspace", 64 * MiB), ("tmp", 32 * MiB)):
        assert seen[f"{where}_rc"] != "0", seen
        assert "No space left on device" in seen[f"{where}_error"], seen
        assert int(seen[f"{where}_bytes"]) <= cap, seen
    # The project's mirror keeps what the run wrote until the next sync (it is the run's
    # workspace, kept for collect and review): at most the workspace cap. Nothing else stays.
    kept = mirrors_after - mirrors_before
    assert kept <= 64 * MiB + MiB, f"the project mirrors grew by {kept / MiB:.1f} MiB\n{leftovers}"
    assert (before - after) - kept < 16 * MiB, (
        f"the guest's root filesystem lost {(before - after) / MiB:.1f} MiB to the run, "
        f"{kept / MiB:.1f} MiB of it in the project mirrors\n{leftovers}"
    )


def test_journal_keeps_every_line_and_long_lines_whole(cli: Cli, default_vm: dict[str, object]) -> None:
    long_line = "y" * 10240
    run = _run(
        cli,
        *SMALL_WORKSPACE,
        "--",
        "sh",
        "-c",
        'seq 1 100000; python3 -c "print(\\"y\\" * 10240)"',
    )
    print(f"the 100,000-line run took {run.seconds:.1f}s")
    assert run.code == 0, run.explain()
    # Control: the program printed every line (the live stream has them all).
    streamed = run.stdout.decode().splitlines()
    assert streamed == [*map(str, range(1, 100001)), long_line]
    logs = cli.ok("logs", run.id, "--json")
    unit = f"vmsbx-run-{run.id}.service"
    entries = [json.loads(line) for line in logs.stdout.splitlines()]
    assert entries == run.journal
    messages = [e.get("MESSAGE") for e in entries if e.get("_SYSTEMD_UNIT") == unit and e.get("_PID") != "1"]
    numbered = [m for m in messages if isinstance(m, str) and m.isdigit()]
    kept = set(numbered)
    first_missing = next((i for i in range(1, 100001) if str(i) not in kept), None)
    assert len(numbered) == 100000, (
        f"{100000 - len(numbered)} of 100,000 lines are missing from the journal (first: {first_missing})"
    )
    assert numbered == [str(i) for i in range(1, 100001)]
    assert messages.count(long_line) == 1, [len(str(m)) for m in messages if not str(m).isdigit()]


@pytest.mark.parametrize("mode", MODES)
def test_tasks_limit_contains_a_fork_bomb(cli: Cli, default_vm: dict[str, object], mode: str) -> None:
    # Control: outside the sandbox, 100 processes at once are no problem.
    spawned = _root(
        cli,
        "for i in $(seq 100); do sleep 5 & done; "
        # A forked child is named sleep only once it has exec'd: under load some have not yet.
        'for _ in $(seq 20); do [ "$(pgrep -c -x -P $$ sleep)" = 100 ] && break; sleep 0.1; done; '
        "pgrep -c -x -P $$ sleep; wait",
    )
    assert spawned.strip() == "100"
    limits = ("--tasks", "64", "--timeout", "20s")
    run = _run(cli, "--sandbox", mode, *SMALL_WORKSPACE, *limits, "--", "bash", "-c", ":(){ :|:& };:")
    print(f"the fork bomb run took {run.seconds:.1f}s and exited {run.code}")
    record = run.record
    unit = str(record["unit"])
    guest_view = _root(
        cli,
        'systemctl show -p ActiveState,SubState,Result "$1"; '
        'cat "/var/lib/vmsbx/runs/$2/result.json" || true',
        unit,
        run.id,
    )
    # The guest survives, and takes the next run, even while the bomb's unit is still being torn down.
    _assert_guest_healthy(cli)
    assert record["state"] in ("exited", "failed"), (
        f"{json.dumps(record)}\nthe guest now: {guest_view}\n{run.explain()[-1500:]}"
    )
    assert record["exit_code"] == run.code, record
    assert record["reason"], record
    resources = record["resources"]
    assert isinstance(resources, dict)
    assert resources["tasks_limit_hits"] > 0, record
    assert int(resources["tasks_peak"]) <= 64, record
    assert _root(cli, 'systemctl is-active "$1" || true', unit).strip() != "active"
