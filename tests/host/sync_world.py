"""Drives the real guest-side wsync.py as a local subprocess, the way the host drives it over
the agent's exec channel: a manifest on stdout, the sync stream on stdin, a tar from `pack`."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from vmsbx.bounded import BoundedBuffer, MiB, TailBuffer
from vmsbx.errors import SyncError
from vmsbx.sync import blobs as blobs_module
from vmsbx.sync import driver
from vmsbx.sync.changeset import Changeset, compute
from vmsbx.sync.delta import SyncPlan, plan_sync
from vmsbx.sync.manifest import Manifest, Scan, scan
from vmsbx.sync.rules import ExcludeRules
from vmsbx.sync.stream import write_stream

WSYNC = Path(__file__).resolve().parents[2] / "provision" / "guest" / "wsync.py"


def wsync(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(WSYNC), *args], input=stdin, capture_output=True, check=False, timeout=600
    )


def guest_manifest(workspace: Path, cache: Path | None = None, *, purge: bool = False) -> Manifest:
    extra = (["--cache", str(cache)] if cache else []) + (["--purge-bad-names"] if purge else [])
    done = wsync("manifest", str(workspace), *extra)
    assert done.returncode == 0, done.stderr
    return Manifest.from_json(done.stdout)


@dataclass
class Synced:
    scan: Scan
    plan: SyncPlan
    stream_bytes: int


def sync(
    project: Path,
    workspace: Path,
    rules: ExcludeRules | None = None,
    *,
    caches: Path | None = None,
    owner: str | None = None,
) -> Synced:
    """One sync-in: host scan, guest manifest, plan, stream into `wsync.py apply`."""
    host = scan(project, rules or ExcludeRules(), cache_file=caches / "host.json" if caches else None)
    guest = guest_manifest(workspace, caches / "guest.json" if caches else None, purge=True)
    plan = plan_sync(host.manifest, guest)
    buffer = io.BytesIO()
    write_stream(host, plan, buffer)
    done = wsync("apply", str(workspace), *(["--owner", owner] if owner else []), stdin=buffer.getvalue())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    return Synced(host, plan, len(buffer.getvalue()))


def collect(
    base: Manifest, workspace: Path, store_dir: Path, rules: ExcludeRules | None = None
) -> tuple[Changeset, blobs_module.BlobStore]:
    """After a run: guest manifest, changeset, `wsync.py pack` of the wanted files, blob store."""
    changeset = compute(base, guest_manifest(workspace), rules=rules or ExcludeRules())
    wanted = sorted(blobs_module.wanted_paths(changeset))
    done = wsync("pack", str(workspace), stdin=json.dumps(wanted).encode())
    assert done.returncode == 0, done.stderr
    store = blobs_module.BlobStore(store_dir)
    report = blobs_module.receive(io.BytesIO(done.stdout), changeset, store)
    assert report.rejected == () and report.missing == (), report
    return changeset, store


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under root (root included, links not followed): kind, mode, content or target."""
    tree: dict[str, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(folder) / name if name != "." else Path(folder)
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                tree[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                tree[key] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                tree[key] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
    return tree


class StreamingExec:
    """AgentClient.exec's contract with a local process, output streamed to the sinks as it
    comes (as the agent does: nothing of it is held whole here). `refuse` names verbs that
    must never be asked for: the test fails at the call."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.calls: list[list[str]] = []
        self.refuse = refuse

    def exec(
        self, argv: list[str], *, stdin: BinaryIO | bytes | None, stdout: BinaryIO, stderr: BinaryIO
    ) -> int:
        self.calls.append(argv)
        assert not set(argv) & set(self.refuse), f"the host asked the guest for {argv}"
        source = subprocess.PIPE if isinstance(stdin, bytes) else (stdin or subprocess.DEVNULL)
        process = subprocess.Popen(argv, stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if isinstance(stdin, bytes):
            assert process.stdin is not None
            process.stdin.write(stdin)
            process.stdin.close()
        assert process.stdout is not None and process.stderr is not None
        while chunk := process.stdout.read(1 << 20):
            stdout.write(chunk)
        stderr.write(process.stderr.read())
        return process.wait(timeout=600)


@dataclass(frozen=True, slots=True)
class SyncResult:
    """One sync-in: what the host held (the run's base), what travelled, how long it took."""

    scan: Scan
    plan: SyncPlan
    seconds: float


def sync_in(
    channel: driver.ExecChannel,
    project: Path,
    workspace: str,
    rules: ExcludeRules,
    *,
    host_cache: Path | None = None,
    guest_cache: str | None = None,
    owner: tuple[int, int] | None = None,
    wsync: Sequence[str] = driver.WSYNC_ARGV,
) -> SyncResult:
    """Make `workspace` an exact mirror of `project` minus what `rules` leave out, over an exec
    channel: the host half of a sync-in on its own (a run's launch streams the same plan into
    the launcher instead, runs/workspace.launch_stream).

    Idempotent: a second call with nothing changed sends no file. The returned scan's manifest
    is the base the run's changes are computed against.
    """
    started = time.monotonic()
    host = scan(project, rules, cache_file=host_cache)
    plan = plan_sync(
        host.manifest,
        driver.guest_manifest(channel, workspace, cache=guest_cache, purge_bad_names=True, wsync=wsync),
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
    out, err = BoundedBuffer(1 * MiB, "sync reply"), TailBuffer(4 * MiB)
    argv = [*wsync, "apply", workspace, *(["--owner", f"{owner[0]}:{owner[1]}"] if owner else [])]
    with os.fdopen(read_fd, "rb") as source:
        code = channel.exec(argv, stdin=source, stdout=cast(BinaryIO, out), stderr=cast(BinaryIO, err))
    producer.join()
    if failure and isinstance(failure[0], SyncError):
        raise failure[0]
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise SyncError(f"could not send the project: {failure[0]}", hint="run again") from failure[0]
    driver._check(code, err.getvalue(), "fill the guest workspace")
    return SyncResult(scan=host, plan=plan, seconds=time.monotonic() - started)
