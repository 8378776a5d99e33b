"""Relative POSIX path names: which are acceptable, and which collide on other file systems."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

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


# Code points that HFS+ leaves out when it compares names (git's `next_hfs_char`, the fix for
# CVE-2014-9390) and the rest of Unicode's default-ignorable set, which other systems may drop
# too; every other format character (category Cf) is dropped as well.
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
# A DOS 8.3 short name (GIT~1, CLAUDE~1, PRE-CO~1.YAM): FAT and NTFS resolve it to whichever
# long name it was generated for, which cannot be known from the name alone.
_SHORT_NAME = re.compile(r"[^.~]{1,6}~[0-9]{1,6}(?:\.[^.]{1,3})?")


def canonical_name(name: str) -> str:
    """One path component as the most lenient file system any host may use would compare it.

    Folds the safe way, so that every name that can open the same file as a sensitive name
    maps to it: compatibility-normalised (NFKC); upper- and then case-folded (NTFS upper-cases,
    so a dotless i, U+0131, is "i" there); default-ignorable code points dropped (HFS+);
    everything from an NTFS stream separator ":" on dropped; trailing dots and spaces dropped
    (Windows).
    """
    # For ASCII the Unicode steps amount to lower(), which is far faster.
    folded = name.lower() if name.isascii() else _fold_unicode(name)
    folded = folded.partition(":")[0]
    return folded.rstrip(". ") or folded


@lru_cache(maxsize=4096)
def _fold_unicode(name: str) -> str:
    folded = unicodedata.normalize("NFKC", name)
    folded = "".join(char for char in folded if unicodedata.category(char) != "Cf")
    folded = _IGNORABLE.sub("", folded)
    return unicodedata.normalize("NFKC", folded.upper().casefold())


def canonical_parts(path: str) -> list[str]:
    """`canonical_name` of each component; a backslash separates components too (Windows)."""
    return [canonical_name(part) for part in path.replace("\\", "/").split("/")]


def is_short_name(canonical: str) -> bool:
    """Whether a component, already folded by `canonical_name`, has the shape of a DOS 8.3
    short name."""
    return "~" in canonical and _SHORT_NAME.fullmatch(canonical) is not None


def sort_key(path: str) -> list[str]:
    """Order paths so that every directory comes before what it holds."""
    return path.split("/")
