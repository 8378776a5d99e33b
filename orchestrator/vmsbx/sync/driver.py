"""Drive the guest's wsync.py over an exec channel: its manifest before a run (sync-in's plan;
runs/workspace.launch_stream carries the stream into the launcher), collect after it.

The channel is anything with `AgentClient.exec`'s shape (argv, stdin bytes or a readable file
with a descriptor, stdout/stderr sinks, exit code). Nothing is held whole in memory: the guest's
tar lands in a size-capped file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from vmsbx.bounded import BoundedBuffer, CappedSink, MiB, TailBuffer
from vmsbx.contract import EXIT_TOO_LARGE
from vmsbx.errors import SyncError
from vmsbx.paths import ensure_private_dir, open_private, write_private
from vmsbx.sandbox.layout import GUEST_LIB
from vmsbx.sync import blobs as blobs_module
from vmsbx.sync import changeset as changeset_module
from vmsbx.sync.changeset import Changeset, compute
from vmsbx.sync.manifest import MAX_MANIFEST_BYTES, Manifest
from vmsbx.sync.rules import ExcludeRules
from vmsbx.sync.sparse import SparseWriter
from vmsbx.textsafe import strip_control

WSYNC_ARGV: tuple[str, ...] = (f"{GUEST_LIB}/wsync.py",)
_STDERR_SHOWN = 600
_STDERR_KEPT = 4 * MiB  # wsync's last stderr line is its report (pack: the problems)


class ExecChannel(Protocol):
    """What the driver needs from `AgentClient`."""

    def exec(
        self, argv: list[str], *, stdin: BinaryIO | bytes | None, stdout: BinaryIO, stderr: BinaryIO
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class Collected:
    """The changes of one run, stored under the run's changes/ folder."""

    changeset: Changeset
    store: blobs_module.BlobStore
    received: blobs_module.ReceiveReport
    pack_problems: tuple[tuple[str, str], ...]
    """(path, why) for files the guest could not pack (e.g. turned into a link)."""


def guest_manifest(
    channel: ExecChannel,
    workspace: str,
    *,
    cache: str | None = None,
    purge_bad_names: bool = False,
    wsync: Sequence[str] = WSYNC_ARGV,
    options: Sequence[str] = (),
    max_new_bytes: int | None = None,
) -> Manifest:
    """The guest workspace's manifest (`wsync.py manifest`, with its hash cache if named).

    With `purge_bad_names` (sync-in), entries whose names are not UTF-8 are removed first: no
    host file has such a name and the manifest could not name them for deletion. `options` go
    to the `wsync` command as they are (the launcher's own, e.g. the workspace cap). With
    `max_new_bytes` the guest refuses, before it hashes anything, when the files that are
    surely new exceed it: raises ChangesTooLarge.
    """
    out, err = BoundedBuffer(MAX_MANIFEST_BYTES, "workspace manifest"), TailBuffer(_STDERR_KEPT)
    argv = [*wsync, "manifest", workspace, *(["--cache", cache] if cache else [])]
    argv += ["--purge-bad-names"] if purge_bad_names else []
    argv += options
    argv += [f"--max-new-bytes={max_new_bytes}"] if max_new_bytes is not None else []
    code = channel.exec(argv, stdin=None, stdout=cast(BinaryIO, out), stderr=cast(BinaryIO, err))
    if code == EXIT_TOO_LARGE and max_new_bytes is not None:
        raise _too_large_from_guest(err.getvalue(), max_new_bytes)
    _check(code, err.getvalue(), "list the guest workspace")
    return Manifest.from_json(out.getvalue())


