"""What the agent changed in the workspace, classified for review and apply.

Every entry is one of: `apply` (brought back by `vmsbx apply`), `sensitive` (can run code on the
host: needs --include-sensitive), `git` (under .git/: never written as files; the agent's commits
come back through a git bundle) or `refused` (never applied, with the reason). The digest pins
exactly what the user was shown: apply refuses a changeset whose digest differs.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import defaultdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.errors import SyncError
from vmsbx.paths import write_private
from vmsbx.sync.manifest import EntryKind, Manifest, ManifestEntry
from vmsbx.sync.names import fold_key, path_problem, sort_key

ChangeKind = Literal["added", "modified", "deleted", "mode"]
Classification = Literal["apply", "sensitive", "git", "refused"]
_MAX_CHANGESET_BYTES = 256 * 1024 * 1024

# Names whose content runs on the host (editors, hooks, CI, direnv, vmsbx's own settings).
_SENSITIVE_DIRS = frozenset(
    {".claude", ".vscode", ".idea", ".husky", ".githooks", ".devcontainer", ".direnv", ".cargo"}
)
_SENSITIVE_FILES = frozenset(
    {
        ".envrc",
        ".pre-commit-config.yaml",
        "vmsbx.toml",
        ".gitattributes",
        ".gitmodules",
        ".mcp.json",
        ".npmrc",
        ".yarnrc",
        ".yarnrc.yml",
        ".pypirc",
        ".tool-versions",
    }
)
_SENSITIVE_RUNS = (".github/workflows", ".github/actions", ".gitlab-ci.yml")


class ChangeEntry(BaseModel):
    """One changed path."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="Relative POSIX path as the guest named it (may be hostile).")
    change: ChangeKind
    kind: EntryKind = Field(description="What is there after the run (before it, for deletions).")
    old_kind: EntryKind | None = Field(default=None, description="What was there before; None if added.")
    old_sha256: str | None = None
    new_sha256: str | None = None
    old_size: int | None = None
    new_size: int | None = None
    old_mode: int | None = None
    new_mode: int | None = Field(default=None, description="Mode to apply: setuid/setgid/sticky dropped.")
    mode_dropped: bool = Field(default=False, description="The guest mode had setuid/setgid/sticky bits.")
    old_target: str | None = None
    target: str | None = Field(default=None, description="New symlink target.")
    classification: Classification
    reason: str = Field(default="", description="Why it is sensitive, git or refused.")


class Changeset(BaseModel):
    """The agent's changes, as shown to the user, stored as changes/changeset.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    entries: tuple[ChangeEntry, ...]
    digest: str = Field(description="sha256 of the canonical JSON of the entries.")

    def counts(self) -> dict[str, int]:
        """Entries per classification, for summaries."""
        totals: dict[str, int] = defaultdict(int)
        for entry in self.entries:
            totals[entry.classification] += 1
        return dict(totals)


def entries_digest(entries: tuple[ChangeEntry, ...]) -> str:
    """The stable digest of a list of entries (canonical JSON: sorted keys, no spaces, ASCII)."""
    canonical = json.dumps(
        [entry.model_dump(mode="json") for entry in entries], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def compute(base: Manifest, after: Manifest) -> Changeset:
    """Compare the workspace as synced (`base`) with the workspace after the run (`after`)."""
    before = base.by_path()
    now = after.by_path()
    folds: dict[str, set[str]] = defaultdict(set)
    for path in {*before, *now}:
        folds[fold_key(path)].add(path)
    entries: list[ChangeEntry] = []
    for path in sorted({*before, *now}, key=sort_key):
        old, new = before.get(path), now.get(path)
        entry = _change(path, old, new)
        if entry is None:
            continue
        classification, reason = _classify(entry, folds, now)
        entries.append(entry.model_copy(update={"classification": classification, "reason": reason}))
    frozen = tuple(entries)
    return Changeset(entries=frozen, digest=entries_digest(frozen))


def _change(path: str, old: ManifestEntry | None, new: ManifestEntry | None) -> ChangeEntry | None:
    fields: dict[str, object] = {"path": path, "classification": "apply"}
    if old is not None:
        fields.update(
            old_kind=old.kind,
            old_sha256=old.sha256,
            old_size=old.size,
            old_mode=old.mode,
            old_target=old.target,
        )
    if new is None:
        assert old is not None
        return ChangeEntry(change="deleted", kind=old.kind, **fields)  # type: ignore[arg-type]
    mode = None if new.mode is None else new.mode & 0o777
    fields.update(
        kind=new.kind,
        new_sha256=new.sha256,
        new_size=new.size,
        new_mode=mode,
        mode_dropped=new.mode is not None and new.mode != mode,
        target=new.target,
    )
    if old is None:
        change = "added"
    elif old.kind != new.kind or old.sha256 != new.sha256 or old.target != new.target:
        change = "modified"
    elif old.mode != mode:
        change = "mode"
    else:
        return None
    return ChangeEntry(change=change, **fields)  # type: ignore[arg-type]


def _classify(
    entry: ChangeEntry, folds: dict[str, set[str]], now: dict[str, ManifestEntry]
) -> tuple[Classification, str]:
    problem = path_problem(entry.path)
    if problem is not None:
        return "refused", problem
    parts = entry.path.split("/")
    if ".git" in parts:
        return "git", "git metadata never comes back as files; the agent's commits come back as a branch"
    if entry.change != "deleted":
        if entry.kind == "special":
            return "refused", "special file (fifo, socket or device)"
        if entry.kind == "symlink" and _escapes(entry.path, entry.target or ""):
            return "refused", f"symlink pointing outside the project ({entry.target!r})"
    # Deletions too: a case-only rename must not come back as a deletion alone.
    clash = sorted(other for other in folds[fold_key(entry.path)] if other != entry.path)
    if clash:
        return "refused", f"name collides with {clash[0]!r} on case-insensitive or normalising file systems"
    sensitive = _sensitive(parts)
    if sensitive:
        return "sensitive", sensitive
    return "apply", ""


def _escapes(path: str, target: str) -> bool:
    if not target or target.startswith("/") or "\0" in target:
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == ".." or resolved.startswith("../") or resolved.startswith("/")


def _sensitive(parts: list[str]) -> str:
    for part in parts[:-1]:
        if part in _SENSITIVE_DIRS:
            return f"inside {part}/, which tools run on the host"
    if parts[-1] in _SENSITIVE_DIRS:
        return f"{parts[-1]}/ holds settings that tools run on the host"
    if parts[-1] in _SENSITIVE_FILES:
        return f"{parts[-1]} can run code on the host"
    joined = "/".join(parts)
    for run in _SENSITIVE_RUNS:
        if joined == run or joined.startswith(run + "/") or f"/{run}/" in f"/{joined}/":
            return f"{run} runs code in CI or on the host"
    return ""


# --- storage ----------------------------------------------------------------------------------


def save(changeset: Changeset, path: Path) -> None:
    """Write the changeset as JSON (atomically)."""
    write_private(path, changeset.model_dump_json(indent=1))


def load(path: Path) -> Changeset:
    """Read a stored changeset; raise SyncError when it is damaged or its digest does not match."""
    try:
        data = path.read_bytes()[: _MAX_CHANGESET_BYTES + 1]
        changeset = Changeset.model_validate_json(data)
    except (OSError, ValueError) as error:
        raise SyncError(f"cannot read the changeset {path}: {str(error)[:200]}", hint="run again") from None
    if entries_digest(changeset.entries) != changeset.digest:
        raise SyncError(f"the changeset {path} does not match its own digest", hint="run again")
    return changeset
