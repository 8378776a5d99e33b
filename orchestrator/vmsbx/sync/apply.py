"""Bring a reviewed changeset back into the host project, all or nothing.

Guarantees (each tested in tests/host/test_sync_apply.py):
- only the changeset the user saw is applied: its digest must equal the one shown;
- a host path whose state differs from the sync-in (the base) is a conflict: reported, untouched;
- every path is reached through directory descriptors opened from the project root with
  O_DIRECTORY|O_NOFOLLOW, so a symlinked parent cannot redirect a write or a deletion;
- files are written to a temporary name in their folder, fsynced and renamed into place;
  setuid/setgid/sticky bits never come back; nothing outside the project is touched;
- every link is resolved against the project as it will be (the host's links included, also
  those the guest never saw): one that leaves the project or passes through a link is refused;
- if any step fails, every step before it is undone: the project is exactly as before.
POSIX hosts only (Windows has no directory descriptors).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmsbx.errors import SyncError
from vmsbx.sync.blobs import BlobStore
from vmsbx.sync.changeset import ChangeEntry, Changeset, entries_digest, mode_notes
from vmsbx.sync.links import NodeKind, unsafe_links
from vmsbx.sync.manifest import Manifest
from vmsbx.sync.names import fold_key, sort_key
from vmsbx.sync.sparse import SparseWriter

_DIR_FLAGS = os.O_RDONLY | int(getattr(os, "O_DIRECTORY", 0)) | int(getattr(os, "O_NOFOLLOW", 0))
_FILE_FLAGS = os.O_RDONLY | int(getattr(os, "O_NOFOLLOW", 0)) | int(getattr(os, "O_NONBLOCK", 0))
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What happened to each entry of the changeset."""

    applied: tuple[str, ...] = ()
    conflicts: tuple[tuple[str, str], ...] = ()
    """(path, why): the host changed since sync-in, or the change depends on such a path."""
    refused: tuple[tuple[str, str], ...] = ()
    """(path, why): never applied (outside the project, bad or colliding name, special file)."""
    held_back: tuple[str, ...] = ()
    """Sensitive paths left out because --include-sensitive was not given."""
    git: tuple[str, ...] = ()
    """Paths under .git/: never written as files."""
    already: tuple[str, ...] = ()
    """Paths the host already has as the changeset wants them (an earlier apply): left alone."""
    mode_notes: tuple[tuple[str, str], ...] = ()
    """(path, what): applied paths whose mode is not the guest's (bits dropped or reduced)."""


class _Unsafe(Exception):
    """A host path component that is a symlink or not a directory."""


def apply(
    project: Path,
    changeset: Changeset,
    blobs: BlobStore,
    *,
    base: Manifest,
    shown_digest: str,
    include_sensitive: bool,
) -> ApplyReport:
    """Apply `changeset` to `project` (see the module guarantees); raise SyncError if it failed.

    `shown_digest` is the digest of the changeset the user reviewed; `base` the manifest of
    the sync-in the changeset was computed against.
    """
    if not hasattr(os, "O_DIRECTORY"):
        raise SyncError("applying changes needs a POSIX host", hint="apply on macOS or Linux")
    digest = entries_digest(changeset.entries)
    if digest != changeset.digest or digest != shown_digest:
        raise SyncError(
            "the stored changes are not the ones you reviewed (their digest differs)",
            hint="look at `vmsbx diff` again and apply what it shows",
        )
    _check_base(changeset, base)
    root_fd = os.open(project.resolve(), _DIR_FLAGS)
    tree = _Tree(root_fd)
    try:
        base_links = tuple(entry.path for entry in base.entries if entry.kind == "symlink")
        plan = _decide(tree, changeset, blobs, include_sensitive=include_sensitive, base_links=base_links)
        accepted = [entry for entry in changeset.entries if entry.path in plan.accepted]
        journal = _Journal()
        try:
            _execute(tree, accepted, blobs, journal)
        except BaseException as error:
            problems = journal.undo()
            detail = f"; undoing left these behind: {'; '.join(problems)}" if problems else ""
            raise SyncError(
                f"applying failed ({type(error).__name__}: {error}); the project is as before{detail}",
                hint="fix the cause and run `vmsbx apply` again",
            ) from error
        journal.commit()
    finally:
        tree.close()
    return ApplyReport(
        applied=tuple(entry.path for entry in accepted),
        conflicts=tuple(sorted(plan.conflicts.items())),
        refused=tuple(sorted(plan.refused.items())),
        held_back=tuple(plan.held_back),
        git=tuple(plan.git),
        already=tuple(sorted(plan.already)),
        mode_notes=tuple(
            (entry.path, "; ".join(mode_notes(entry))) for entry in accepted if mode_notes(entry)
        ),
    )


