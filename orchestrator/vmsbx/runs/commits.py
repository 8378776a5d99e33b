"""The agent's commits, inspected on the host without bringing them into the user's repository.

The bundle the guest made (runs/<id>/changes/commits.bundle) is fetched into a throw-away bare
repository whose only link to the project is an `alternates` entry naming the project's object
store, which git only reads. git runs there with no system or global config, no hooks, no
fsmonitor, no attributes, mailmap, pager, external diff or textconv, with object checking on,
each call under a time limit and a cap on what it may print. The result is a `CommitReview`:
the new commits, every path any of them touched, what merging the branch would bring (the tip
against the commit its first-parent line started from), and those paths classified by the
same rules as the work tree (`changeset.classify_path`). Everything read from the bundle
(messages, names, paths) is hostile: the records carry it cleaned or quoted.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.paths import write_private
from vmsbx.sync.changeset import Classification, classify_path
from vmsbx.textsafe import strip_control

PathChange = Literal["added", "modified", "deleted", "type", "history"]
COMMITS_FILE = "commits.json"
_MAX_COMMITS_LISTED = 200
_MAX_PATHS = 20_000
_MAX_LISTING_BYTES = 16 * 1024 * 1024
MAX_PATCH_BYTES = 4 * 1024 * 1024
_TIMEOUT = 120.0
_HEX = re.compile(rb"^[0-9a-f]{40}([0-9a-f]{24})?$")
_RAW = re.compile(rb"^:([0-7]{6}) ([0-7]{6}) ([0-9a-f]{40,64}) ([0-9a-f]{40,64}) ([A-Z])[0-9]*$")
_STATUS: dict[bytes, PathChange] = {b"A": "added", b"M": "modified", b"D": "deleted", b"T": "type"}
_LINK, _GITLINK = "120000", "160000"


class CommitInfo(BaseModel):
    """One of the agent's new commits (text cleaned of control sequences, bounded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(description="The commit id (hex).")
    parents: tuple[str, ...] = Field(description="Parent ids; two or more for a merge.")
    author: str = Field(description="`Name <email>` as the commit claims it (untrusted).")
    timestamp: int | None = Field(default=None, description="Author time, Unix seconds, as claimed.")
    subject: str = Field(description="First line of the message.")


class CommitPath(BaseModel):
    """One path the new commits touch, classified like a work-tree change."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str = Field(description="As the commits name it (may be hostile; quote when shown).")
    change: PathChange = Field(
        description="What merging brings for it; `history`: a commit changed it, but the tip has "
        "it as it was where the branch started."
    )
    mode: str = Field(default="", description="Its git mode at the tip (120000 link, 160000 submodule).")
    classification: Classification
    reason: str = ""


class CommitReview(BaseModel):
    """What the bundle brings, stored as runs/<id>/changes/commits.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    branch: str = Field(description="The branch `vmsbx apply` would fetch the commits as.")
    tip: str = Field(default="", description="The agent's HEAD.")
    fork_point: str | None = Field(
        default=None, description="Where the tip's first-parent line left your history; None: nowhere."
    )
    commit_count: int = 0
    commits: tuple[CommitInfo, ...] = Field(default=(), description="Newest first, at most 200.")
    paths: tuple[CommitPath, ...] = ()
    error: str = Field(default="", description="Why the bundle could not be inspected: nothing is known.")

    @property
    def flagged(self) -> tuple[CommitPath, ...]:
        return tuple(path for path in self.paths if path.classification != "apply")

    @property
    def refused(self) -> tuple[CommitPath, ...]:
        return tuple(path for path in self.paths if path.classification in ("refused", "git"))

    @property
    def brings(self) -> tuple[CommitPath, ...]:
        return tuple(path for path in self.paths if path.change != "history")


class _Failed(Exception):
    """A git step failed; the message says which and why (cleaned)."""


def inspect(bundle: Path, project: Path, bases: Sequence[str], branch: str) -> CommitReview:
    """Read the bundle in a throw-away repository; never raises for what the bundle holds (a
    review that could not be made says why in `error`, and apply then does not fetch)."""
    try:
        with _Scratch(project) as scratch:
            return _review(scratch, bundle, bases, branch)
    except _Failed as failed:
        return CommitReview(branch=branch, error=str(failed))
    except OSError as error:
        return CommitReview(branch=branch, error=f"cannot inspect the commits: {error}")


def save(review: CommitReview, path: Path) -> None:
    write_private(path, review.model_dump_json(indent=1))


def load(path: Path) -> CommitReview | None:
    """A stored review, or None when there is none (or it is damaged: then inspect again)."""
    try:
        return CommitReview.model_validate_json(path.read_bytes()[:_MAX_LISTING_BYTES])
    except (OSError, ValueError):
        return None


