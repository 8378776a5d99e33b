"""Runs on the real guest beyond the wall probes: the exposure score offline equals the score
of the live unit, and following logs survives a killed SSH connection with nothing lost or
duplicated."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
from vmcli import Cli, read_pty_until

pytestmark = pytest.mark.vm


def _record(cli: Cli, run_id: str) -> dict[str, object]:
    return json.loads((cli.home / "runs" / run_id / "run.json").read_text())


def test_offline_score_equals_the_live_units_score(cli: Cli, default_vm: dict[str, object]) -> None:
    run_id = cli.ok("run", "--detach", "--", "sleep", "60").stdout.decode().strip()
    try:
        live = cli.ok("ssh", "--", "python3", "/usr/local/lib/vmsbx/guest.py", "score-live", run_id)
        live_score = json.loads(live.stdout)["exposure"]
        offline_score = _record(cli, run_id)["exposure"]
        assert live_score == offline_score
        assert isinstance(offline_score, float) and offline_score <= 1.0
    finally:
        cli.ok("stop-run", run_id)
    assert _record(cli, run_id)["exit_code"] == 143  # stopped by SIGTERM


def test_logs_resume_after_the_ssh_link_is_killed(cli: Cli, default_vm: dict[str, object]) -> None:
    count = 400
    script = f"for i in $(seq 1 {count}); do echo line-$i; sleep 0.02; done"
    run_id = cli.ok("run", "--detach", "--", "sh", "-c", script).stdout.decode().strip()
    follower = subprocess.Popen(
        [sys.executable, "-m", "vmsbx", "logs", "-f", "--json", run_id],
        env=cli.env,
        cwd=cli.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(3)
    # Drop every SSH connection to the guest mid-run (the agent's included) from inside.
    cli.run("ssh", "--", "sh", "-c", "pkill -KILL -f 'sshd: root' ; true")
    follower.communicate(timeout=120)
    resumed = cli.ok("logs", "-f", "--json", run_id, timeout=300)
    assert resumed.returncode == 0
    attach = cli.run("attach", run_id)
    assert attach.returncode == 0
    lines = [
        json.loads(line) for line in (cli.home / "runs" / run_id / "journal.jsonl").read_text().splitlines()
    ]
    messages = [e["MESSAGE"] for e in lines if e.get("_SYSTEMD_UNIT") == f"vmsbx-run-{run_id}.service"]
    numbered = [m for m in messages if isinstance(m, str) and m.startswith("line-")]
    assert numbered == [f"line-{i}" for i in range(1, count + 1)]  # complete, in order, once each
    cursors = [e["__CURSOR"] for e in lines]
    assert len(cursors) == len(set(cursors))


def test_ctrl_c_stops_a_headless_run_in_the_guest(cli: Cli, default_vm: dict[str, object]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmsbx", "run", "--", "sh", "-c", "echo started; sleep 120"],
        env=cli.env,
        cwd=cli.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    runs = cli.json("runs")
    assert isinstance(runs, list)
    newest = runs[-1]
    assert "interrupted" in newest["reason"]
    # The unit is gone from the guest, not just the SSH session.
    units = cli.ok("ssh", "--", "systemctl", "list-units", "--all", "--plain", "--no-legend", "vmsbx-run-*")
    assert f"vmsbx-run-{newest['id']}" not in units.stdout.decode()


def test_tty_run_gets_a_terminal_that_follows_resizes(cli: Cli, default_vm: dict[str, object]) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cli.cwd)
        os.execve(
            sys.executable,
            [sys.executable, "-m", "vmsbx", "run", "--tty", "--", "sh", "-c",
             "tty; stty size; echo ready; read line; stty size; echo got-$line; exit 4"],
            cli.env,
        )  # fmt: skip
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    output = read_pty_until(fd, b"ready", 120)
    assert b"/dev/pts/" in output
    assert b"30 100" in output
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    time.sleep(2)  # the resize travels: host pty -> agent -> guest pty -> holder -> program pty
    os.write(fd, b"hello\r")
    output += read_pty_until(fd, b"got-hello", 60)
    _, status = os.waitpid(pid, 0)
    assert b"40 120" in output
    assert os.waitstatus_to_exitcode(status) == 4


def test_a_policy_scoring_above_the_threshold_is_refused(cli: Cli, default_vm: dict[str, object]) -> None:
    refused = cli.run("run", "--score-threshold", "0.1", "--", "echo", "never")
    assert refused.returncode == 125
    assert b"above the allowed 0.1" in refused.stderr
    assert b"never" not in refused.stdout
    # The project file cannot lower the bar the other way: thresholds are trusted-only.
    (cli.cwd / "vmsbx.toml").write_text("[sandbox]\nscore_threshold = 9.0\n")
    try:
        loosened = cli.run("run", "--", "echo", "never")
    finally:
        (cli.cwd / "vmsbx.toml").unlink()
    assert loosened.returncode == 2
    assert b"sandbox.score_threshold" in loosened.stderr
