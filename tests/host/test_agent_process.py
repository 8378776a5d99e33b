"""How the CLI tells whether an agent process still runs: on Linux, and without /proc (macOS,
where the Lima and Multipass paths run); a zombie counts as gone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from vmsbx.agent.client import _alive


def test_a_running_process_is_alive_with_or_without_proc(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert _alive(child.pid)
        assert _alive(child.pid, proc=tmp_path)  # no /proc entry to read: kill(0) decides
    finally:
        child.kill()
        child.wait()
    assert not _alive(child.pid)
    assert not _alive(child.pid, proc=tmp_path)


def test_an_exited_child_is_gone_even_before_it_is_reaped() -> None:
    child = subprocess.Popen(["true"])
    deadline_reached = False
    for _ in range(200):
        if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            break
        subprocess.run(["sleep", "0.05"], check=True)
    else:
        deadline_reached = True
    assert not deadline_reached  # it became a zombie (nobody waited for it yet)
    assert not _alive(child.pid)  # and _alive reaps it and says gone
