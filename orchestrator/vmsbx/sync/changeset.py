"""What the agent changed in the workspace, classified for review and apply.

Every entry is one of: `apply` (brought back by `vmsbx apply`), `sensitive` (can run code on the
host: needs --include-sensitive), `git` (under .git/: never written as files; the agent's commits
come back through a git bundle) or `refused` (never applied, with the reason). The digest pins
exactly what the user was shown: apply refuses a changeset whose digest differs.

Names are classified as every host would see them, not only this one: a repository travels to
case-insensitive, normalising machines, so `.GIT`, `.Claude` or `.git.` are `.git` and `.claude`
(names.canonical_name). Paths the sync rules leave out (secret patterns, `[sync] exclude`) are
refused: sync-in never sent them, so the agent never saw what the host holds there, and apply
never writes them — not even with --include-sensitive.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import unicodedata
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.errors import SyncError
from vmsbx.paths import write_private
from vmsbx.sync.links import Lookup, link_destination, unsafe_links
from vmsbx.sync.manifest import EntryKind, Manifest, ManifestEntry
from vmsbx.sync.names import canonical_parts, fold_key, is_short_name, path_problem, sort_key
from vmsbx.sync.rules import ExcludeRules

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
# `.git` and its 8.3 short name, as canonical_name folds them.
_GIT_NAMES = frozenset({".git", "git~1"})
_GIT_REASON = "git metadata never comes back as files; the agent's commits come back as a branch"
# Fields added to ChangeEntry after changesets were first stored: in the digest only when set.
_LATER_FIELDS = ("guest_mode",)


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
    new_mode: int | None = Field(
        default=None,
        description="Mode to apply: setuid/setgid/sticky dropped; world-writable reduced by the umask.",
    )
    mode_dropped: bool = Field(default=False, description="The guest mode had setuid/setgid/sticky bits.")
    guest_mode: int | None = Field(
        default=None, description="The mode the guest had, when it differs from new_mode (else None)."
    )
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
        [_digest_fields(entry) for entry in entries], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _digest_fields(entry: ChangeEntry) -> dict[str, object]:
    data = entry.model_dump(mode="json")
    for name in _LATER_FIELDS:
        if data[name] is None:
            del data[name]
    return data


def compute(
    base: Manifest, after: Manifest, *, rules: ExcludeRules | None = None, umask: int = 0o022
) -> Changeset:
    """Compare the workspace as synced (`base`) with the workspace after the run (`after`).

    `rules` are the ones sync-in used (None: the default secret patterns); what they match is
    refused. `umask` is the host user's: a world-writable mode is reduced by it.
    """
    rules = rules if rules is not None else ExcludeRules()
    before = base.by_path()
    now = after.by_path()
    folds: dict[str, set[str]] = defaultdict(set)
    for path in {*before, *now}:
        folds[fold_key(path)].add(path)
    changed: list[ChangeEntry] = []
    for path in sorted({*before, *now}, key=sort_key):
        entry = _change(path, before.get(path), now.get(path), umask)
        if entry is not None:
            changed.append(entry)
    new_links = {entry.path for entry in changed if entry.kind == "symlink" and entry.change != "deleted"}
    all_links = [(item.path, item.target or "") for item in after.entries if item.kind == "symlink"]

    def lookup(path: str) -> tuple[EntryKind, str | None] | None:
        item = now.get(path)
        return None if item is None else (item.kind, item.target)

    links = unsafe_links(all_links, lookup, new_links)
    aliased = _aliased(all_links, lookup, [entry.path for entry in changed])
    entries = []
    for entry in changed:
        classification, reason = _classify(entry, folds, links, rules)
        stronger = aliased.get(entry.path)
        if stronger is not None and _STRENGTH[stronger[0]] > _STRENGTH[classification]:
            classification, reason = stronger
        entries.append(entry.model_copy(update={"classification": classification, "reason": reason}))
    frozen = tuple(entries)
    return Changeset(entries=frozen, digest=entries_digest(frozen))


# Which class wins when a path is also reached under another name through a link.
_STRENGTH: dict[Classification, int] = {"apply": 0, "sensitive": 1, "git": 2, "refused": 3}


def _aliased(
    links: list[tuple[str, str]], lookup: Lookup, paths: list[str]
) -> dict[str, tuple[Classification, str]]:
    """Changed paths that a link of the tree makes git or sensitive under another name: with
    `.claude -> config/claude`, config/claude/settings.json is .claude/settings.json; with
    `.envrc -> scripts/env.sh`, scripts/env.sh is what direnv runs."""
    ordered = sorted(paths)
    no_rules = ExcludeRules(secret_patterns=(), extra_patterns=())
    found: dict[str, tuple[Classification, str]] = {}
    for link, target in links:
        destination = link_destination(link, target, lookup)
        if destination is None:
            continue
        start = bisect.bisect_left(ordered, destination) if destination else 0
        for path in ordered[start:]:
            inside = not destination or path == destination or path.startswith(destination + "/")
            if not inside:
                if path > destination + "/\U0010ffff":
                    break
                continue
            alias = link + path[len(destination) :] if destination else f"{link}/{path}"
            classification, why = classify_path(alias, no_rules)
            if classification in {"git", "sensitive"}:
                current = found.get(path)
                if current is None or _STRENGTH[classification] > _STRENGTH[current[0]]:
                    found[path] = (classification, f"{why} (reached as {alias!r} through the link {link!r})")
    return found


def applied_mode(guest_mode: int, umask: int) -> int:
    """The mode apply gives what the guest had at `guest_mode`: setuid, setgid and sticky bits
    never come back, and a world-writable mode is reduced by the host user's umask (and never
    stays world-writable, whatever the umask)."""
    mode = guest_mode & 0o777
    if mode & 0o002:
        mode &= ~(umask | 0o002)
    return mode


def mode_notes(entry: ChangeEntry) -> list[str]:
    """What apply does to the guest's mode, in words: bits dropped, world-writable reduced."""
    guest, new = entry.guest_mode, entry.new_mode
    notes = []
    if entry.mode_dropped:
        notes.append("setuid/setgid/sticky bits dropped" + (f" ({guest:o} in the guest)" if guest else ""))
    if guest is not None and new is not None and guest & 0o002:
        notes.append(f"world-writable mode {guest & 0o777:o} from the guest reduced to {new:o} by your umask")
    return notes