def patch_text(bundle: Path, project: Path, review: CommitReview, bases: Sequence[str]) -> str:
    """`git log -p` of the new commits (merges against their first parent), cleaned and capped."""
    if review.error or not review.tip:
        return ""
    try:
        with _Scratch(project) as scratch:
            scratch.fetch(bundle)
            shown, cut = scratch.output(
                ["log", "--no-color", "--no-ext-diff", "--no-textconv", "--no-mailmap", "--no-decorate",
                 "--no-show-signature", "--no-notes", "--no-renames", "--diff-merges=first-parent",
                 "--root", "--format=medium", "-p", "--ignore-missing", review.tip, "--not", *bases],
                limit=MAX_PATCH_BYTES,
            )  # fmt: skip
    except (_Failed, OSError) as failed:
        return f"(the commits' patch could not be made: {failed})\n"
    text = strip_control(shown.decode("utf-8", errors="replace"))
    if cut:
        text += f"\n(cut at {MAX_PATCH_BYTES} bytes; `git log -p {review.branch}` after `vmsbx apply`)\n"
    return text


def _review(scratch: _Scratch, bundle: Path, bases: Sequence[str], branch: str) -> CommitReview:
    tip = scratch.fetch(bundle)
    listed, cut = scratch.output(["rev-list", "--topo-order", "--ignore-missing", tip, "--not", *bases])
    ids = [line.decode() for line in listed.splitlines() if _HEX.fullmatch(line)]
    if cut or len(ids) != len(listed.splitlines()):
        raise _Failed("the bundle holds more commits than vmsbx lists")
    commits = [_commit(scratch, sha) for sha in ids[:_MAX_COMMITS_LISTED]]
    line, _ = scratch.output(["rev-list", "--first-parent", "--ignore-missing", tip, "--not", *bases])
    first_parent = line.split()
    fork = _first_parent_of(scratch, first_parent[-1].decode()) if first_parent else tip
    touched = _raw_entries(
        scratch.output(
            ["log", "--format=", "-z", "--raw", "--no-abbrev", "--no-renames", "--root",
             "--diff-merges=first-parent", "--ignore-missing", tip, "--not", *bases],
            limit=_MAX_LISTING_BYTES,
        )
    )  # fmt: skip
    old = fork if fork is not None else scratch.empty_tree()
    net = _raw_entries(scratch.output(["diff-tree", "-r", "-z", "--no-renames", old, tip]))
    paths: dict[bytes, CommitPath] = {}
    for name, (_, mode) in touched.items():
        paths[name] = _classified(name, "history", mode)
    for name, (status, mode) in net.items():
        paths[name] = _classified(name, status, mode)
    return CommitReview(
        branch=branch,
        tip=tip,
        fork_point=fork,
        commit_count=len(ids),
        commits=tuple(commits),
        paths=tuple(paths[path] for path in sorted(paths)),
    )


def _classified(name: bytes, change: PathChange, mode: str) -> CommitPath:
    # Classified as the work tree sees names (not UTF-8: lone surrogates, refused); stored with
    # the bad bytes spelled out, since the record must be valid JSON.
    classification, reason = classify_path(name.decode("utf-8", errors="surrogateescape"))
    path = name.decode("utf-8", errors="backslashreplace")
    if classification == "apply" and mode == _LINK:
        classification, reason = "sensitive", "a symbolic link: vmsbx does not check where it points"
    elif classification == "apply" and mode == _GITLINK:
        classification, reason = "sensitive", "a submodule: it names code from elsewhere"
    return CommitPath(path=path, change=change, mode=mode, classification=classification, reason=reason)


def _raw_entries(listing: tuple[bytes, bool]) -> dict[bytes, tuple[PathChange, str]]:
    """`--raw -z` output as path -> (change, mode at the end); the last entry per path wins."""
    data, cut = listing
    if cut:
        raise _Failed("the commits touch more paths than vmsbx lists")
    tokens = data.split(b"\0")
    entries: dict[bytes, tuple[PathChange, str]] = {}
    index = 0
    while index < len(tokens):
        header = tokens[index].strip(b"\n")
        index += 1
        if not header:
            continue
        matched = _RAW.fullmatch(header)
        if matched is None or index >= len(tokens):
            raise _Failed("git printed a path listing vmsbx cannot read")
        name = tokens[index]
        index += 1
        status = _STATUS.get(matched.group(5), "modified")
        mode = matched.group(2).decode() if status != "deleted" else matched.group(1).decode()
        entries[name] = (status, mode)
        if len(entries) > _MAX_PATHS:
            raise _Failed("the commits touch more paths than vmsbx lists")
    return entries


def _first_parent_of(scratch: _Scratch, sha: str) -> str | None:
    parents = _commit(scratch, sha).parents
    return parents[0] if parents else None


def _commit(scratch: _Scratch, sha: str) -> CommitInfo:
    raw, cut = scratch.output(["cat-file", "commit", sha], limit=1024 * 1024)
    head, _, message = raw.partition(b"\n\n")
    parents: list[str] = []
    author, timestamp = "", None
    for line in head.split(b"\n"):
        key, _, value = line.partition(b" ")
        if key == b"parent" and _HEX.fullmatch(value):
            parents.append(value.decode())
        elif key == b"author" and not author:
            ident, _, when = value.rpartition(b">")
            author = _clean((ident + b">").decode("utf-8", errors="replace"), 200)
            stamp = when.split()
            if stamp and stamp[0].isdigit() and len(stamp[0]) < 16:
                timestamp = int(stamp[0])
    subject = message.split(b"\n", 1)[0] if not cut else message[:300]
    return CommitInfo(
        id=sha, parents=tuple(parents), author=author, timestamp=timestamp,
        subject=_clean(subject.decode("utf-8", errors="replace"), 200),
    )  # fmt: skip


