"""The collect cap and sparse files, against the real guest-side wsync.py run as a local process
(the way the host drives it over the agent's exec channel) and real files.

An agent's `truncate -s 20G big.bin` costs no disk in the guest; it must cost no time, memory or
disk on the host either: the cap is decided from the manifest's apparent sizes before a byte is
fetched, and files that do come back keep their holes in the run's changes and in the project.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sync_world import WSYNC, StreamingExec, sync_in

from vmsbx.sync.apply import apply
from vmsbx.sync.blobs import DEFAULT_MAX_BYTES
from vmsbx.sync.driver import ChangesTooLarge, collect, guest_manifest
from vmsbx.sync.manifest import Manifest, ManifestEntry
from vmsbx.sync.rules import exclude_rules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="wsync.py runs as root in the guest")
LOCAL = (sys.executable, str(WSYNC))
GiB = 1 << 30


def _synced(tmp_path: Path) -> tuple[Path, Path, Manifest]:
    """A project synced into a workspace; the base manifest the run starts from."""
    project, workspace = tmp_path / "project", tmp_path / "ws"
    project.mkdir()
    workspace.mkdir()
    (project / "a.txt").write_text("a\n")
    synced = sync_in(
        StreamingExec(), project, str(workspace), exclude_rules(None, ()), owner=(0, 0), wsync=LOCAL
    )
    return project, workspace, synced.scan.manifest


def _sparse(path: Path, size: int, *, head: bytes = b"", tail: bytes = b"") -> None:
    with path.open("wb") as handle:
        handle.write(head)
        handle.truncate(size)
        if tail:
            handle.seek(size - len(tail))
            handle.write(tail)


def test_default_cap_is_one_gib() -> None:
    assert GiB == DEFAULT_MAX_BYTES


def test_a_changeset_over_the_cap_is_refused_before_any_byte_is_fetched(tmp_path: Path) -> None:
    """3 GiB of apparent size (no blocks) against the default cap: refused from the manifest;
    no pack is asked for and nothing is written under the run's changes/."""
    _project, workspace, base = _synced(tmp_path)
    _sparse(workspace / "big.bin", 3 * GiB)
    (workspace / "small.txt").write_text("fine\n")
    channel = StreamingExec(refuse=("pack",))
    changes = tmp_path / "run" / "changes"
    with pytest.raises(ChangesTooLarge) as refused:
        collect(channel, base, str(workspace), changes, wsync=LOCAL)
    assert [call[len(LOCAL)] for call in channel.calls] == ["manifest"]
    assert not changes.exists()
    assert refused.value.total >= 3 * GiB and refused.value.largest[0][0] == "big.bin"
    assert "3,072 MiB" in refused.value.message and "collect cap of 1,024 MiB" in refused.value.message
    assert (workspace / "big.bin").stat().st_size == 3 * GiB  # the guest keeps it for inspection


def test_the_host_decides_from_the_manifest_alone(tmp_path: Path) -> None:
    """A manifest the guest already sent (the `ended` call brings it): the host refuses from its
    apparent sizes without a single guest call, whatever the guest did or did not check."""
    base = Manifest(entries=(ManifestEntry(path="a.txt", kind="file", mode=0o644, size=2, sha256="0" * 64),))
    listed = Manifest(
        entries=(
            *base.entries,
            ManifestEntry(path="big.bin", kind="file", mode=0o644, size=20 * GiB, sha256="1" * 64),
        )
    )
    channel = StreamingExec(refuse=("manifest", "pack"))
    changes = tmp_path / "changes"
    with pytest.raises(ChangesTooLarge):
        collect(channel, base, "/nonexistent", changes, max_bytes=GiB, wsync=LOCAL, listed=listed)
    assert channel.calls == [] and not changes.exists()


def test_the_guest_refuses_before_hashing_anything(tmp_path: Path) -> None:
    """`manifest --max-new-bytes` with a 20 GiB sparse file: exit 5 from a stat walk alone (its
    hash cache is left as it was: no hash pass ran), where hashing the zeros took minutes."""
    _project, workspace, _base = _synced(tmp_path)
    cache = tmp_path / "cache.json"
    guest_manifest(StreamingExec(), str(workspace), cache=str(cache), wsync=LOCAL)
    before = cache.read_bytes()
    _sparse(workspace / "big.bin", 20 * GiB)
    started = time.monotonic()
    done = subprocess.run(
        [*LOCAL, "manifest", str(workspace), "--cache", str(cache), f"--max-new-bytes={GiB}"],
        capture_output=True,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 5, done.stderr
    said = json.loads(done.stderr.decode().splitlines()[-1])["too_large"]
    assert said == {"bytes": 20 * GiB, "cap": GiB, "largest": [["big.bin", 20 * GiB]]}
    assert done.stdout == b"" and cache.read_bytes() == before
    assert took < 10, f"{took:.1f} s: the guest read the file"


def test_files_the_cache_vouches_for_do_not_count(tmp_path: Path) -> None:
    """The guest's early check counts only surely new contents: an unchanged large file is not
    counted, nor new git objects (they come back as a bundle); a new file is."""
    _project, workspace, _base = _synced(tmp_path)
    cache = tmp_path / "cache.json"
    _sparse(workspace / "old.bin", 2 * 1024 * 1024, head=b"x")
    guest_manifest(StreamingExec(), str(workspace), cache=str(cache), wsync=LOCAL)
    argv = [*LOCAL, "manifest", str(workspace), "--cache", str(cache), "--max-new-bytes=1048576"]
    assert subprocess.run(argv, capture_output=True, check=False).returncode == 0
    (workspace / ".git").mkdir()
    (workspace / ".git" / "pack").write_bytes(b"y" * (1024 * 1024 + 1))  # comes back as a bundle
    assert subprocess.run(argv, capture_output=True, check=False).returncode == 0
    (workspace / "new.bin").write_bytes(b"y" * (1024 * 1024 + 1))
    assert subprocess.run(argv, capture_output=True, check=False).returncode == 5


def test_sparse_files_stay_sparse_in_the_changes_and_the_project(tmp_path: Path) -> None:
    """A 128 MiB file with 4 KiB of data at each end travels as zeros, but lands as holes: in
    the run's blob store and in the project, with the right content."""
    project, workspace, base = _synced(tmp_path)
    size = 128 * 1024 * 1024
    _sparse(workspace / "big.bin", size, head=b"H" * 4096, tail=b"T" * 4096)
    changes = tmp_path / "run" / "changes"
    got = collect(StreamingExec(), base, str(workspace), changes, wsync=LOCAL)
    assert got.received.stored == ("big.bin",)
    (blob,) = [path for path in (changes / "blobs").iterdir()]
    assert blob.stat().st_size == size
    assert blob.stat().st_blocks * 512 < 4 * 1024 * 1024, "the blob was written out in full"
    assert not (changes / "incoming.tar").exists()
    digest = got.changeset.digest
    report = apply(project, got.changeset, got.store, base=base, shown_digest=digest, include_sensitive=False)
    assert report.applied and not report.conflicts
    landed = project / "big.bin"
    assert landed.stat().st_size == size
    assert landed.stat().st_blocks * 512 < 4 * 1024 * 1024, "the project's copy was expanded"
    with landed.open("rb") as handle:
        assert handle.read(4096) == b"H" * 4096
        assert handle.read(1 << 20) == bytes(1 << 20)
        handle.seek(size - 4096)
        assert handle.read() == b"T" * 4096
