"""The collect cap on the real guest: an agent's `truncate -s 20G` is refused from the
manifest (no hashing of its zeros, nothing fetched), and its changes stay in the guest for
inspection, out of the next run's way, until `vmsbx discard`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from vmcli import Cli

pytestmark = pytest.mark.vm
GiB = 1 << 30


def test_a_changeset_over_the_cap_is_held_in_the_guest(cli: Cli, tmp_path: Path) -> None:
    cli.ok("up", "--json", timeout=1800)
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "README.md").write_text("hello\n")
    project = Cli(env=cli.env, cwd=folder)

    started = time.monotonic()
    done = project.ok("run", "--", "sh", "-c", "truncate -s 20G big.bin && echo small > small.txt")
    took = time.monotonic() - started
    stderr = done.stderr.decode(errors="replace")
    assert "collect cap of 1,024 MiB" in stderr and "big.bin (20,480 MiB)" in stderr, stderr
    # Hashing 20 GiB of zeros under TCG took about 6 minutes; a stat walk takes none of that.
    assert took < 240, f"the run took {took:.0f} s"
    runs = project.json("runs")
    assert isinstance(runs, list)
    held = max(runs, key=lambda run: str(run["started_at"]))
    assert held["changes"] == "held", held
    mirror = f"/var/lib/vmsbx/projects/{held['workspace_key']}/mnt"
    assert mirror in stderr  # the user is told where to look
    changes = cli.home / "runs" / str(held["id"]) / "changes"
    assert sorted(path.name for path in changes.iterdir()) == ["base-commits.json", "base.json", "rules.json"]

    def guest_size(path: str) -> str:
        return project.ok("ssh", "--", "stat", "-c", "%s", path).stdout.decode().strip()

    assert guest_size(f"{mirror}/big.bin") == str(20 * GiB)
    diff = project.run("diff", str(held["id"]))
    assert diff.returncode == 2 and b"over the collect cap" in diff.stderr

    # The next run of the project starts from the host's files, in another mirror.
    again = project.ok("run", "--", "sh", "-c", "ls")
    assert b"README.md" in again.stdout and b"big.bin" not in again.stdout
    assert guest_size(f"{mirror}/big.bin") == str(20 * GiB)

    project.ok("discard", "-y", str(held["id"]))
    after = {run["id"]: run for run in json.loads(project.ok("runs", "--json").stdout)}
    assert after[held["id"]]["changes"] == "discarded"
    owner = project.run("ssh", "--", "test", "-e", f"/var/lib/vmsbx/projects/{held['workspace_key']}/owner")
    assert owner.returncode != 0, "discard gave the mirror back (its hold in the guest is gone)"
