"""Fault tolerance on the real guest: a dropped SSH link, a full guest disk, `vmsbx up`
interrupted at each stage, and the VM hard-killed in the middle of a run.

Two runs at once in one VM (separate units, workspaces, users; neither sees the other) is
tests/vm/test_sandbox_walls.py::test_two_detached_runs_at_once_are_apart_and_attach_follows_each.
The destructive tests use a VM of their own ("faults"), so the session's shared guest is never
killed; they run last in this file.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vmcli import Cli

pytestmark = pytest.mark.vm

RUN_ID = re.compile(r"[0-9a-f]{12}")
SMALL = ("--workspace-size", "64M", "--tmp-size", "64M")
LINES = 60
# Prints LINES numbered lines, one every 0.25 s: long enough to drop the link in the middle.
TICKER = f'for i in $(seq 1 {LINES}); do echo "line-$i"; sleep 0.25; done'


def _root(cli: Cli, script: str, *args: str, check: bool = True) -> str:
    done = cli.run("ssh", "--", "sh", "-c", script, "sh", *args, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode()


def _detach(cli: Cli, *argv: str) -> str:
    run_id = cli.ok("run", "--detach", *SMALL, "--", *argv, input=b"").stdout.decode().strip()
    assert RUN_ID.fullmatch(run_id), run_id
    return run_id


def _record(cli: Cli, run_id: str) -> dict[str, object]:
    return json.loads((cli.home / "runs" / run_id / "run.json").read_text())


def _wait_for_line(cli: Cli, run_id: str, line: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if line in _root(
            cli,
            'cat "/var/lib/vmsbx/runs/$1/tmp/.vmsbx/transcript" 2>/dev/null | tr -c "[:print:]\\n" " "; true',
            run_id,
        ):
            return
        time.sleep(1)
    raise AssertionError(f"run {run_id} never printed {line}")


# Kill (SIGKILL) the sshd process of the host agent's SSH connection, as a network drop would:
# the attach's `follow` is a channel of that connection (to the guest agent), and so is this
# command's own session, so the session's sshd above this very shell is the one to kill (its
# exit status is not checked: it dies with the link).
KILL_AGENT_CONNECTION = """
pid=$$
while [ -n "$pid" ] && [ "$pid" != 1 ]; do
    case $(cat /proc/$pid/comm) in sshd) kill -KILL "$pid"; exit 0 ;; esac
    pid=$(awk '{print $4}' /proc/$pid/stat)
done
echo "no sshd session above this shell" >&2
exit 1
"""


def test_a_dropped_ssh_link_loses_no_line_and_the_run_goes_on(
    cli: Cli, default_vm: dict[str, object]
) -> None:
    run_id = _detach(cli, "sh", "-c", TICKER)
    first = subprocess.Popen(
        [sys.executable, "-m", "vmsbx", "attach", run_id],
        env=cli.env, cwd=cli.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _wait_for_line(cli, run_id, "line-5\n")
    _root(cli, KILL_AGENT_CONNECTION, check=False)
    out, err = first.communicate(timeout=120)
    seen_before_drop = out.decode().splitlines()
    print(
        f"the first attach ended with {first.returncode} after {len(seen_before_drop)} lines: {err[-300:]!r}"
    )
    assert first.returncode != 0, "the attach did not notice the dropped link"
    assert len(seen_before_drop) < LINES, (
        "the link was dropped after the run had ended: the test proves nothing"
    )
    # The run went on without a client: attach again (the agent reconnects) and get every line.
    again = cli.run("attach", run_id, timeout=300)
    assert again.returncode == 0, again.stderr.decode(errors="replace")
    expected = [f"line-{i}" for i in range(1, LINES + 1)]
    assert again.stdout.decode().splitlines() == expected
    assert seen_before_drop == expected[: len(seen_before_drop)]
    followed = cli.run("logs", "-f", run_id, "--json", timeout=300)
    assert followed.returncode == 0, followed.stderr.decode(errors="replace")
    unit = f"vmsbx-run-{run_id}.service"
    messages = [
        e.get("MESSAGE") for e in map(json.loads, followed.stdout.splitlines())
        if e.get("_SYSTEMD_UNIT") == unit and e.get("_PID") != "1"
    ]  # fmt: skip
    assert messages == expected
    record = _record(cli, run_id)
    assert (record["state"], record["exit_code"]) == ("exited", 0), record


FILL_GUEST_DISK = """
# Root may use ext4's reserved blocks, and so does the loop device behind a workspace: fill
# those too, in shrinking chunks, until nothing at all is left.
avail=$(df -B1 --output=avail / | tail -n 1)
fallocate -l "$avail" /var/tmp/vmsbx-test-filler
i=0
for size in 256M 64M 16M 4M 1M 256K 64K 16K 4K; do
    while fallocate -l "$size" "/var/tmp/vmsbx-test-filler-$i" 2>/dev/null; do i=$((i + 1)); done