def _check_base(changeset: Changeset, base: Manifest) -> None:
    before = base.by_path()
    for entry in changeset.entries:
        old = before.get(entry.path)
        same = (
            entry.old_kind is None
            if old is None
            else (old.kind, old.sha256, old.mode, old.target)
            == (entry.old_kind, entry.old_sha256, entry.old_mode, entry.old_target)
        )
        if not same:
            raise SyncError(
                f"the changeset does not belong to this run's sync-in ({entry.path!r} differs)",
                hint="the run folder is damaged; discard the run",
            )


# --- the host tree through directory descriptors ---------------------------------------------


class _Tree:
    """Directory descriptors of the project, opened from the root without following links."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._open: dict[str, int] = {"": root_fd}
        self._all: list[int] = [root_fd]

    def dir(self, path: str) -> int | None:
        """The descriptor of directory `path` ("" is the root); None when it does not exist.

        Raises _Unsafe when a component is a symlink or not a directory.
        """
        if path in self._open:
            return self._open[path]
        parent_path, _, name = path.rpartition("/")
        parent = self.dir(parent_path)
        if parent is None:
            return None
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _Unsafe(f"{path} is a symlink or not a folder on the host") from None
            raise
        self._open[path] = fd
        self._all.append(fd)
        return fd

    def forget(self, path: str) -> None:
        """Drop cached descriptors at and below `path` (it was moved); they stay open until close."""
        for key in [key for key in self._open if key == path or key.startswith(path + "/")]:
            del self._open[key]

    def close(self) -> None:
        for fd in self._all:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class _State:
    kind: str
    sha256: str | None = None
    mode: int | None = None
    target: str | None = None


def _state(tree: _Tree, path: str) -> _State | None:
    parent_path, _, name = path.rpartition("/")
    parent = tree.dir(parent_path)
    if parent is None:
        return None
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        return _State("dir", mode=stat.S_IMODE(info.st_mode))
    if stat.S_ISLNK(info.st_mode):
        return _State("symlink", target=os.readlink(name, dir_fd=parent))
    if not stat.S_ISREG(info.st_mode):
        return _State("special")
    fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
        return _State("file", sha256=digest.hexdigest(), mode=stat.S_IMODE(os.fstat(fd).st_mode))
    finally:
        os.close(fd)


def _matches_new(entry: ChangeEntry, current: _State | None) -> bool:
    if entry.change == "deleted":
        return current is None
    if current is None or current.kind != entry.kind:
        return False
    if current.kind == "file":
        return current.sha256 == entry.new_sha256 and current.mode == entry.new_mode
    if current.kind == "symlink":
        return current.target == entry.target
    return current.mode == entry.new_mode if entry.change == "mode" else True


def _matches_base(entry: ChangeEntry, current: _State | None) -> bool:
    if entry.old_kind is None:
        return current is None
    if current is None or current.kind != entry.old_kind:
        return False
    if current.kind == "file":
        return current.sha256 == entry.old_sha256 and current.mode == entry.old_mode
    if current.kind == "symlink":
        return current.target == entry.old_target
    return current.kind == "dir"


# --- deciding ---------------------------------------------------------------------------------


@dataclass
class _Decision:
    accepted: set[str] = field(default_factory=set)
    conflicts: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    held_back: list[str] = field(default_factory=list)
    git: list[str] = field(default_factory=list)
    already: set[str] = field(default_factory=set)


def _decide(
    tree: _Tree,
    changeset: Changeset,
    blobs: BlobStore,
    *,
    include_sensitive: bool,
    base_links: tuple[str, ...],
) -> _Decision:
    decision = _Decision()
    by_path = {entry.path: entry for entry in changeset.entries}
    for entry in changeset.entries:
        if entry.classification == "refused":
            decision.refused[entry.path] = entry.reason
        elif entry.classification == "git":
            decision.git.append(entry.path)
        elif entry.classification == "sensitive" and not include_sensitive:
            decision.held_back.append(entry.path)
        else:
            problem = _host_problem(tree, entry, by_path, blobs)
            if problem is _ALREADY:
                decision.already.add(entry.path)
            elif problem is None:
                decision.accepted.add(entry.path)
            else:
                decision.conflicts[entry.path] = problem
    # A change that depends on one not applied is not applied either: children of a folder
    # that is not created, and the removal of a folder whose contents are not all removed.
    # Links are judged against the outcome, which each change left out alters: to a fixpoint.
    changed = True
    while changed:
        changed = False
        for path in sorted(decision.accepted, key=sort_key):
            blocker = _blocker(by_path[path], by_path, decision.accepted | decision.already)
            if blocker is not None:
                decision.accepted.discard(path)
                decision.conflicts[path] = f"depends on {blocker!r}, which is not applied"
                changed = True
        for path, why in _unsafe_links_after(tree, by_path, decision.accepted, base_links).items():
            decision.accepted.discard(path)
            decision.refused[path] = why
            changed = True
    return decision


def _unsafe_links_after(
    tree: _Tree, by_path: dict[str, ChangeEntry], accepted: set[str], base_links: tuple[str, ...]
) -> dict[str, str]:
    """The accepted links that would leave the project or pass through a link once applied."""

    def lookup(path: str) -> tuple[NodeKind, str | None] | None:
        entry = by_path.get(path)
        if entry is not None and path in accepted:
            return None if entry.change == "deleted" else (entry.kind, entry.target)
        return _host_node(tree, path)

    new_links = {
        path for path in accepted if by_path[path].kind == "symlink" and by_path[path].change != "deleted"
    }
    links = []
    for path in sorted({*new_links, *base_links}):
        node = lookup(path)
        if node is not None and node[0] == "symlink":
            links.append((path, node[1] or ""))
    return unsafe_links(links, lookup, new_links)


def _host_node(tree: _Tree, path: str) -> tuple[NodeKind, str | None] | None:
    """What the host holds at `path` (links not followed); None when nothing, or when a folder
    on the way is a link or not a folder (apply replaces such a folder or writes nothing there)."""
    parent_path, _, name = path.rpartition("/")
    try:
        parent = tree.dir(parent_path)
        if parent is None:
            return None
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except (_Unsafe, FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(info.st_mode):
        return "symlink", os.readlink(name, dir_fd=parent)
    if stat.S_ISDIR(info.st_mode):
        return "dir", None
    return ("file" if stat.S_ISREG(info.st_mode) else "special"), None


def _blocker(entry: ChangeEntry, by_path: dict[str, ChangeEntry], accepted: set[str]) -> str | None:
    parent = entry.path.rpartition("/")[0]
    if entry.change != "deleted" and _creates_dir(by_path.get(parent)) and parent not in accepted:
        return parent
    if _removes_dir(entry):
        prefix = entry.path + "/"
        for other in by_path:
            if other.startswith(prefix) and other not in accepted:
                return other
    return None


def _creates_dir(entry: ChangeEntry | None) -> bool:
    return entry is not None and entry.kind == "dir" and entry.change in {"added", "modified"}


def _removes_dir(entry: ChangeEntry) -> bool:
    return entry.old_kind == "dir" and (entry.change == "deleted" or entry.kind != "dir")


def _host_problem(
    tree: _Tree, entry: ChangeEntry, by_path: dict[str, ChangeEntry], blobs: BlobStore
) -> str | None:
    parent_path, _, name = entry.path.rpartition("/")
    parent_created = _creates_dir(by_path.get(parent_path))
    try:
        current = _state(tree, entry.path)
    except _Unsafe as error:
        if not parent_created:
            return str(error)
        # The folder replaces a link (checked by the folder's own entry): nothing is in it yet.
        current = None
    except OSError as error:
        return f"cannot read it on the host: {error.strerror or error}"
    if _matches_new(entry, current):
        return _ALREADY
    if not _matches_base(entry, current):
        return "changed on the host since the run started"
    if entry.change != "deleted" and not parent_created:
        try:
            parent = tree.dir(parent_path)
        except _Unsafe as error:
            return str(error)
        if parent is None:
            return f"its folder {parent_path!r} is missing on the host"
        if entry.old_kind is None:
            key = fold_key(name)
            names = os.listdir(parent)  # noqa: PTH208 (a directory descriptor)
            twins = [other for other in names if other != name and fold_key(other) == key]
            if twins:
                return f"name collides with the host's {twins[0]!r} on case-insensitive file systems"
    if _removes_dir(entry):
        fd = tree.dir(entry.path)
        leaving = {
            other.rpartition("/")[2]
            for other, item in by_path.items()
            if other.rpartition("/")[0] == entry.path and item.change == "deleted"
        }
        held = os.listdir(fd) if fd is not None else []  # noqa: PTH208 (a directory descriptor)
        extra = sorted(set(held) - leaving)
        if extra:
            return f"the host folder also holds {extra[0]!r}, which was not synced"
    needs_blob = entry.kind == "file" and entry.change in {"added", "modified"}
    if needs_blob and (entry.new_sha256 is None or not blobs.has(entry.new_sha256)):
        return "its content did not arrive from the guest"
    if entry.kind not in {"file", "dir", "symlink"}:
        return "special file"
    return None


# A marker from _host_problem: the host already holds the new state.
_ALREADY = "already applied"


# --- doing ------------------------------------------------------------------------------------


def _fsync(fd: int) -> None:
    os.fsync(fd)


class _Journal:
    """Undo steps for everything done so far, and backups to delete once all succeeded."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._labels: list[str] = []
        self._backups: list[tuple[int, str, bool]] = []
        self._token = secrets.token_hex(4)
        self._count = 0

    def backup_name(self) -> str:
        self._count += 1
        return f".vmsbx-apply-{self._token}-{self._count}"

    def did(self, label: str, undo: Callable[[], None]) -> None:
        self._undo.append(undo)
        self._labels.append(label)

    def backup(self, parent: int, name: str, is_dir: bool) -> None:
        self._backups.append((parent, name, is_dir))

    def undo(self) -> list[str]:
        problems = []
        for label, step in zip(reversed(self._labels), reversed(self._undo), strict=True):
            try:
                step()
            except OSError as error:
                problems.append(f"{label}: {error}")
        return problems

    def commit(self) -> None:
        for parent, name, is_dir in self._backups:
            if is_dir:
                os.rmdir(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)


