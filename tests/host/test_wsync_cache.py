"""The guest's hash cache across a run's start: trusted for what only root touched, never more.

A run's start chowns the whole workspace to the run's new user, which changes every file's
ctime; without help the manifest after the run re-hashes the whole project. The launcher checks
the cache against the mirror right before the unit starts, the unit's ExecStartPre=+ stamps a
time after the chown, and the manifest after the run trusts the cache for files whose only
change is a ctime older than that stamp. These tests replay that sequence on a real filesystem
with the real wsync.py, and show the agent cannot use it to hide a change.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path
from types import ModuleType

import pytest
from sync_world import WSYNC, guest_manifest, wsync

from vmsbx.sync.manifest import Manifest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="wsync.py runs as root in the guest")

# A digest no file has: where a manifest reports it, the cache was trusted, not the file read.
PLANTED = "f" * 64
TICK = 0.02  # ctime's clock is coarse (a jiffy): keep the steps of the sequence apart


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wsync_under_test", WSYNC)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(manifest: Manifest) -> dict[str, str | None]:
    return {entry.path: entry.sha256 for entry in manifest.entries if entry.kind == "file"}


def _workspace(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    (workspace / "src").mkdir(parents=True)
    (workspace / "README.md").write_text("hello\n")
    (workspace / "src" / "app.py").write_text("print('hi')\n")
    return workspace


def _plant(cache: Path) -> None:
    entries = json.loads(cache.read_text())
    cache.write_text(json.dumps({path: [*key[:4], PLANTED] for path, key in entries.items()}))


def _run_start(workspace: Path, stamp: Path) -> int:
    """What systemd does at the unit's start: chown the tree to the run's user, then the
    ExecStartPre=+ stamp. Returns the stamp's time, as the launcher reads it."""
    for path in [workspace, *workspace.rglob("*")]:
        os.lchown(path, 61234, 61234)
    time.sleep(TICK)
    stamp.touch()
    time.sleep(TICK)
    return stamp.stat().st_mtime_ns


def _agent_rewrites(path: Path, content: str) -> None:
    """Same size, same inode, old mtime put back: only ctime tells."""
    before = path.stat()
    assert len(content.encode()) == before.st_size
    with path.open("r+") as handle:
        handle.write(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _after_run(workspace: Path, cache: Path, stamp_ns: int | None) -> dict[str, str | None]:
    extra = ["--stable-before", str(stamp_ns)] if stamp_ns is not None else []
    done = wsync("manifest", str(workspace), "--cache", str(cache), *extra)
    assert done.returncode == 0, done.stderr
    return _digests(Manifest.from_json(done.stdout))


def test_files_only_chowned_at_the_run_start_are_not_read_again(tmp_path: Path) -> None:
    workspace, cache, stamp = _workspace(tmp_path), tmp_path / "cache.json", tmp_path / "started"
    guest_manifest(workspace, cache)
    assert _module().revalidate_cache(str(workspace), str(cache), {}) == 2
    _plant(cache)
    stamp_ns = _run_start(workspace, stamp)
    _agent_rewrites(workspace / "src" / "app.py", "print('HI')\n")
    without = tmp_path / "without.json"
    shutil.copy(cache, without)

    trusted = _after_run(workspace, cache, stamp_ns)
    assert trusted["README.md"] == PLANTED  # only chowned before the stamp: the cache answered
    assert trusted["src/app.py"] == _sha(workspace / "src" / "app.py")  # changed after it: read
    # Without the stamp, the chown alone sends every file to be hashed again.
    assert _after_run(workspace, without, None) == {
        "README.md": _sha(workspace / "README.md"),
        "src/app.py": _sha(workspace / "src" / "app.py"),
    }


def test_a_change_made_before_the_launcher_checked_the_cache_is_never_trusted(tmp_path: Path) -> None:
    workspace, cache, stamp = _workspace(tmp_path), tmp_path / "cache.json", tmp_path / "started"
    guest_manifest(workspace, cache)
    time.sleep(TICK)
    # An earlier run changed the file after the cache was written (say it was lost, never
    # collected): the launcher's check drops the entry, so the chown cannot launder it.
    _agent_rewrites(workspace / "README.md", "HELLO\n")
    assert _module().revalidate_cache(str(workspace), str(cache), {}) == 1
    stamp_ns = _run_start(workspace, stamp)
    assert _after_run(workspace, cache, stamp_ns)["README.md"] == _sha(workspace / "README.md")


def test_a_stamp_taken_before_the_chown_trusts_nothing(tmp_path: Path) -> None:
    workspace, cache, stamp = _workspace(tmp_path), tmp_path / "cache.json", tmp_path / "started"
    guest_manifest(workspace, cache)
    _module().revalidate_cache(str(workspace), str(cache), {})
    _plant(cache)
    stamp.touch()
    time.sleep(TICK)
    early = stamp.stat().st_mtime_ns
    _run_start(workspace, tmp_path / "later")
    assert set(_after_run(workspace, cache, early).values()) == {
        _sha(workspace / "README.md"),
        _sha(workspace / "src" / "app.py"),
    }


def test_files_the_sync_wrote_enter_the_cache_with_the_hash_they_were_checked_against(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, cache = tmp_path / "ws", tmp_path / "cache.json"
    workspace.mkdir()
    body = b"written by the sync\n"
    digest = hashlib.sha256(body).hexdigest()
    header = {
        "version": 1,
        "delete": [],
        "dirs": [["d", 0o755]],
        "links": [],
        "files": [{"path": "d/f", "mode": 0o644, "size": len(body), "sha256": digest}],
        "modes": [],
    }
    stream = io.BytesIO()
    stream.write(json.dumps(header).encode() + b"\n")
    with tarfile.open(fileobj=stream, mode="w|") as tar:
        info = tarfile.TarInfo("d/f")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    stream.seek(0)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream))
    module = _module()
    written = module.apply_stream(str(workspace), None)
    assert written == {"d/f": digest}
    assert module.revalidate_cache(str(workspace), str(cache), written) == 1
    entry = json.loads(cache.read_text())["d/f"]
    info_now = (workspace / "d" / "f").stat()
    assert entry == [info_now.st_size, info_now.st_mtime_ns, info_now.st_ctime_ns, info_now.st_ino, digest]
