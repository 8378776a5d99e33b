"""A run's workspace, host side: sync-in before the run, the agent's changes after it.

The guest keeps one size-capped mirror per project (guest.py `project_paths`). Before a run it
is made exactly the host's project minus excludes — only what differs travels, and what exists
only in the guest goes, so discarded changes never come back. After the run vmsbx works out
what the agent changed against the manifest it synced (`changes/base.json`), fetches the new
contents into a content-addressed store (`changes/blobs/`, each blob checked against its
hash), and, for a git project, the agent's commits as a bundle. Nothing reaches the project
until `vmsbx apply`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vmsbx.bounded import CappedSink, TailBuffer
from vmsbx.config.models import Settings
from vmsbx.contract import LaunchRequest, mirror_digest
from vmsbx.errors import SyncError
from vmsbx.paths import ensure_private_dir, open_private, vm_dir, write_private
from vmsbx.runs import gitbundle, review
from vmsbx.runs.commits import CommitReview
from vmsbx.runs.guestctl import GUEST, GuestControl
from vmsbx.sync.blobs import DEFAULT_MAX_BYTES
from vmsbx.sync.changeset import Changeset
from vmsbx.sync.delta import SyncPlan, plan_sync
from vmsbx.sync.driver import collect as driver_collect
from vmsbx.sync.driver import guest_manifest, load_manifest, save_manifest
from vmsbx.sync.manifest import ExcludedItem, Manifest, Scan, scan
from vmsbx.sync.rules import ExcludeRules, exclude_rules, rules_from_json, rules_to_json
from vmsbx.sync.stream import write_stream
from vmsbx.textsafe import strip_control


def project_key(project: Path, slot: int = 0) -> str:
    """The guest's name for a project's mirror: from its resolved path on this host. Runs of
    one project at the same time each get their own mirror (slot 1, 2, …), kept for next time."""
    name = str(project.resolve()) + (f"\0{slot}" if slot else "")
    return hashlib.sha256(name.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SyncIn:
    """One sync-in, planned: what the host has, what travels, what was left out."""

    key: str
    scan: Scan
    plan: SyncPlan
    rules: ExcludeRules
    # The mirror_digest of the kept manifest the plan was made against ('' if the guest was
    # asked for its manifest): the launcher checks it against the mirror's stamp.
    mirror: str = ""

    @property
    def excluded(self) -> tuple[ExcludedItem, ...]:
        return self.scan.excluded

    def summary(self) -> dict[str, object]:
        return {
            "files": len(self.plan.files),
            "bytes": self.plan.send_bytes,
            "deleted": len(self.plan.delete),
            "links": len(self.plan.links),
            "excluded": [{"path": item.path, "reason": item.reason} for item in self.excluded],
        }


def plan_sync_in(settings: Settings, project: Path, guest: GuestControl, vm: str, key: str) -> SyncIn:
    """Scan the project (hash cache per VM and mirror) and diff it with the guest's mirror `key`."""
    rules = exclude_rules(settings.sync.secret_patterns, settings.sync.exclude)
    cache = ensure_private_dir(vm_dir(vm) / "sync-cache") / f"{key}.json"
    host = scan(project, rules, cache_file=cache)
    kept = _take_kept_mirror(vm, key, settings.sandbox.workspace_size)
    if kept is not None:
        mirror, digest = kept
        return SyncIn(key=key, scan=host, plan=plan_sync(host.manifest, mirror), rules=rules, mirror=digest)
    # The cap goes with the manifest request: a mirror image of another size is replaced there,
    # before the plan is made from it.
    mirror = guest_manifest(
        guest.client,
        "@ws",
        purge_bad_names=True,
        wsync=[*GUEST, "wsync", "project", key],
        options=[f"--size={settings.sandbox.workspace_size}"],
    )
    return SyncIn(key=key, scan=host, plan=plan_sync(host.manifest, mirror), rules=rules)


# The mirror's manifest as the last run's end listed it. Nothing but vmsbx writes a mirror
# between runs, so the next sync can be planned against it without a guest call; the guest
# proves it (the launcher launches only if the mirror's stamp is this listing's digest, else
# EXIT_STALE_MIRROR, and the host asks for the manifest and plans again). Taken, i.e. removed,
# by the plan that uses it: the run about to start changes the mirror.


def _kept_mirror_file(vm: str, key: str) -> Path:
    return vm_dir(vm) / "sync-cache" / f"{key}.mirror.json"


def keep_mirror(vm: str, key: str, size: int, listing: bytes) -> None:
    """Keep the mirror's manifest from the end of a run (whose changes are collected)."""
    try:
        manifest = Manifest.from_json(listing)
    except SyncError:
        return
    # A name that is not UTF-8 is listed as "special"; only the guest's own listing purges it.
    if any(entry.kind == "special" for entry in manifest.entries):
        return
    ensure_private_dir(vm_dir(vm) / "sync-cache")
    write_private(_kept_mirror_file(vm, key), json.dumps({"size": size, "listing": listing.decode()}))