def _clean(text: str, limit: int) -> str:
    flat = " ".join(strip_control(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class _Scratch:
    """A throw-away bare repository that borrows (reads) the project's objects."""

    def __init__(self, project: Path) -> None:
        self._project = project
        self._temp = tempfile.TemporaryDirectory(prefix="vmsbx-commits-")
        self.repo = Path(self._temp.name) / "review.git"

    def __enter__(self) -> _Scratch:
        try:
            self._prepare()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _prepare(self) -> None:
        objects = self._project / ".git" / "objects"
        if not objects.is_dir() or (self._project / ".git").is_symlink():
            raise _Failed(f"{self._project} is not a git repository (its commits need one to be read)")
        object_format = _object_format(self._project)
        self._check(
            ["init", "--quiet", "--bare", "--template=", f"--object-format={object_format}", str(self.repo)],
            bare=False,
        )
        (self.repo / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (self.repo / "objects" / "info" / "alternates").write_text(str(objects.resolve()) + "\n")

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(OSError):
            self._temp.cleanup()

    def fetch(self, bundle: Path) -> str:
        """Check and fetch the bundle's HEAD; returns its commit id."""
        self._check(["bundle", "verify", "--quiet", str(bundle)], what="they do not fit your repository")
        self._check(
            ["-c", "transfer.fsckObjects=true", "-c", "fetch.fsckObjects=true", "fetch", "--quiet",
             "--no-tags", "--no-write-fetch-head", "--no-auto-gc", str(bundle), "HEAD:refs/vmsbx/tip"],
            what="git refused the agent's commits",
        )  # fmt: skip
        tip, _ = self.output(["rev-parse", "--verify", "--quiet", "refs/vmsbx/tip^{commit}"], limit=200)
        if not _HEX.fullmatch(tip.strip()):
            raise _Failed("the bundle's HEAD is not a commit")
        return tip.strip().decode()

    def empty_tree(self) -> str:
        tree, _ = self.output(["hash-object", "-t", "tree", "--stdin"], limit=200)  # stdin: empty
        return tree.strip().decode()

    def output(self, args: list[str], *, limit: int = _MAX_LISTING_BYTES) -> tuple[bytes, bool]:
        """git's stdout, at most `limit` bytes (True: it had more and was stopped)."""
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                self._argv(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, env=_env()
            )
            timer = threading.Timer(_TIMEOUT, process.kill)
            timer.start()
            try:
                assert process.stdout is not None
                data = process.stdout.read(limit + 1)
                cut = len(data) > limit
                if cut:
                    process.kill()
                process.stdout.close()
                code = process.wait()
            finally:
                timer.cancel()
            if code != 0 and not cut:
                errors.seek(0)
                said = _clean(errors.read(4000).decode("utf-8", errors="replace"), 300)
                raise _Failed(f"git {args[0]} failed: {said or f'exit {code}'}")
        return data[:limit], cut

    def _check(self, args: list[str], *, what: str = "git failed", bare: bool = True) -> None:
        try:
            done = subprocess.run(
                self._argv(args, bare=bare), stdin=subprocess.DEVNULL, capture_output=True, env=_env(),
                timeout=_TIMEOUT, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise _Failed(f"{what}: git took longer than {_TIMEOUT:.0f} s") from None
        if done.returncode != 0:
            raise _Failed(f"{what}: {_clean(done.stderr[-2000:].decode('utf-8', errors='replace'), 300)}")

    def _argv(self, args: list[str], *, bare: bool = True) -> list[str]:
        where = [f"--git-dir={self.repo}"] if bare else []
        return ["git", *where, *_SAFE, *args]


# No program the repository, the bundle or the user's config could name is ever run, and
# nothing is read from outside this process's own choices.
_SAFE = [
    "--no-pager",
    "-c", f"core.hooksPath={os.devnull}", "-c", "core.fsmonitor=false",
    "-c", f"core.attributesFile={os.devnull}", "-c", "core.quotePath=true",
    "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "log.showSignature=false",
    "-c", "color.ui=false", "-c", "protocol.allow=never", "-c", "protocol.file.allow=always",
]  # fmt: skip


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_NO_REPLACE_OBJECTS="1",
        GIT_OPTIONAL_LOCKS="0",
    )
    return env


def _object_format(project: Path) -> str:
    done = subprocess.run(
        ["git", *_SAFE, f"--git-dir={project / '.git'}", "rev-parse", "--show-object-format"],
        stdin=subprocess.DEVNULL, capture_output=True, env=_env(), timeout=_TIMEOUT, check=False,
    )  # fmt: skip
    found = done.stdout.strip().decode(errors="replace")
    if done.returncode != 0 or found not in ("sha1", "sha256"):
        said = _clean(done.stderr.decode(errors="replace"), 300)
        raise _Failed(f"cannot read {project}'s git repository: {said}")
    return found
