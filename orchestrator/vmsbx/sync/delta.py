"""What must travel to make the guest workspace an exact mirror of the host scan. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from vmsbx.sync.manifest import Manifest, ManifestEntry
from vmsbx.sync.names import path_problem, sort_key


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """The guest-side steps, in the order the guest applies them."""

    delete: tuple[str, ...]
    """Guest paths to remove (whole trees), topmost only: guest-only paths and kind changes."""
    dirs: tuple[tuple[str, int], ...]
    """(path, mode) of directories to create or re-mode, parents first."""
    links: tuple[tuple[str, str], ...]
    """(path, target) of symlinks to (re)create."""
    files: tuple[ManifestEntry, ...]
    """Regular files whose content must be sent."""
    modes: tuple[tuple[str, int], ...]
    """(path, mode) of files whose content is already right but whose mode is not."""

    @property
    def send_bytes(self) -> int:
        """Total size of the file contents to send."""
        return sum(entry.size or 0 for entry in self.files)


def plan_sync(host: Manifest, guest: Manifest) -> SyncPlan:
    """Plan the steps that turn `guest` into `host`.

    Everything only in the guest is removed, so changes that were discarded never come back.
    Guest paths that cannot be real (hostile or malformed manifest) are ignored, never deleted.
    """
    theirs = guest.by_path()
    ours = host.by_path()
    doomed: list[str] = []
    for path, entry in theirs.items():
        if path_problem(path) is not None:
            continue
        mine = ours.get(path)
        if mine is None or mine.kind != entry.kind:
            doomed.append(path)
    delete = _topmost(doomed)
    gone = set(delete)

    def present(path: str) -> ManifestEntry | None:
        if path in gone or any(prefix in gone for prefix in _ancestors(path)):
            return None
        return theirs.get(path)

    dirs: list[tuple[str, int]] = []
    links: list[tuple[str, str]] = []
    files: list[ManifestEntry] = []
    modes: list[tuple[str, int]] = []
    for entry in host.entries:
        current = present(entry.path)
        if entry.kind == "dir":
            if current is None or current.mode != entry.mode:
                dirs.append((entry.path, entry.mode or 0o755))
        elif entry.kind == "symlink":
            if current is None or current.target != entry.target:
                links.append((entry.path, entry.target or ""))
        elif entry.kind == "file":
            if current is None or current.sha256 != entry.sha256 or current.size != entry.size:
                files.append(entry)
            elif current.mode != entry.mode:
                modes.append((entry.path, entry.mode or 0o644))
    return SyncPlan(tuple(delete), tuple(dirs), tuple(links), tuple(files), tuple(modes))


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:index]) for index in range(1, len(parts))]


def _topmost(paths: list[str]) -> list[str]:
    chosen = set(paths)
    return sorted(
        (path for path in chosen if not any(prefix in chosen for prefix in _ancestors(path))), key=sort_key
    )