def _take_kept_mirror(vm: str, key: str, size: int) -> tuple[Manifest, str] | None:
    path = _kept_mirror_file(vm, key)
    try:
        kept = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    finally:
        path.unlink(missing_ok=True)
    if not isinstance(kept, dict) or kept.get("size") != size or not isinstance(kept.get("listing"), str):
        return None  # another workspace cap: the guest replaces the image when it is asked
    listing = kept["listing"].encode()
    try:
        return Manifest.from_json(listing), mirror_digest(listing)
    except SyncError:
        return None


@contextlib.contextmanager
def launch_stream(request: LaunchRequest, sync: SyncIn) -> Iterator[BinaryIO]:
    """The launcher's stdin: the request line, then the sync stream, produced by a thread
    while the agent sends it (100 MB of project never sits in memory)."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        with os.fdopen(write_fd, "wb", buffering=1 << 20) as sink:
            try:
                sink.write(request.to_json().encode() + b"\n")
                write_stream(sync.scan, sync.plan, sink)
            except BrokenPipeError:
                pass  # the launcher refused and stopped reading; its error says why
            except BaseException as exc:  # reported by the caller after the launch
                failure.append(exc)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    with os.fdopen(read_fd, "rb") as source:
        yield source
    worker.join()
    if failure:
        raise failure[0]


def save_base(run_folder: Path, sync: SyncIn, bases: list[str]) -> None:
    changes = ensure_private_dir(run_folder / "changes")
    save_manifest(sync.scan.manifest, changes / "base.json")
    write_private(changes / "rules.json", rules_to_json(sync.rules))
    write_private(changes / "base-commits.json", json.dumps(bases))
    write_private(run_folder / "sync.json", json.dumps(sync.summary(), indent=1))


@dataclass(frozen=True)
class Collected:
    changeset: Changeset
    bundle: Path | None
    commits: CommitReview | None
    problems: tuple[str, ...]


def collect(
    run_id: str,
    run_folder: Path,
    guest: GuestControl,
    project: Path,
    *,
    listed: bytes | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Collected:
    """After the run: the changeset, the new contents and the agent's commits, on the host.
    `listed`: the workspace's manifest as the guest already sent it (else it is asked for).
    `max_bytes` caps the new contents (apparent sizes) and, separately, the git bundle: over
    it, ChangesTooLarge before anything is fetched."""
    changes = ensure_private_dir(run_folder / "changes")
    base = load_manifest(changes / "base.json")
    got = driver_collect(
        guest.client,
        base,
        "@ws",
        changes,
        max_bytes=max_bytes,
        wsync=[*GUEST, "wsync", "run", run_id],
        listed=Manifest.from_json(listed) if listed is not None else None,
        rules=_stored_rules(changes),
    )
    problems = [f"{strip_control(name)}: {why}" for name, why in (*got.received.rejected, *got.pack_problems)]
    problems += [f"{strip_control(name)}: did not arrive" for name in got.received.missing]
    bundle = _collect_bundle(run_id, changes, guest, project, got.changeset, problems, max_bytes)
    commits = None if bundle is None else review.inspect_commits(run_id, project, bundle)
    return Collected(changeset=got.changeset, bundle=bundle, commits=commits, problems=tuple(problems))


def _stored_rules(changes: Path) -> ExcludeRules | None:
    """The rules the run's sync-in used; None (the default secret patterns) for a run stored
    before they were kept, or when the file is damaged."""
    try:
        return rules_from_json((changes / "rules.json").read_bytes()[: 1 << 20])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _collect_bundle(
    run_id: str,
    changes: Path,
    guest: GuestControl,
    project: Path,
    changeset: Changeset,
    problems: list[str],
    max_bytes: int,
) -> Path | None:
    touched_git = any(entry.classification == "git" for entry in changeset.entries)
    if not touched_git or not gitbundle.is_repository(project):
        return None
    bases = json.loads((changes / "base-commits.json").read_text())
    target = changes / "commits.bundle"
    err = TailBuffer(64 * 1024)
    too_big = SyncError(f"the agent's git commits make a bundle of more than {max_bytes} bytes")
    try:
        with open_private(target) as sink:
            code = guest.client.exec(
                [*GUEST, "bundle", run_id, *bases],
                stdin=None,
                stdout=CappedSink(sink, max_bytes, too_big),
                stderr=err,
            )
    except SyncError as exc:
        target.unlink(missing_ok=True)
        problems.append(f"{exc.message}: not brought back (the files were)")
        return None
    if code != 0 or target.stat().st_size == 0:
        target.unlink(missing_ok=True)
        said = strip_control(err.getvalue().decode(errors="replace")).strip()
        # git refuses an empty bundle: the agent made no new commit, nothing to bring.
        if "empty bundle" not in said:
            problems.append(f"the agent's git commits could not be bundled: {said[-300:]}")
        return None
    return target
