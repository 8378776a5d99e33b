"""`vmsbx diff`: the agent's changes as text, safe to print on the host's terminal.

Text files get a unified diff against the host's current file when it still has the sync-in
content (otherwise against nothing, and it says so); binary files, links and mode changes get
one line each. Everything came from the guest, so control sequences are stripped at the end.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path

from vmsbx.sync.blobs import BlobStore
from vmsbx.sync.changeset import ChangeEntry, Changeset, mode_notes
from vmsbx.sync.names import path_problem
from vmsbx.textsafe import strip_control

_MAX_TEXT_BYTES = 2 * 1024 * 1024
_NOFOLLOW = int(getattr(os, "O_NOFOLLOW", 0)) | int(getattr(os, "O_NONBLOCK", 0))


def render_diff(changeset: Changeset, blobs: BlobStore, project: Path, *, context: int = 3) -> str:
    """The whole changeset as text: a header per entry, its class, and the diff where it has one."""
    parts = [render_entry(entry, blobs, project, context=context) for entry in changeset.entries]
    return strip_control("".join(parts))


_SECTIONS = (
    ("apply", "Changes `vmsbx apply` brings back"),
    ("sensitive", "Held back: can run code on your machine (apply with --include-sensitive)"),
    ("git", "Git metadata (never applied as files; commits come back as a branch)"),
    ("refused", "Refused (never applied)"),
)
_LETTER = {"added": "A", "modified": "M", "deleted": "D", "mode": "m"}


def render_summary(changeset: Changeset) -> str:
    """A short listing, one line per path, grouped by what apply will do with it."""
    out: list[str] = []
    for classification, title in _SECTIONS:
        rows = [entry for entry in changeset.entries if entry.classification == classification]
        if not rows:
            continue
        out.append(f"{title}: {len(rows)}\n")
        for entry in rows:
            line = f"  {_LETTER[entry.change]} {_show_path(entry.path)}"
            if entry.kind == "dir":
                line += "/"
            if entry.change == "mode" and entry.old_mode is not None and entry.new_mode is not None:
                line += f" (mode {entry.old_mode:o} -> {entry.new_mode:o}{_reduced(entry)})"
            elif (
                entry.change == "added"
                and entry.new_mode is not None
                and entry.new_mode != _PLAIN[entry.kind]
            ):
                line += f" (mode {entry.new_mode:o}{_reduced(entry)})"
            if entry.classification == "refused":
                line += f" - {entry.reason}"
            out.append(line + "\n")
    return strip_control("".join(out)) if out else "No changes.\n"


def render_entry(entry: ChangeEntry, blobs: BlobStore, project: Path, *, context: int = 3) -> str:
    """One entry as text (not yet stripped of control sequences)."""
    label = {"apply": "", "sensitive": " [sensitive]", "git": " [git]", "refused": " [refused]"}
    shown = _show_path(entry.path)
    head = f"{entry.change} {entry.kind} {shown}{label[entry.classification]}"
    if entry.reason:
        head += f" ({entry.reason})"
    lines = [head + "\n"]
    if entry.old_mode is not None and entry.new_mode is not None and entry.old_mode != entry.new_mode:
        lines.append(f"mode {entry.old_mode:o} -> {entry.new_mode:o}\n")
    elif entry.change == "added" and entry.new_mode is not None:
        lines.append(f"new mode {entry.new_mode:o}\n")
    lines += [note + "\n" for note in mode_notes(entry)]
    if entry.kind == "symlink" or entry.old_kind == "symlink":
        lines.append(f"link {entry.old_target!r} -> {entry.target!r}\n")
    if entry.change in {"added", "modified", "deleted"} and "file" in {entry.kind, entry.old_kind}:
        lines.append(_content_diff(entry, blobs, project, context))
    return "".join(lines) + "\n"


# The modes that need no mention in a summary line (what a umask of 022 gives).
_PLAIN = {"file": 0o644, "dir": 0o755, "symlink": None, "special": None}


def _reduced(entry: ChangeEntry) -> str:
    guest = entry.guest_mode
    return f", reduced from {guest & 0o777:o}" if guest is not None and guest & 0o002 else ""


def _show_path(path: str) -> str:
    """A name from the guest, quoted when it holds characters that could forge diff lines."""
    return json.dumps(path) if path_problem(path) is not None or '"' in path else path


def show_path(path: str) -> str:
    """How review text names a path from the guest (quoted when it could forge lines)."""
    return _show_path(path)


def _content_diff(entry: ChangeEntry, blobs: BlobStore, project: Path, context: int) -> str:
    old, note = _old_content(entry, project)
    new: bytes | None = b""
    if entry.kind == "file" and entry.change != "deleted":
        new = _blob(blobs, entry.new_sha256)
        if new is None:
            return "(new content not available)\n"
    old_text, new_text = _text(old or b""), _text(new or b"")
    if old_text is None or new_text is None:
        return f"binary file changed ({entry.old_size or 0} -> {entry.new_size or 0} bytes)\n"
    diff = difflib.unified_diff(
        old_text.splitlines(keepends=True),
        new_text.splitlines(keepends=True),
        fromfile=f"a/{_show_path(entry.path)}",
        tofile=f"b/{_show_path(entry.path)}",
        n=context,
    )
    body = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in diff
    )
    return note + body


def _old_content(entry: ChangeEntry, project: Path) -> tuple[bytes | None, str]:
    if entry.old_kind != "file":
        return b"", ""
    try:
        fd = os.open(project / entry.path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return b"", "(the host file is gone; diff against nothing)\n"
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(_MAX_TEXT_BYTES + 1)
    if hashlib.sha256(data).hexdigest() != entry.old_sha256:
        return b"", "(the host file changed since the run started; diff against nothing)\n"
    return data, ""


def _blob(blobs: BlobStore, sha256: str | None) -> bytes | None:
    if sha256 is None or not blobs.has(sha256):
        return None
    with blobs.path_for(sha256).open("rb") as handle:
        return handle.read(_MAX_TEXT_BYTES + 1)


def _text(data: bytes) -> str | None:
    if len(data) > _MAX_TEXT_BYTES or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
