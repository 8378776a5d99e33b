"""Drive the guest's wsync.py over an exec channel: sync-in before a run, collect after it.

The channel is anything with `AgentClient.exec`'s shape (argv, stdin bytes or a readable file
with a descriptor, stdout/stderr sinks, exit code). Nothing is held whole in memory: the sync
stream is produced by a thread into a pipe, and the guest's tar lands in a size-capped file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from vmsbx.errors import SyncError
from vmsbx.sandbox.layout import GUEST_LIB
from vmsbx.sync import blobs as blobs_module
from vmsbx.sync import changeset as changeset_module
from vmsbx.sync.changeset import Changeset, compute
from vmsbx.sync.delta import SyncPlan, plan_sync
from vmsbx.sync.manifest import Manifest, Scan, scan
from vmsbx.sync.rules import ExcludeRules
from vmsbx.sync.stream import write_stream
from vmsbx.textsafe import strip_control

WSYNC_ARGV: tuple[str, ...] = (f"{GUEST_LIB}/wsync.py",)
_STDERR_SHOWN = 600


class ExecChannel(Protocol):
    """What the driver needs from `AgentClient`."""

    def exec(
        self, argv: list[str], *, stdin: BinaryIO | bytes | None, stdout: BinaryIO, stderr: BinaryIO
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class SyncResult:
    """One sync-in: what the host held (the run's base), what travelled, how long it took."""

    scan: Scan
    plan: SyncPlan
    seconds: float


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
) -> Manifest:
    """The guest workspace's manifest (`wsync.py manifest`, with its hash cache if named).

    With `purge_bad_names` (sync-in), entries whose names are not UTF-8 are removed first: no
    host file has such a name and the manifest could not name them for deletion. `options` go
    to the `wsync` command as they are (the launcher's own, e.g. the workspace cap).
    """
    out, err = io.BytesIO(), io.BytesIO()
    argv = [*wsync, "manifest", workspace, *(["--cache", cache] if cache else [])]
    argv += ["--purge-bad-names"] if purge_bad_names else []
    argv += options
    code = channel.exec(argv, stdin=None, stdout=out, stderr=err)
    _check(code, err, "list the guest workspace")
    return Manifest.from_json(out.getvalue())


def sync_in(
    channel: ExecChannel,
    project: Path,
    workspace: str,
    rules: ExcludeRules,
    *,
    host_cache: Path | None = None,
    guest_cache: str | None = None,
    owner: tuple[int, int] | None = None,
    wsync: Sequence[str] = WSYNC_ARGV,
) -> SyncResult:
    """Make `workspace` in the guest an exact mirror of `project` minus what `rules` leave out.

    Idempotent: a second call with nothing changed sends no file. The returned scan's manifest
    is the base the run's changes are computed against: keep it (`save_manifest`).
    """
    started = time.monotonic()
    host = scan(project, rules, cache_file=host_cache)
    plan = plan_sync(
        host.manifest,
        guest_manifest(channel, workspace, cache=guest_cache, purge_bad_names=True, wsync=wsync),
    )
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as sink:
                write_stream(host, plan, sink)
        except BaseException as error:  # surfaced below, after the guest side has ended
            failure.append(error)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    out, err = io.BytesIO(), io.BytesIO()
    argv = [*wsync, "apply", workspace, *(["--owner", f"{owner[0]}:{owner[1]}"] if owner else [])]
    with os.fdopen(read_fd, "rb") as source:
        code = channel.exec(argv, stdin=source, stdout=out, stderr=err)
    producer.join()
    if failure and isinstance(failure[0], SyncError):
        raise failure[0]
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise SyncError(f"could not send the project: {failure[0]}", hint="run again") from failure[0]
    _check(code, err, "fill the guest workspace")
    return SyncResult(scan=host, plan=plan, seconds=time.monotonic() - started)


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
    """
    changeset = compute(
        base,
        listed if listed is not None else guest_manifest(channel, workspace, wsync=wsync),
        rules=rules,
        umask=process_umask(),
    )
    changes_dir.mkdir(parents=True, exist_ok=True)
    changeset_module.save(changeset, changes_dir / "changeset.json")
    wanted = blobs_module.wanted_paths(changeset)
    sizes = {entry.path: entry.new_size or 0 for entry in changeset.entries}
    if sum(sizes[path] for path in wanted) > max_bytes:
        raise SyncError(
            f"the agent's changed files exceed {max_bytes >> 20} MiB",
            hint="discard the run, or remove large files in the guest and collect again",
        )
    store = blobs_module.BlobStore(changes_dir / "blobs")
    if not wanted:
        # No new contents to fetch (nothing changed, or only deletions, links, modes): a pack
        # round trip would cost a guest process start for an empty tar.
        store.folder.mkdir(parents=True, exist_ok=True)
        return Collected(changeset, store, blobs_module.ReceiveReport((), (), ()), ())
    tar_path = changes_dir / "incoming.tar"
    err = io.BytesIO()
    try:
        with tar_path.open("wb") as raw, _Capped(raw, max_bytes + len(wanted) * 4096 + (1 << 20)) as sink:
            request = json.dumps(sorted(wanted)).encode()
            code = channel.exec(
                [*wsync, "pack", workspace], stdin=request, stdout=cast(BinaryIO, sink), stderr=err
            )
        _check(code, err, "pack the changed files")
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
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(manifest.to_json())
    temp.replace(path)


def load_manifest(path: Path) -> Manifest:
    """Read a stored manifest."""
    return Manifest.from_json(path.read_bytes())


class _Capped(io.RawIOBase):
    """A sink that refuses to grow past a limit (the guest decides how much it sends)."""

    def __init__(self, sink: BinaryIO, limit: int) -> None:
        super().__init__()
        self._sink, self._left = sink, limit

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._left -= len(data)
        if self._left < 0:
            raise SyncError("the guest sent more than the changed files' size", hint="run again")
        return self._sink.write(data)


def _pack_problems(stderr: bytes) -> tuple[tuple[str, str], ...]:
    try:
        problems = json.loads(stderr.decode("utf-8", errors="replace").strip().splitlines()[-1])["problems"]
        return tuple((strip_control(str(path)), strip_control(str(why))) for path, why in problems)
    except (ValueError, KeyError, IndexError, TypeError):
        return ()


def _check(code: int, err: io.BytesIO, what: str) -> None:
    if code == 0:
        return
    detail = strip_control(err.getvalue()[-_STDERR_SHOWN:].decode("utf-8", errors="replace")).strip()
    raise SyncError(
        f"could not {what} (wsync.py exit {code}): {detail}",
        hint="`vmsbx up` reinstalls the guest's sync helper; then run again",
    )
