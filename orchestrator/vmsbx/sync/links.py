"""Where a symlink leads, resolved as the kernel would against a whole tree. Pure.

A textual check of one link cannot see chains: with `a -> .`, the target `a/..` is the project's
parent, not the project. So a link is walked component by component against the tree it will
live in (`Lookup`), and refused when it leaves the project, passes through another link, goes
up (`..`) out of a folder the tree does not hold (on the host that may be anything, a link
included), or loops. A link whose last component is another link is followed (shared-library
chains such as `libfoo.so -> libfoo.so.1` are common) and judged by where the chain ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

NodeKind = Literal["file", "dir", "symlink", "special"]
Lookup = Callable[[str], tuple[NodeKind, str | None] | None]
"""(kind, link target) of a project path in the tree, or None when the tree holds nothing there.
It is only asked about paths whose folders the walk already found to be folders."""

_MAX_HOPS = 40  # the kernel's own limit on links followed in one resolution (ELOOP)


@dataclass(frozen=True, slots=True)
class LinkVerdict:
    """Why a link is refused, and which other link of the tree is to blame (if one is)."""

    problem: str
    through: str | None = None
    """The link the walk passed through: applying that one is refused as well."""
    cause: str = ""
    """For a chain, the problem of the link at its end (else empty)."""


def link_problem(path: str, target: str, lookup: Lookup) -> LinkVerdict | None:
    """Why the link at `path` (a project-relative path) pointing at `target` is unsafe, or None."""
    return _walk(path, target, lookup, hops=0)[0]


def link_destination(path: str, target: str, lookup: Lookup) -> str | None:
    """The project path (root: "") a safe link leads to, or None when unsafe or not all known."""
    verdict, destination = _walk(path, target, lookup, hops=0)
    return destination if verdict is None else None


def _walk(path: str, target: str, lookup: Lookup, *, hops: int) -> tuple[LinkVerdict | None, str | None]:
    """(why it is unsafe or None, where it leads when every component was known, else None)."""
    if not target or "\0" in target:
        return LinkVerdict("empty symlink target"), None
    if target.startswith("/"):
        return LinkVerdict(f"symlink pointing outside the project ({target!r})"), None
    # The link's own folders are folders: apply never writes through a link.
    stack = path.split("/")[:-1]
    unknown = False  # a component the tree does not hold: the rest of the walk is blind
    parts = target.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part in {"", "."}:
            continue
        if part == "..":
            if unknown:
                why = f"symlink going up out of a folder the project does not hold ({target!r})"
                return LinkVerdict(why), None
            if not stack:
                return LinkVerdict(f"symlink pointing outside the project ({target!r})"), None
            stack.pop()
            continue
        stack.append(part)
        if unknown:
            continue
        here = "/".join(stack)
        found = lookup(here)
        if found is None:
            unknown = True
            continue
        kind, link_target = found
        if kind == "symlink":
            if not last:
                why = f"symlink that passes through the link {here!r} ({target!r})"
                return LinkVerdict(why, here), None
            if hops >= _MAX_HOPS:
                return LinkVerdict("symlink chain too long or looping"), None
            onward, destination = _walk(here, link_target or "", lookup, hops=hops + 1)
            if onward is not None:
                cause = onward.cause or onward.problem
                why = f"symlink to the link {here!r}, which is refused: {cause}"
                return LinkVerdict(why, cause=cause), None
            return None, destination
        if kind != "dir" and not last:
            unknown = True  # a file used as a folder: the kernel stops here (ENOTDIR)
    return None, None if unknown else "/".join(stack)


def unsafe_links(links: Iterable[tuple[str, str]], lookup: Lookup, changed: set[str]) -> dict[str, str]:
    """path -> why, for the changed links (`changed`) that must not be applied.

    `links` are all (path, target) links of the tree, unchanged ones included: a new link that
    an existing one passes through changes where that one leads, so the new link is refused.
    """
    refused: dict[str, str] = {}
    for path, target in links:
        verdict = link_problem(path, target, lookup)
        if verdict is None:
            continue
        if path in changed:
            refused.setdefault(path, verdict.problem)
        if verdict.through is not None and verdict.through in changed:
            refused.setdefault(verdict.through, f"the link {path!r} ({target!r}) would pass through it")
    return refused
