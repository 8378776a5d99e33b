"""Sync-in for real: host scan -> plan -> stream -> the real wsync.py (as root) -> exact mirror.

The workspace side is hostile (the agent wrote it in earlier runs): planted symlinks never
redirect a write or a deletion out of the workspace.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from sync_world import guest_manifest, snapshot, sync, wsync

from vmsbx.errors import SyncError
from vmsbx.sync.delta import plan_sync
from vmsbx.sync.manifest import ManifestEntry, scan
from vmsbx.sync.rules import ExcludeRules
from vmsbx.sync.stream import write_stream

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="wsync.py runs as root in the guest")


def _project(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (root / "README.md").write_text("# readme\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    (root / "link").symlink_to("src/pkg/mod.py")
    (root / "dangling").symlink_to("/nonexistent/target")
    (root / "ssh").symlink_to(Path.home() / ".ssh")
    (root / ".env").write_text("API_KEY=secret\n")
    (root / ".envrc").write_text("use nix\n")
    (root / "deploy_key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    os.mkfifo(root / "pipe")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".git" / "config").write_text('[remote "origin"]\n\turl = https://me:tok3n@example.org/r.git\n')
    return root


def test_full_round_trip_mirrors_the_project_minus_secrets(tmp_path: Path) -> None:
    project, workspace = _project(tmp_path / "project"), tmp_path / "ws"
    workspace.mkdir()
    synced = sync(project, workspace)
    assert guest_manifest(workspace) == synced.scan.manifest
    excluded = {item.path: item.reason for item in synced.scan.excluded}
    assert set(excluded) == {".env", "deploy_key.pem", "pipe"}
    assert "secret pattern" in excluded[".env"]
    assert not (workspace / ".env").exists() and (workspace / ".envrc").exists()
    assert os.readlink(workspace / "ssh") == str(Path.home() / ".ssh")  # a link, never its contents
    assert (workspace / "run.sh").stat().st_mode & 0o777 == 0o755
    git_config = (workspace / ".git" / "config").read_text()
    assert "tok3n" not in git_config and "https://example.org/r.git" in git_config
    assert "tok3n" in (project / ".git" / "config").read_text()


def test_incremental_sync_sends_only_changes_and_removes_guest_only_files(tmp_path: Path) -> None:
    project, workspace = _project(tmp_path / "project"), tmp_path / "ws"
    workspace.mkdir()
    sync(project, workspace)
    (project / "README.md").write_text("# changed\n")
    (project / "run.sh").chmod(0o700)
    (workspace / "discarded.txt").write_text("the agent wrote this in a discarded run\n")
    (workspace / "src" / "junk").mkdir()
    (workspace / "src" / "junk" / "x").write_text("x")
    second = sync(project, workspace)
    assert [entry.path for entry in second.plan.files] == ["README.md"]
    assert second.plan.modes == (("run.sh", 0o700),)
    assert second.plan.delete == ("discarded.txt", "src/junk")
    assert guest_manifest(workspace) == second.scan.manifest
    third = sync(project, workspace)
    assert (third.plan.files, third.plan.delete, third.plan.modes) == ((), (), ())


def test_planted_symlinks_never_lead_a_write_or_delete_outside(tmp_path: Path) -> None:
    project, workspace, outside = tmp_path / "project", tmp_path / "ws", tmp_path / "outside"
    for folder in (project / "a", project / "b", workspace, outside):
        folder.mkdir(parents=True)
    (project / "a" / "x").write_text("from the host\n")
    (project / "b" / "y").write_text("host y\n")
    (project / "f").write_text("host f\n")
    (outside / "x").write_text("outside, must stay\n")
    (outside / "target").write_text("outside target\n")
    (outside / "victim").write_text("must not be deleted\n")
    before = snapshot(outside)
    # The agent left links where the host has folders and files.
    (workspace / "a").symlink_to(outside)
    (workspace / "f").symlink_to(outside / "target")
    sync(project, workspace)
    assert snapshot(outside) == before
    assert (workspace / "a").is_dir() and not (workspace / "a").is_symlink()
    assert (workspace / "a" / "x").read_text() == "from the host\n"
    assert not (workspace / "f").is_symlink() and (workspace / "f").read_text() == "host f\n"
    # A stale manifest (the link was planted after it was taken) must not matter either.
    host = scan(project, ExcludeRules())
    plan = plan_sync(host.manifest, guest_manifest(workspace))
    (workspace / "b" / "y").unlink()
    (workspace / "b").rmdir()
    (workspace / "b").symlink_to(outside)
    changed = host.manifest.by_path()["b/y"]
    plan = plan.__class__(("b/victim",), plan.dirs, plan.links, (changed,), plan.modes)
    buffer = io.BytesIO()
    write_stream(host, plan, buffer)
    done = wsync("apply", str(workspace), stdin=buffer.getvalue())
    assert done.returncode == 0, done.stderr
    assert snapshot(outside) == before
    assert (workspace / "b" / "y").read_text() == "host y\n" and not (workspace / "b").is_symlink()


def test_guest_refuses_a_stream_that_does_not_match_its_header(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    header = {
        "version": 1,
        "delete": ["../../etc/passwd"],
        "dirs": [],
        "links": [],
        "files": [],
        "modes": [],
    }
    done = wsync("apply", str(workspace), stdin=json.dumps(header).encode() + b"\n")
    assert done.returncode == 1 and b"bad path" in done.stderr
    project = tmp_path / "project"
    project.mkdir()
    (project / "a").write_text("a")
    host = scan(project, ExcludeRules())
    plan = plan_sync(host.manifest, guest_manifest(workspace))
    lying = ManifestEntry(path="a", kind="file", mode=0o644, size=1, sha256="0" * 64)
    buffer = io.BytesIO()
    with pytest.raises(SyncError, match="changed while it was being synced"):
        write_stream(host, plan.__class__((), (), (), (lying,), ()), buffer)


def test_guest_manifest_cache_is_keyed_on_ctime_not_just_mtime(tmp_path: Path) -> None:
    workspace, cache = tmp_path / "ws", tmp_path / "cache.json"
    workspace.mkdir()
    target = workspace / "f"
    target.write_text("one")
    first = guest_manifest(workspace, cache)
    info = target.stat()
    target.write_text("two")  # same size; then the agent puts the old mtime back
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    second = guest_manifest(workspace, cache)
    assert first.entries[0].sha256 != second.entries[0].sha256


def test_ten_thousand_files_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project, workspace = tmp_path / "project", tmp_path / "ws"
    workspace.mkdir()
    payload = os.urandom(10_000)
    for index in range(10_000):
        folder = project / f"d{index // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index:05d}.bin").write_bytes(payload[index % 97 :] + index.to_bytes(4, "big"))
    caches = tmp_path / "caches"
    caches.mkdir()
    started = time.monotonic()
    synced = sync(project, workspace, caches=caches)
    first = time.monotonic() - started
    assert guest_manifest(workspace) == synced.scan.manifest
    (project / "d000" / "f00000.bin").write_bytes(b"changed")
    started = time.monotonic()
    again = sync(project, workspace)
    uncached = time.monotonic() - started
    (project / "d000" / "f00001.bin").write_bytes(b"changed too")
    started = time.monotonic()
    cached = sync(project, workspace, caches=caches)
    second = time.monotonic() - started
    assert [entry.path for entry in again.plan.files] == ["d000/f00000.bin"]
    assert [entry.path for entry in cached.plan.files] == ["d000/f00001.bin"]
    assert guest_manifest(workspace) == cached.scan.manifest
    with capsys.disabled():
        print(
            f"\n10,000 files / {synced.stream_bytes >> 20} MiB: full sync {first:.1f} s; one-file "
            f"incremental {uncached:.1f} s rehashing everything, {second:.1f} s with both hash caches"
        )


def test_owner_is_applied_to_everything_written(tmp_path: Path) -> None:
    project, workspace = _project(tmp_path / "project"), tmp_path / "ws"
    workspace.mkdir()
    sync(project, workspace, owner="4242:4343")
    for path in [*workspace.rglob("*")]:
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (4242, 4343), path


def test_names_that_are_not_utf8_are_reported_then_purged_at_sync_in(tmp_path: Path) -> None:
    project, workspace = _project(tmp_path / "project"), tmp_path / "ws"
    workspace.mkdir()
    sync(project, workspace)
    os.mkdir(os.path.join(os.fsencode(workspace), b"bad\xffdir"))
    Path(os.fsdecode(os.path.join(os.fsencode(workspace), b"bad\xffdir", b"x"))).write_text("x")
    after = guest_manifest(workspace)
    assert [(e.path, e.kind) for e in after.entries if "bad" in e.path] == [("bad\\xffdir", "special")]
    synced = sync(project, workspace)
    assert guest_manifest(workspace) == synced.scan.manifest
    assert not any(b"bad" in name for name in os.listdir(os.fsencode(workspace)))


def test_a_mode_change_never_reaches_an_inode_shared_with_a_file_outside(tmp_path: Path) -> None:
    project, workspace, outside = tmp_path / "project", tmp_path / "ws", tmp_path / "outside"
    for folder in (project, workspace, outside):
        folder.mkdir()
    (project / "f").write_text("same\n")
    (project / "f").chmod(0o600)
    (outside / "f").write_text("same\n")
    (outside / "f").chmod(0o644)
    os.link(outside / "f", workspace / "f")  # the agent hard-linked it in an earlier run
    synced = sync(project, workspace)
    assert synced.plan.modes == (("f", 0o600),)
    assert (outside / "f").stat().st_mode & 0o777 == 0o644
    assert (workspace / "f").stat().st_mode & 0o777 == 0o600
    assert (workspace / "f").stat().st_ino != (outside / "f").stat().st_ino


def _many_files(root: Path, count: int) -> Path:
    for index in range(count):
        folder = root / f"dir{index % 7}" / ("deep" if index % 3 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index}.txt").write_text(f"file {index}\n" * (index % 5 + 1))
    (root / "dir0" / "tool.sh").write_text("#!/bin/sh\n")
    (root / "dir0" / "tool.sh").chmod(0o750)
    (root / "dir1").chmod(0o700)
    (root / "to-tool").symlink_to("dir0/tool.sh")
    return root


def test_a_first_sync_of_many_files_unpacks_with_tar_into_the_empty_mirror(tmp_path: Path) -> None:
    # 200 files into an empty workspace: GNU tar unpacks them (no per-file Python work), with
    # the same result as the per-file path: contents, modes, links, fresh mtimes, root-owned.
    project, workspace = _many_files(tmp_path / "project", 200), tmp_path / "ws"
    workspace.mkdir()
    before = time.time() - 5
    synced = sync(project, workspace)
    assert synced.plan.files and len(synced.plan.files) >= 64  # the tar path's own threshold
    assert guest_manifest(workspace) == synced.scan.manifest
    assert (workspace / "dir0" / "tool.sh").stat().st_mode & 0o777 == 0o750
    assert (workspace / "dir1").stat().st_mode & 0o777 == 0o700
    assert os.readlink(workspace / "to-tool") == "dir0/tool.sh"
    assert all(p.lstat().st_mtime >= before for p in workspace.rglob("*.txt"))  # not tar's 1970
    assert {p.lstat().st_uid for p in workspace.rglob("*")} == {0}
    # A re-sync (the mirror is no longer empty) goes file by file and stays exact.
    (project / "dir2" / "f2.txt").write_text("changed\n")
    (project / "dir3" / "f3.txt").unlink()
    again = sync(project, workspace)
    assert len(again.plan.files) == 1
    assert guest_manifest(workspace) == again.scan.manifest


def test_a_tar_that_is_cut_short_fails_the_first_sync(tmp_path: Path) -> None:
    # The host cuts its stream when a file no longer matches its hash; the guest's tar must
    # then fail the sync, never leave a mirror that passes for the project.
    project, workspace = _many_files(tmp_path / "project", 100), tmp_path / "ws"
    workspace.mkdir()
    host = scan(project, ExcludeRules())
    plan = plan_sync(host.manifest, guest_manifest(workspace, purge=True))
    buffer = io.BytesIO()
    write_stream(host, plan, buffer)
    cut = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    done = wsync("apply", str(workspace), stdin=cut)
    assert done.returncode != 0
    assert b"unpacking the workspace failed" in done.stderr