def _change(
    path: str, old: ManifestEntry | None, new: ManifestEntry | None, umask: int
) -> ChangeEntry | None:
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
    mode = None if new.mode is None else applied_mode(new.mode, umask)
    fields.update(
        kind=new.kind,
        new_sha256=new.sha256,
        new_size=new.size,
        new_mode=mode,
        mode_dropped=new.mode is not None and bool(new.mode & 0o7000),
        guest_mode=new.mode if new.mode != mode else None,
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
    entry: ChangeEntry, folds: dict[str, set[str]], links: dict[str, str], rules: ExcludeRules
) -> tuple[Classification, str]:
    by_name = classify_path(entry.path, rules)
    if by_name[0] == "git" or path_problem(entry.path) is not None:
        return by_name
    if entry.change != "deleted":
        if entry.kind == "special":
            return "refused", "special file (fifo, socket or device)"
        if entry.path in links:
            return "refused", links[entry.path]
    # Deletions too: a case-only rename must not come back as a deletion alone.
    clash = sorted(other for other in folds[fold_key(entry.path)] if other != entry.path)
    if clash:
        return "refused", f"name collides with {clash[0]!r} on case-insensitive or normalising file systems"
    return by_name


def classify_path(path: str, rules: ExcludeRules | None = None) -> tuple[Classification, str]:
    """What a path's name alone makes of it, as any host would see the name: (class, reason).

    "refused" for names no project may hold, DOS 8.3 short names and what `rules` (None: the
    default secret patterns) match; "git" for `.git` and what it holds; "sensitive" where the
    content can run code on the host; else ("apply", ""). `compute` adds what needs the entry
    (special files, links, collisions). For any path from the guest, work tree or git commits.
    """
    problem = path_problem(path)
    if problem is not None:
        return "refused", problem
    parts = canonical_parts(path)
    if any(part in _GIT_NAMES for part in parts):
        return "git", _GIT_REASON
    short = next((part for part in parts if is_short_name(part)), None)
    if short is not None:
        return "refused", f"{short!r} looks like a DOS 8.3 short name, which may stand for any other name"
    rules = rules if rules is not None else ExcludeRules()
    left_out = rules.match(path) or _folded_rules(rules).match("/".join(parts))
    if left_out:
        return "refused", f"{left_out}: sync-in leaves it out, so apply never brings it back"
    sensitive = _sensitive_parts(parts)
    if sensitive:
        return "sensitive", sensitive
    return "apply", ""


def rules_reason(path: str, rules: ExcludeRules) -> str | None:
    """Which of `rules` leaves `path` out, matching the folded name too ("exclude '.venv'")."""
    return rules.match(path) or _folded_rules(rules).match("/".join(canonical_parts(path)))


@lru_cache(maxsize=16)
def _folded_rules(rules: ExcludeRules) -> ExcludeRules:
    def fold(patterns: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(unicodedata.normalize("NFKC", pattern.upper().casefold()) for pattern in patterns)

    return ExcludeRules(
        secret_patterns=fold(rules.secret_patterns), extra_patterns=fold(rules.extra_patterns)
    )


def sensitive_reason(path: str) -> str:
    """Why `path` can run code on the host (folded as any host would see it), or "" if it cannot."""
    return _sensitive_parts(canonical_parts(path))


def _sensitive_parts(parts: list[str]) -> str:
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


def _sensitive(parts: list[str]) -> str:
    """`sensitive_reason` of a path given as its components (kept for earlier callers)."""
    return sensitive_reason("/".join(parts))


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