def collect(
    channel: ExecChannel,
    base: Manifest,
    workspace: str,
    changes_dir: Path,
    *,
    max_bytes: int = blobs_module.DEFAULT_MAX_BYTES,
    wsync: Sequence[str] = WSYNC_ARGV,
    listed: Manifest | None = None,
    rules: ExcludeRules | None = None,
) -> Collected:
    """After a run: compute the changeset against `base`, fetch the changed files' contents.

    Writes changes_dir/changeset.json and changes_dir/blobs/<sha256>. Call it only once the
    run's unit has stopped (nothing may write the workspace meanwhile). `listed` is the
    workspace's manifest if the caller already has it (one guest call fewer); `rules` the ones
    sync-in used (None: the default secret patterns): what they match is refused, never fetched.
    When the new contents add up to more than `max_bytes` at their apparent sizes, raises
    ChangesTooLarge before anything is fetched or written.
    """
    if listed is None:
        listed = guest_manifest(channel, workspace, wsync=wsync, max_new_bytes=max_bytes)
    changeset = compute(base, listed, rules=rules, umask=process_umask())
    wanted = blobs_module.wanted_paths(changeset)
    check_collect_size(changeset, max_bytes)
    ensure_private_dir(changes_dir)
    changeset_module.save(changeset, changes_dir / "changeset.json")
    store = blobs_module.BlobStore(changes_dir / "blobs")
    if not wanted:
        # No new contents to fetch (nothing changed, or only deletions, links, modes): a pack
        # round trip would cost a guest process start for an empty tar.
        ensure_private_dir(store.folder)
        return Collected(changeset, store, blobs_module.ReceiveReport((), (), ()), ())
    tar_path = changes_dir / "incoming.tar"
    err = TailBuffer(_STDERR_KEPT)
    # The tar's own overhead per member: its header, a PAX header naming it (paths up to 4 KiB)
    # and padding, under 6 KiB; then the end blocks.
    limit = max_bytes + len(wanted) * 6 * 1024 + (1 << 20)
    overflow = SyncError("the guest sent more than the changed files' size", hint="run again")
    try:
        with open_private(tar_path) as raw:
            sparse = SparseWriter(raw.fileno())
            request = json.dumps(sorted(wanted)).encode()
            code = channel.exec(
                [*wsync, "pack", workspace],
                stdin=request,
                stdout=cast(BinaryIO, CappedSink(cast(BinaryIO, sparse), limit, overflow)),
                stderr=cast(BinaryIO, err),
            )
            sparse.finish()
        _check(code, err.getvalue(), "pack the changed files")
        with tar_path.open("rb") as source:
            received = blobs_module.receive(source, changeset, store, max_bytes=max_bytes)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tar_path.unlink()
    return Collected(changeset, store, received, _pack_problems(err.getvalue()))


def process_umask() -> int:
    """This process's umask (what the user's new files get), read without loosening it."""
    with contextlib.suppress(OSError, ValueError), Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    # Reading the umask means setting it: meanwhile a file another thread creates gets the
    # tight 077, never looser than the user's.
    previous = os.umask(0o077)
    os.umask(previous)
    return previous


def save_manifest(manifest: Manifest, path: Path) -> None:
    """Store a manifest (the run's base) as its wire format."""
    write_private(path, manifest.to_json())


def load_manifest(path: Path) -> Manifest:
    """Read a stored manifest."""
    return Manifest.from_json(path.read_bytes())


class ChangesTooLarge(SyncError):
    """The agent's new contents exceed the collect cap; nothing was fetched or written."""

    def __init__(self, total: int, cap: int, largest: Sequence[tuple[str, int]]) -> None:
        shown = ", ".join(f"{strip_control(path)[:200]} ({_mib(size)})" for path, size in largest[:5])
        super().__init__(
            f"the agent's new and changed files add up to {_mib(total)} (apparent sizes, sparse "
            f"files at their full length), over the collect cap of {_mib(cap)}"
            + (f"; largest: {shown}" if shown else ""),
            hint="they stay in the guest's workspace: look at them with `vmsbx ssh`; "
            "`vmsbx discard` frees it; or raise [sync] collect_max in your user config and run again",
        )
        self.total, self.cap, self.largest = total, cap, tuple(largest)


def check_collect_size(changeset: Changeset, max_bytes: int) -> None:
    """Refuse a changeset whose new contents exceed `max_bytes` at their apparent sizes."""
    wanted = blobs_module.wanted_paths(changeset)
    sizes = sorted(
        ((entry.new_size or 0, entry.path) for entry in changeset.entries if entry.path in wanted),
        reverse=True,
    )
    total = sum(size for size, _path in sizes)
    if total > max_bytes:
        raise ChangesTooLarge(total, max_bytes, [(path, size) for size, path in sizes[:5]])


def _too_large_from_guest(stderr: bytes, cap: int) -> ChangesTooLarge:
    """The guest's early refusal (it had not hashed anything). Its numbers are only shown."""
    try:
        said = json.loads(stderr.decode("utf-8", errors="replace").strip().splitlines()[-1])["too_large"]
        largest = [(str(path), int(size)) for path, size in said["largest"]][:5]
        return ChangesTooLarge(int(said["bytes"]), cap, largest)
    except (ValueError, KeyError, IndexError, TypeError):
        return ChangesTooLarge(cap + 1, cap, [])


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.0f} MiB" if size >= 1 << 20 else f"{size} bytes"


def _pack_problems(stderr: bytes) -> tuple[tuple[str, str], ...]:
    try:
        problems = json.loads(stderr.decode("utf-8", errors="replace").strip().splitlines()[-1])["problems"]
        return tuple((strip_control(str(path)), strip_control(str(why))) for path, why in problems)
    except (ValueError, KeyError, IndexError, TypeError):
        return ()


def _check(code: int, err: bytes, what: str) -> None:
    if code == 0:
        return
    detail = strip_control(err[-_STDERR_SHOWN:].decode("utf-8", errors="replace")).strip()
    raise SyncError(
        f"could not {what} (wsync.py exit {code}): {detail}",
        hint="`vmsbx up` reinstalls the guest's sync helper; then run again",
    )