done
df -B1 --output=avail / | tail -n 1
"""


def test_a_full_guest_disk_gives_a_clear_error_and_the_vm_works_after_cleanup(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path
) -> None:
    # A run is going (waiting for a go-ahead on its tmpfs) while the guest's disk fills up.
    script = "while [ ! -e /tmp/go ]; do sleep 0.2; done; echo still-here > after.txt && cat after.txt"
    run_id = _detach(cli, "sh", "-c", script)
    try:
        left = int(_root(cli, FILL_GUEST_DISK).split()[-1])
        assert left == 0, f"{left} bytes still free"
        # A new run cannot even be prepared: a clear error naming the cause, no traceback.
        # (Another project: this one's workspace belongs to the run that is going.)
        other = Cli(env=cli.env, cwd=tmp_path)
        refused = other.run("run", *SMALL, "--", "true", input=b"", timeout=300)
        err = refused.stderr.decode(errors="replace")
        print(err)
        assert refused.returncode == 125, err
        assert "No space left on device" in err, err
        assert "Traceback" not in err
    finally:
        _root(cli, "rm -f /var/tmp/vmsbx-test-filler*")
    # After cleanup the VM is usable again: the run that was going finishes, a new one starts.
    _root(cli, 'touch "/var/lib/vmsbx/runs/$1/tmp/go"', run_id)
    attached = cli.run("attach", run_id, timeout=300)
    assert (attached.returncode, attached.stdout) == (0, b"still-here\n"), attached.stderr.decode(
        errors="replace"
    )
    after = cli.run("run", *SMALL, "--", "echo", "room-again", input=b"", timeout=300)
    assert (after.returncode, after.stdout) == (0, b"room-again\n"), after.stderr.decode(errors="replace")


# -- destructive: a VM of their own ---------------------------------------------------------------

FAULTS_VM = "faults"
STAGES = ("up:created", "up:started", "up:connected", "up:checked", "up:provisioned")


def test_up_interrupted_at_each_stage_then_run_again_succeeds(cli: Cli) -> None:
    for stage in STAGES:
        cut = cli.run("up", "--name", FAULTS_VM, extra_env={"VMSBX_TEST_STAGE_HOOK": stage}, timeout=900)
        assert cut.returncode == -9, (stage, cut.returncode, cut.stderr.decode(errors="replace")[-2000:])
    done = cli.run("up", "--name", FAULTS_VM, "--json", timeout=900)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert json.loads(done.stdout)["state"] == "running"
    ran = cli.run("run", "--name", FAULTS_VM, *SMALL, "--", "echo", "after-interruptions", input=b"")
    assert (ran.returncode, ran.stdout) == (0, b"after-interruptions\n"), ran.stderr.decode(errors="replace")
    # Without the hook set, the same code paths are inert: a plain `up` on the running VM is quick.
    assert cli.run("up", "--name", FAULTS_VM, timeout=300).returncode == 0


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_vm_hard_killed_mid_run_is_reported_and_up_brings_it_back(
    cli: Cli, tmp_path_factory: pytest.TempPathFactory
) -> None:
    project = tmp_path_factory.mktemp("killed-project")
    (project / "notes.txt").write_text("the host's copy\n")
    before = _tree_digest(project)
    faults = Cli(env=cli.env, cwd=project)
    faults.ok("up", "--name", FAULTS_VM, timeout=900)
    script = "echo changed > notes.txt; sleep 600"
    detached = faults.ok("run", "--name", FAULTS_VM, "--detach", *SMALL, "--", "sh", "-c", script, input=b"")
    run_id = detached.stdout.decode().strip()
    assert _record(cli, run_id)["state"] == "running"
    runtime = json.loads((cli.home / "vms" / FAULTS_VM / "runtime.json").read_text())
    pid = int(runtime["pid"])
    subprocess.run(["kill", "-KILL", str(pid)], check=True)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    status = faults.json("status")
    assert isinstance(status, list)
    row = next(r for r in status if r["name"] == FAULTS_VM)
    assert row["state"] == "stopped", row
    assert "without a shutdown" in str(row.get("detail")), row
    assert run_id in row.get("lost_runs", []), row
    record = _record(cli, run_id)
    assert record["state"] == "lost", record
    assert "abnormally" in str(record["reason"]), record
    assert record["exit_code"] != 0
    runs = faults.json("runs")
    assert isinstance(runs, list)
    assert [r["state"] for r in runs if r["id"] == run_id] == ["lost"]
    back = faults.run("up", "--name", FAULTS_VM, "--json", timeout=900)
    assert back.returncode == 0, back.stderr.decode(errors="replace")
    ran = faults.run("run", "--name", FAULTS_VM, *SMALL, "--", "cat", "notes.txt", input=b"")
    assert (ran.returncode, ran.stdout) == (0, b"the host's copy\n"), ran.stderr.decode(errors="replace")
    assert _tree_digest(project) == before, "the host project changed"
