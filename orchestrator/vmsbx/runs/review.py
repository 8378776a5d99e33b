"""Review of a run's changes: the summary, `vmsbx diff`, `apply` and `discard`.

Works only from what `finish` stored in runs/<id>/changes (the changeset pinned by its digest,
the checked blobs, the git bundle) — never from the guest, which may hold something else by
now. Apply writes only inside the run's own project folder, through the sync engine's
link-refusing, conflict-checking, all-or-nothing `apply`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from vmsbx.errors import SyncError, UsageError, VmsbxError
from vmsbx.runs import gitbundle
from vmsbx.runs import record as records
from vmsbx.runs.record import RunRecord
from vmsbx.sync import apply as applier
from vmsbx.sync.blobs import BlobStore
from vmsbx.sync.changeset import Changeset
from vmsbx.sync.changeset import load as load_changeset
from vmsbx.sync.diff import render_diff
from vmsbx.sync.manifest import Manifest
from vmsbx.textsafe import strip_control


def _changes_dir(run_id: str) -> Path:
    return records.run_dir(run_id) / "changes"


def bundle_path(run_id: str) -> Path | None:
    path = _changes_dir(run_id) / "commits.bundle"
    return path if path.is_file() else None


def stored(record: RunRecord) -> Changeset:
    if record.changes in ("pending", "none", "held", "failed"):
        what = {
            "pending": "the run has not finished (or vmsbx has not collected its changes yet)",
            "none": "the run changed nothing",
            "held": "its changes were over the collect cap and stayed in the guest",
            "failed": "vmsbx could not collect the run's changes",
        }[record.changes]
        raise UsageError(f"run {record.id}: {what}", hint="`vmsbx runs` lists runs and their changes")
    if record.changes == "discarded":
        raise UsageError(f"run {record.id}'s changes were discarded", hint="nothing to show or apply")
    path = _changes_dir(record.id) / "changeset.json"
    if not path.is_file():
        raise UsageError(f"run {record.id} has no stored changes", hint="`vmsbx runs` lists runs")
    return load_changeset(path)


def summary_lines(
    run_id: str, changeset: Changeset, bundle: Path | None, problems: tuple[str, ...] = ()
) -> list[str]:
    """The end-of-run summary: what changed, what needs care, what to do next."""
    if not changeset.entries and bundle is None:
        return [f"vmsbx: run {run_id} changed nothing in the project"]
    by_class = Counter(entry.classification for entry in changeset.entries)
    kinds = Counter(entry.change for entry in changeset.entries if entry.classification == "apply")
    detail = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    lines = [
        f"vmsbx: run {run_id} changed {by_class.get('apply', 0)} file(s)" + (f" ({detail})" if detail else "")
    ]
    for entry in changeset.entries:
        if entry.classification == "apply":
            lines.append(f"  {_mark(entry.change)} {_safe(entry.path)}")
    held = [entry for entry in changeset.entries if entry.classification == "sensitive"]
    if held:
        lines.append(f"  held back (can run code on your machine; needs --include-sensitive): {len(held)}")
        lines += [f"    {_mark(entry.change)} {_safe(entry.path)}  ({entry.reason})" for entry in held]
    refused = [entry for entry in changeset.entries if entry.classification == "refused"]
    if refused:
        lines.append(f"  refused (never applied): {len(refused)}")
        lines += [f"    {_safe(entry.path)}  ({_safe(entry.reason)})" for entry in refused]
    git = sum(1 for entry in changeset.entries if entry.classification == "git")
    if git:
        lines.append(f"  .git/ changes: {git} (never written as files; new commits come back as a branch)")
    if bundle is not None:
        lines.append(f"  git commits: `vmsbx apply` fetches them as branch {gitbundle.branch_name(run_id)}")
    lines += [f"  problem: {_safe(problem)}" for problem in problems]
    lines.append(f"  next: `vmsbx diff {run_id}`, `vmsbx apply {run_id}` or `vmsbx discard {run_id}`")
    return lines


def _mark(change: str) -> str:
    return {"added": "+", "deleted": "-", "modified": "~", "mode": "m"}.get(change, "?")


def _safe(text: str) -> str:
    return " ".join(strip_control(text).split())[:300]


def diff_text(record: RunRecord) -> str:
    changeset = stored(record)
    text = render_diff(changeset, BlobStore(_changes_dir(record.id) / "blobs"), Path(record.project or "."))
    bundle = bundle_path(record.id)
    if bundle is not None:
        text += f"\n# git commits: a bundle of the agent's HEAD ({bundle.stat().st_size} bytes), "
        text += f"fetched as branch {gitbundle.branch_name(record.id)} by `vmsbx apply`\n"
    return text


def apply_run(
    record: RunRecord, *, include_sensitive: bool, digest: str | None = None
) -> applier.ApplyReport:
    """Apply the stored changeset (pinned by `digest` if given) to the run's project."""
    if record.changes == "applied":
        raise UsageError(f"run {record.id}'s changes were already applied", hint="nothing left to do")
    changeset = stored(record)
    if digest is not None and digest != changeset.digest:
        raise SyncError(
            "the stored changes are not the ones you reviewed (their digest differs)",
            hint=f"`vmsbx diff {record.id}` shows them; apply with the digest it prints",
        )
    project = Path(record.project or "")
    if not record.project or not project.is_dir():
        raise UsageError(f"the run's project folder {project} is gone", hint="discard the run")
    base = Manifest.from_json((_changes_dir(record.id) / "base.json").read_bytes())
    report = applier.apply(
        project,
        changeset,
        BlobStore(_changes_dir(record.id) / "blobs"),
        base=base,
        shown_digest=changeset.digest,
        include_sensitive=include_sensitive,
    )
    bundle = bundle_path(record.id)
    if bundle is not None:
        gitbundle.fetch(project, bundle, record.id)
    if not report.conflicts and not (report.held_back and not include_sensitive):
        record.changes = "applied"
        records.save(record)
    return report


def report_lines(record: RunRecord, report: applier.ApplyReport) -> list[str]:
    lines = [f"vmsbx: applied {len(report.applied)} change(s) to {record.project}"]
    conflict = "  conflict (changed on this machine during the run; yours is kept):"
    lines += [f"{conflict} {_safe(p)} — {_safe(why)}" for p, why in report.conflicts]
    lines += [f"  refused: {_safe(p)} — {_safe(why)}" for p, why in report.refused]
    if report.held_back:
        lines.append(f"  held back (sensitive; --include-sensitive applies them): {len(report.held_back)}")
        lines += [f"    {_safe(p)}" for p in report.held_back]
    if bundle_path(record.id) is not None:
        lines.append(f"  git: the agent's commits are on branch {gitbundle.branch_name(record.id)}")
    return lines


def discard(record: RunRecord, release: Callable[[], None] | None = None) -> None:
    """Drop the stored changes; the guest's copy is reset by the next sync anyway. A held run
    (over the collect cap) also gives its guest mirror back: `release` frees its hold there
    (best effort: with the guest down, the next sync of that mirror resets it all the same)."""
    if record.changes == "pending":
        raise UsageError(f"run {record.id} has not finished", hint=f"`vmsbx stop-run {record.id}` first")
    if record.changes == "held" and release is not None:
        with contextlib.suppress(VmsbxError, OSError):
            release()
    shutil.rmtree(_changes_dir(record.id) / "blobs", ignore_errors=True)
    (_changes_dir(record.id) / "commits.bundle").unlink(missing_ok=True)
    record.changes = "discarded"
    records.save(record)
