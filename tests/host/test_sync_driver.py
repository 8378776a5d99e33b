"""The driver over an exec channel shaped like AgentClient.exec, here a local subprocess running
the real wsync.py: sync-in streams through a pipe, collect stores the run's changes, apply
brings them back, and a discarded run's files are gone at the next sync-in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import pytest
from sync_world import WSYNC, snapshot, sync_in

from vmsbx.sync import changeset as changeset_module
from vmsbx.sync.apply import apply
from vmsbx.sync.diff import render_diff
from vmsbx.sync.driver import collect, guest_manifest, load_manifest, save_manifest
from vmsbx.sync.rules import exclude_rules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="wsync.py runs as root in the guest")
LOCAL = (sys.executable, str(WSYNC))


class LocalExec:
    """AgentClient.exec's contract, with the guest replaced by a local process."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def exec(
        self, argv: list[str], *, stdin: BinaryIO | bytes | None, stdout: BinaryIO, stderr: BinaryIO
    ) -> int:
        self.calls.append(argv)
        source = (
            subprocess.PIPE
            if isinstance(stdin, bytes)
            else (stdin if stdin is not None else subprocess.DEVNULL)
        )
        process = subprocess.Popen(argv, stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = process.communicate(stdin if isinstance(stdin, bytes) else None, timeout=600)
        stdout.write(out)
        stderr.write(err)
        return process.returncode


def test_sync_run_collect_apply_and_discard(tmp_path: Path) -> None:
    project, workspace, run_dir = tmp_path / "project", tmp_path / "ws", tmp_path / "runs" / "r1"
    (project / "src").mkdir(parents=True)
    workspace.mkdir()
    run_dir.mkdir(parents=True)
    (project / "src" / "app.py").write_text("x = 1\n")
    (project / ".env").write_text("TOKEN=1\n")
    (project / "dist").mkdir()
    (project / "dist" / "big.bin").write_bytes(b"\0" * 1000)
    channel = LocalExec()
    rules = exclude_rules(None, ("dist",))
    first = sync_in(channel, project, str(workspace), rules, owner=(0, 0), wsync=LOCAL)
    assert {item.path for item in first.scan.excluded} == {".env", "dist"}
    assert channel.calls[-1][-3:] == [str(workspace), "--owner", "0:0"]
    save_manifest(first.scan.manifest, run_dir / "base.json")

    # The run: the agent edits, adds and deletes.
    (workspace / "src" / "app.py").write_text("x = 2\n")
    (workspace / "notes.md").write_text("agent notes\n")
    base = load_manifest(run_dir / "base.json")
    collected = collect(channel, base, str(workspace), run_dir / "changes", wsync=LOCAL)
    assert collected.received.stored == ("notes.md", "src/app.py")
    stored = changeset_module.load(run_dir / "changes" / "changeset.json")
    assert stored == collected.changeset
    assert not (run_dir / "changes" / "incoming.tar").exists()
    text = render_diff(stored, collected.store, project)
    assert "-x = 1" in text and "+x = 2" in text and "+agent notes" in text
    report = apply(
        project, stored, collected.store, base=base, shown_digest=stored.digest, include_sensitive=False
    )
    assert report.applied == ("notes.md", "src/app.py")
    assert (project / "src" / "app.py").read_text() == "x = 2\n"

    # A discarded run: its files are gone from the workspace at the next sync-in.
    (workspace / "scratch.txt").write_text("discarded\n")
    (workspace / "src" / "app.py").write_text("discarded edit\n")
    again = sync_in(channel, project, str(workspace), rules, wsync=LOCAL)
    assert again.plan.delete == ("scratch.txt",)
    assert guest_manifest(channel, str(workspace), wsync=LOCAL) == again.scan.manifest
    assert (workspace / "src" / "app.py").read_text() == "x = 2\n"
    assert snapshot(workspace).keys() == {".", "src", "src/app.py", "notes.md"}


def test_collect_without_new_contents_makes_one_guest_call(tmp_path: Path) -> None:
    """Nothing changed, or only a deletion: only the manifest call, no pack round trip."""
    project, workspace, run_dir = tmp_path / "project", tmp_path / "ws", tmp_path / "runs" / "r1"
    project.mkdir()
    workspace.mkdir()
    run_dir.mkdir(parents=True)
    (project / "a.txt").write_text("a\n")
    (project / "b.txt").write_text("b\n")
    channel = LocalExec()
    first = sync_in(channel, project, str(workspace), exclude_rules(None, ()), owner=(0, 0), wsync=LOCAL)
    save_manifest(first.scan.manifest, run_dir / "base.json")
    base = load_manifest(run_dir / "base.json")

    channel.calls.clear()
    unchanged = collect(channel, base, str(workspace), run_dir / "changes", wsync=LOCAL)
    assert not unchanged.changeset.entries and unchanged.received.stored == ()
    assert [call[2] for call in channel.calls] == ["manifest"]

    (workspace / "b.txt").unlink()
    channel.calls.clear()
    deleted = collect(channel, base, str(workspace), run_dir / "changes2", wsync=LOCAL)
    assert [(entry.path, entry.change) for entry in deleted.changeset.entries] == [("b.txt", "deleted")]
    assert [call[2] for call in channel.calls] == ["manifest"]
    assert (run_dir / "changes2" / "blobs").is_dir()


def test_collect_refuses_and_does_not_fetch_what_the_sync_rules_left_out(tmp_path: Path) -> None:
    project, workspace, run_dir = tmp_path / "project", tmp_path / "ws", tmp_path / "runs" / "r1"
    (project / "dist").mkdir(parents=True)
    (project / "dist" / "old.bin").write_bytes(b"host build\n")
    (project / "app.py").write_text("x = 1\n")
    workspace.mkdir()
    run_dir.mkdir(parents=True)
    channel = LocalExec()
    rules = exclude_rules(None, ("dist",))
    base = sync_in(channel, project, str(workspace), rules, owner=(0, 0), wsync=LOCAL).scan.manifest
    (workspace / "dist").mkdir()
    (workspace / "dist" / "evil.pth").write_text("import os\n")
    (workspace / ".env").write_text("NODE_OPTIONS=--require ./x.js\n")
    (workspace / "app.py").write_text("x = 2\n")
    (workspace / "app.py").chmod(0o777)
    collected = collect(channel, base, str(workspace), run_dir / "changes", wsync=LOCAL, rules=rules)
    classes = {entry.path: entry.classification for entry in collected.changeset.entries}
    assert classes == {".env": "refused", "app.py": "apply", "dist": "refused", "dist/evil.pth": "refused"}
    assert collected.received.stored == ("app.py",)
    (entry,) = [entry for entry in collected.changeset.entries if entry.path == "app.py"]
    umask = os.umask(0o077)
    os.umask(umask)
    assert (entry.new_mode, entry.guest_mode) == (0o777 & ~(umask | 0o002), 0o777)
