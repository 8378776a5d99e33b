"""Relative POSIX path names: which are acceptable, and which collide on other file systems."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file inside a project, or None when it can.

    Refused: empty, absolute, `.`/`..`/empty components, NUL or other control characters, and
    names that are not valid UTF-8 (they arrive as lone surrogates).
    """
    if not path:
        return "empty name"
    if path.startswith("/"):
        return "absolute path"
    if _CONTROL.search(path):
        return "control character in name"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if any(part in {"", ".", ".."} for part in path.split("/")):
        return "'.', '..' or empty path component"
    return None


def fold_key(path: str) -> str:
    """The name as a case-insensitive, Unicode-normalising file system (macOS, Windows) sees it."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def sort_key(path: str) -> list[str]:
    """Order paths so that every directory comes before what it holds."""
    return path.split("/")