def _execute(tree: _Tree, accepted: list[ChangeEntry], blobs: BlobStore, journal: _Journal) -> None:
    # Removals deepest first (children leave before their folder), then creations parents first.
    for entry in sorted(accepted, key=lambda item: sort_key(item.path), reverse=True):
        if entry.change == "deleted" or (entry.change == "modified" and entry.old_kind != entry.kind):
            _move_aside(tree, entry, journal)
    touched: set[int] = set()
    modes_last: list[tuple[int, str, ChangeEntry]] = []
    for entry in accepted:
        if entry.change == "deleted":
            continue
        parent_path, _, name = entry.path.rpartition("/")
        parent = tree.dir(parent_path)
        if parent is None:
            raise SyncError(f"{parent_path} vanished during apply")
        touched.add(parent)
        if entry.change == "mode":
            modes_last.append((parent, name, entry))
        elif entry.kind == "dir":
            os.mkdir(name, 0o700, dir_fd=parent)
            journal.did(f"created {entry.path}", functools.partial(os.rmdir, name, dir_fd=parent))
            modes_last.append((parent, name, entry))
        else:
            _put(parent, name, entry, blobs, journal)
    # Modes last and deepest first, so that a read-only folder cannot stop a write into it
    # (and, undone first, cannot stop the undo either).
    for parent, name, entry in reversed(modes_last):
        if entry.change == "mode":
            _chmod(parent, name, entry, journal)
        else:
            _set_mode(parent, name, "dir", entry.new_mode if entry.new_mode is not None else 0o755)
            journal.did(
                f"set the mode of {entry.path}", functools.partial(_set_mode, parent, name, "dir", 0o700)
            )
    for fd in touched:
        _fsync(fd)


