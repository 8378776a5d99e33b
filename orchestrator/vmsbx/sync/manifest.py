"""What a tree holds: the manifest both sides of the sync compute and compare.

The wire format (JSON, the same from the host's `scan` and the guest's `wsync.py manifest`):

    {"version": 1, "entries": [
        {"path": "src", "kind": "dir", "mode": 493},
        {"path": "src/a.py", "kind": "file", "mode": 420, "size": 12, "sha256": "<64 hex>"},
        {"path": "link", "kind": "symlink", "target": "src/a.py"},
        {"path": "fifo", "kind": "special"}]}

Paths are relative POSIX paths, sorted so that a directory comes before what it holds; modes
are permission bits (`stat.S_IMODE`). The host scan never follows a symlink: a link is recorded
with its target text and never read through.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.errors import SyncError
from vmsbx.paths import write_private
from vmsbx.sync.names import path_problem, sort_key
from vmsbx.sync.rules import ExcludeRules

EntryKind = Literal["file", "dir", "symlink", "special"]
_CHUNK = 1 << 20
_NOFOLLOW = int(getattr(os, "O_NOFOLLOW", 0))
_NONBLOCK = int(getattr(os, "O_NONBLOCK", 0))
GIT_CONFIG = ".git/config"
# Manifests come from the guest too: cap what we are willing to parse.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024


class ManifestEntry(BaseModel):
    """One thing in a tree. Files carry size and hash; links their target; dirs their mode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="Relative POSIX path (may be hostile when it came from the guest).")
    kind: EntryKind = Field(description="file, dir, symlink, or special (fifo, socket, device).")
    mode: int | None = Field(default=None, ge=0, le=0o7777, description="Permission bits; files and dirs.")
    size: int | None = Field(default=None, ge=0, description="Size in bytes; files only.")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="Content hash; files.")
    target: str | None = Field(default=None, description="Link target text; symlinks only.")


class Manifest(BaseModel):
    """A whole tree, as the wire format above."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    entries: tuple[ManifestEntry, ...] = Field(default=(), description="Sorted, parents first.")

    def by_path(self) -> dict[str, ManifestEntry]:
        """The entries keyed by path."""
        return {entry.path: entry for entry in self.entries}

    def to_json(self) -> bytes:
        """The wire format (compact; absent fields left out)."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse the wire format strictly; raise SyncError for anything else."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise SyncError("the workspace manifest is too large", hint="the workspace holds too many files")
        try:
            return cls.model_validate_json(data)
        except ValueError as error:
            raise SyncError(
                f"the workspace manifest is not valid: {str(error)[:300]}",
                hint="`vmsbx up` reinstalls the guest's sync helper",
            ) from None


@dataclass(frozen=True, slots=True)
class ExcludedItem:
    """Something sync-in left out, and why (shown to the user)."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Scan:
    """The host project as sync-in sees it."""

    root: Path
    manifest: Manifest
    excluded: tuple[ExcludedItem, ...]
    overrides: Mapping[str, bytes] = field(default_factory=dict)
    """Content sent instead of the file's own: the sanitized `.git/config` (and submodules')."""


# --- .git/config ------------------------------------------------------------------------------

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"]*@")
_SECRET_KEYS = re.compile(r"^\s*(extraheader|token|password|passwd|oauth\w*)\s*=", re.IGNORECASE)


def sanitize_git_config(data: bytes) -> bytes:
    """Remove credentials from a git config: `user:token@` in URLs and auth-header/token keys."""
    text = data.decode("utf-8", errors="surrogateescape")
    lines = []
    for line in text.splitlines(keepends=True):
        if _SECRET_KEYS.match(line):
            continue
        lines.append(_URL_CREDENTIALS.sub(lambda match: match["scheme"], line))
    return "".join(lines).encode("utf-8", errors="surrogateescape")


def _is_git_config(path: str) -> bool:
    # The repository's own config and its submodules' (.git/modules/<name>/config).
    return path == GIT_CONFIG or (path.startswith(".git/modules/") and path.endswith("/config"))


# --- scanning ---------------------------------------------------------------------------------

_CacheRow = tuple[int, int, int, int, str]


def scan(root: Path, rules: ExcludeRules, *, cache_file: Path | None = None) -> Scan:
    """Walk `root` without following any symlink and return its manifest and what was left out.

    Regular files are hashed (sha256); with `cache_file`, a file whose (size, mtime_ns,
    ctime_ns, inode) match the cached row is not read again, and the cache is rewritten.
    Special files, names that are not valid UTF-8 and everything the rules match are left out
    and listed.
    """
    cache = _load_cache(cache_file)
    fresh: dict[str, _CacheRow] = {}
    entries: list[ManifestEntry] = []
    excluded: list[ExcludedItem] = []
    overrides: dict[str, bytes] = {}
    pending = [("", root)]
    while pending:
        prefix, directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                items = sorted(listing, key=lambda item: item.name)
        except OSError as error:
            raise SyncError(
                f"cannot list {directory}: {error.strerror or error}",
                hint="make the folder readable or exclude it with [sync] exclude",
            ) from None
        for item in items:
            path = prefix + item.name
            problem = path_problem(path)
            if problem is not None:
                excluded.append(ExcludedItem(path, problem))
                continue
            reason = rules.match(path)
            if reason is not None:
                excluded.append(ExcludedItem(path, reason))
                continue
            info = item.stat(follow_symlinks=False)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISDIR(info.st_mode):
                entries.append(ManifestEntry(path=path, kind="dir", mode=mode))
                pending.append((path + "/", Path(item.path)))
            elif stat.S_ISLNK(info.st_mode):
                target = os.readlink(item.path)  # noqa: PTH115 (str in, str out)
                entries.append(ManifestEntry(path=path, kind="symlink", target=target))
            elif stat.S_ISREG(info.st_mode):
                if _is_git_config(path):
                    data = sanitize_git_config(_read_file(Path(item.path)))
                    overrides[path] = data
                    digest, size = hashlib.sha256(data).hexdigest(), len(data)
                else:
                    key = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
                    row = cache.get(path)
                    digest = row[4] if row is not None and row[:4] == key else _hash_file(Path(item.path))
                    fresh[path] = (*key, digest)
                    size = info.st_size
                entries.append(ManifestEntry(path=path, kind="file", mode=mode, size=size, sha256=digest))
            else:
                excluded.append(ExcludedItem(path, "special file (fifo, socket or device)"))
    entries.sort(key=lambda entry: sort_key(entry.path))
    excluded.sort(key=lambda item: sort_key(item.path))
    _save_cache(cache_file, fresh)
    return Scan(
        root=root, manifest=Manifest(entries=tuple(entries)), excluded=tuple(excluded), overrides=overrides
    )


def open_regular(path: Path) -> int:
    """Open a regular file for reading without following a link (nor blocking on a FIFO)."""
    descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise SyncError(f"{path} is no longer a regular file", hint="run again once the project is still")
    return descriptor


def _read_file(path: Path) -> bytes:
    with os.fdopen(open_regular(path), "rb") as handle:
        return handle.read()


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _load_cache(cache_file: Path | None) -> dict[str, _CacheRow]:
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        path: (row[0], row[1], row[2], row[3], row[4])
        for path, row in data.items()
        if isinstance(row, list) and len(row) == 5
    }


def _save_cache(cache_file: Path | None, rows: dict[str, _CacheRow]) -> None:
    if cache_file is None:
        return
    write_private(cache_file, json.dumps(rows))
