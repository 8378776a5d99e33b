"""The content store of a changeset: changed files' bytes, kept as changes/blobs/<sha256>.

The tar comes from the guest (`wsync.py pack`) and is hostile: it is read as a stream, member by
member, never extracted; each member must be a regular file the changeset asks for, and is kept
only when its sha256 equals the changeset's. Anything else is rejected and reported.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from vmsbx.errors import SyncError
from vmsbx.paths import ensure_private_dir
from vmsbx.sync.changeset import Changeset
from vmsbx.sync.sparse import SparseWriter

DEFAULT_MAX_BYTES = 1024 * 1024 * 1024  # config: [sync] collect_max
_MAX_MEMBERS = 1_000_000
_CHUNK = 1 << 20
_NOFOLLOW = int(getattr(os, "O_NOFOLLOW", 0))
_BINARY = int(getattr(os, "O_BINARY", 0))


@dataclass(frozen=True, slots=True)
class BlobStore:
    """A folder of blobs named by their sha256."""

    folder: Path

    def path_for(self, sha256: str) -> Path:
        """Where the blob with this hash lives (it may be absent)."""
        if len(sha256) != 64 or any(char not in "0123456789abcdef" for char in sha256):
            raise SyncError(f"not a sha256: {sha256[:80]!r}")
        return self.folder / sha256

    def has(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        return self.path_for(sha256).is_file()


@dataclass(frozen=True, slots=True)
class ReceiveReport:
    """What `receive` kept and what it turned away."""

    stored: tuple[str, ...]
    """Paths whose content is now in the store."""
    rejected: tuple[tuple[str, str], ...]
    """(member name, reason) for members that were not kept."""
    missing: tuple[str, ...]
    """Wanted paths that did not arrive."""


def wanted_paths(changeset: Changeset) -> dict[str, str]:
    """path -> sha256 of the new regular files that apply may need (never git or refused ones)."""
    return {
        entry.path: entry.new_sha256
        for entry in changeset.entries
        if entry.kind == "file"
        and entry.change in {"added", "modified"}
        and entry.new_sha256 is not None
        and entry.classification in {"apply", "sensitive"}
    }


def receive(
    stream: BinaryIO, changeset: Changeset, store: BlobStore, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> ReceiveReport:
    """Read a tar from `stream` into `store`, keeping only wanted members with the right hash.

    Raises SyncError when the stream is not a tar or exceeds `max_bytes` (what was stored stays:
    every kept blob is verified).
    """
    wanted = wanted_paths(changeset)
    ensure_private_dir(store.folder)
    stored: list[str] = []
    rejected: list[tuple[str, str]] = []
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for count, member in enumerate(tar):
                if count >= _MAX_MEMBERS:
                    raise SyncError("the guest sent too many files", hint="run again")
                expected = wanted.pop(member.name, None)
                if expected is None:
                    rejected.append((member.name, "not asked for (or sent twice)"))
                    continue
                if not member.isreg():
                    rejected.append((member.name, "not a regular file"))
                    continue
                total += member.size
                if total > max_bytes:
                    raise SyncError(
                        f"the agent's changed files exceed {max_bytes >> 20} MiB",
                        hint="discard the run, or apply after removing large files in the guest",
                    )
                source = tar.extractfile(member)
                assert source is not None
                problem = _store(source, expected, store)
                if problem:
                    rejected.append((member.name, problem))
                else:
                    stored.append(member.name)
    except tarfile.TarError as error:
        raise SyncError(f"the guest's file stream is not a valid tar: {error}", hint="run again") from None
    return ReceiveReport(tuple(stored), tuple(rejected), tuple(sorted(wanted)))


def _store(source: IO[bytes], expected: str, store: BlobStore) -> str:
    target = store.path_for(expected)
    temp = store.folder / f".incoming-{os.getpid()}"
    digest = hashlib.sha256()
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o600)
    try:
        sink = SparseWriter(fd)
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            sink.write(chunk)
        sink.finish()
        os.fsync(fd)
    finally:
        os.close(fd)
    if digest.hexdigest() != expected:
        temp.unlink()
        return "content does not match the hash in the changeset"
    temp.replace(target)
    return ""