def _move_aside(tree: _Tree, entry: ChangeEntry, journal: _Journal) -> None:
    parent_path, _, name = entry.path.rpartition("/")
    parent = tree.dir(parent_path)
    if parent is None:
        raise SyncError(f"{parent_path} vanished during apply")
    backup = journal.backup_name()
    os.rename(name, backup, src_dir_fd=parent, dst_dir_fd=parent)
    journal.did(
        f"moved {entry.path} aside",
        lambda: os.rename(backup, name, src_dir_fd=parent, dst_dir_fd=parent),
    )
    journal.backup(parent, backup, entry.old_kind == "dir")
    tree.forget(entry.path)


def _chmod(parent: int, name: str, entry: ChangeEntry, journal: _Journal) -> None:
    _set_mode(parent, name, entry.kind, entry.new_mode or 0o644)
    journal.did(
        f"changed the mode of {entry.path}",
        functools.partial(_set_mode, parent, name, entry.kind, entry.old_mode or 0o644),
    )


def _set_mode(parent: int, name: str, kind: str, mode: int) -> None:
    fd = os.open(name, _DIR_FLAGS if kind == "dir" else _FILE_FLAGS, dir_fd=parent)
    try:
        wanted = stat.S_ISDIR if kind == "dir" else stat.S_ISREG
        if not wanted(os.fstat(fd).st_mode):
            raise SyncError(f"{name} changed kind during apply")
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _put(parent: int, name: str, entry: ChangeEntry, blobs: BlobStore, journal: _Journal) -> None:
    temp = journal.backup_name() + ".new"
    if entry.kind == "symlink":
        os.symlink(entry.target or "", temp, dir_fd=parent)
    else:
        _write_temp(parent, temp, entry, blobs)
    replacing = entry.change == "modified" and entry.old_kind == entry.kind
    try:
        if replacing:
            # Keep the old one under a second name, then rename over it: the path always exists.
            backup = journal.backup_name()
            os.link(name, backup, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
            journal.did(f"kept {entry.path}", lambda: _unlink_quietly(parent, backup))
            journal.backup(parent, backup, False)
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            journal.did(
                f"replaced {entry.path}",
                lambda: os.rename(backup, name, src_dir_fd=parent, dst_dir_fd=parent),
            )
        else:
            # Never clobber: a path that appeared since the checks makes this fail, not overwrite.
            os.link(temp, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
            journal.did(f"created {entry.path}", lambda: os.unlink(name, dir_fd=parent))
            os.unlink(temp, dir_fd=parent)
    except BaseException:
        _unlink_quietly(parent, temp)
        raise


def _write_temp(parent: int, temp: str, entry: ChangeEntry, blobs: BlobStore) -> None:
    assert entry.new_sha256 is not None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | int(getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(temp, flags, 0o600, dir_fd=parent)
    try:
        digest = hashlib.sha256()
        sink = SparseWriter(fd)  # an agent's `truncate -s 3G` stays 3 GiB of holes
        with blobs.path_for(entry.new_sha256).open("rb") as source:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                sink.write(chunk)
        sink.finish()
        if digest.hexdigest() != entry.new_sha256:
            raise SyncError(f"the stored content of {entry.path} is damaged")
        os.fchmod(fd, entry.new_mode if entry.new_mode is not None else 0o644)
        _fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(parent, temp)
        raise
    os.close(fd)


def _unlink_quietly(parent: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=parent)
