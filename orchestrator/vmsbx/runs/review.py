"""Review of a run's changes: the summary, `vmsbx diff`, `apply` and `discard`.

Works only from what `finish` stored in runs/<id>/changes (the changeset pinned by its digest,
the checked blobs, the git bundle) — never from the guest, which may hold something else by
now. Apply writes only inside the run's own project folder, through the sync engine's
link-refusing, conflict-checking, all-or-nothing `apply`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vmsbx.errors import SyncError, UsageError, VmsbxError
from vmsbx.runs import commits as commit_reviews
from vmsbx.runs import gitbundle
from vmsbx.runs import record as records
from vmsbx.runs.commits import CommitPath, CommitReview
from vmsbx.runs.record import RunRecord
from vmsbx.sync import apply as applier
from vmsbx.sync.blobs import BlobStore
from vmsbx.sync.changeset import Changeset
from vmsbx.sync.changeset import load as load_changeset
from vmsbx.sync.diff import render_diff, show_path
from vmsbx.sync.manifest import Manifest
from vmsbx.textsafe import strip_control


def _changes_dir(run_id: str) -> Path:
    return records.run_dir(run_id) / "changes"


def bundle_path(run_id: str) -> Path | None:
    path = _changes_dir(run_id) / "commits.bundle"
    return path if path.is_file() else None


def base_commits(run_id: str) -> list[str]:
    """The commits the host had at sync-in (the bundle leaves them out)."""
    try:
        listed = json.loads((_changes_dir(run_id) / "base-commits.json").read_text())
    except (OSError, ValueError):
        return []
    return [sha for sha in listed if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha)]


def inspect_commits(run_id: str, project: Path, bundle: Path) -> CommitReview:
    """Inspect the bundle (see runs/commits.py) and store the review beside it."""
    review = commit_reviews.inspect(bundle, project, base_commits(run_id), gitbundle.branch_name(run_id))
    commit_reviews.save(review, _changes_dir(run_id) / commit_reviews.COMMITS_FILE)
    return review


def commit_review(record: RunRecord) -> CommitReview | None:
    """What the agent's commits bring, or None when the run made none. Runs collected before
    reviews were stored, or whose review could not be made, are inspected (again) now."""
    bundle = bundle_path(record.id)
    if bundle is None:
        return None
    review = commit_reviews.load(_changes_dir(record.id) / commit_reviews.COMMITS_FILE)
    if review is not None and not review.error:
        return review
    return inspect_commits(record.id, Path(record.project or "."), bundle)


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
    run_id: str, changeset: Changeset, commits: CommitReview | None, problems: tuple[str, ...] = ()
) -> list[str]:
    """The end-of-run summary: what changed, what needs care, what to do next."""
    if not changeset.entries and commits is None:
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
    if commits is not None:
        lines += commit_lines(commits)
    lines += [f"  problem: {_safe(problem)}" for problem in problems]
    lines.append(f"  next: `vmsbx diff {run_id}`, `vmsbx apply {run_id}` or `vmsbx discard {run_id}`")
    return lines


def commit_lines(commits: CommitReview) -> list[str]:
    """The agent's commits: how many, what merging their branch brings, what is flagged."""
    if commits.error:
        why = _safe(commits.error)
        return [f"  git commits: could not be inspected, so `vmsbx apply` will not fetch them: {why}"]
    lines = [f"  git commits: {commits.commit_count} new, as branch {commits.branch}:"]
    lines += [f"    {c.id[:12]} {_safe(c.subject)}" for c in commits.commits[:20]]
    if commits.commit_count > 20:
        lines.append(f"    … and {commits.commit_count - 20} more")
    brings = commits.brings
    lines.append(f"  merging {commits.branch} brings {len(brings)} path(s):")
    lines += [f"    {_commit_path(path)}" for path in brings[:200]]
    if len(brings) > 200:
        lines.append(f"    … and {len(brings) - 200} more (`vmsbx diff` lists them all)")
    flagged = commits.flagged
    if commits.refused:
        lines.append(
            f"  the commits touch paths vmsbx never brings back, so `vmsbx apply` will not fetch them: "
            f"{len(commits.refused)}"
        )
    elif flagged:
        lines.append(
            "  held back (the commits touch paths that can run code on your machine; "
            f"`vmsbx apply --include-sensitive` fetches the branch): {len(flagged)}"
        )
    lines += [f"    {_commit_path(path)}  ({_safe(path.reason)})" for path in flagged[:200]]
    return lines


def _commit_path(path: CommitPath) -> str:
    mark = "h" if path.change == "history" else _mark(path.change)
    flag = "" if path.classification == "apply" else f"  [{path.classification}]"
    history = "  (in the history only, not at the tip)" if path.change == "history" else ""
    return f"{mark} {_safe(show_path(path.path))}{flag}{history}"


def _mark(change: str) -> str:
    return {"added": "+", "deleted": "-", "modified": "~", "mode": "m", "type": "t"}.get(change, "?")


def _safe(text: str) -> str:
    return " ".join(strip_control(text).split())[:300]


def diff_text(record: RunRecord) -> str:
    changeset = stored(record)
    text = render_diff(changeset, BlobStore(_changes_dir(record.id) / "blobs"), Path(record.project or "."))
    bundle, commits = bundle_path(record.id), commit_review(record)
    if bundle is None or commits is None:
        return text
    header = "\n".join(f"# {line.strip()}" for line in commit_lines(commits))
    text += f"\n# The agent's git commits (branch {commits.branch} on `vmsbx apply`; not fetched yet)\n"
    text += strip_control(header) + "\n\n"
    project = Path(record.project or ".")
    return text + commit_reviews.patch_text(bundle, project, commits, base_commits(record.id))


BranchOutcome = Literal["none", "fetched", "held-back", "refused"]


@dataclass(frozen=True)
class Applied:
    """What `apply` did with the files and with the agent's commits."""

    files: applier.ApplyReport
    commits: CommitReview | None
    branch: BranchOutcome


def apply_run(record: RunRecord, *, include_sensitive: bool, digest: str | None = None) -> Applied:
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
    bundle, commits = bundle_path(record.id), commit_review(record)
    branch: BranchOutcome = "none"
    if bundle is not None and commits is not None:
        # The same rule as for files: sensitive paths need --include-sensitive, refused never
        # come; a branch whose commits could not be inspected is not fetched either.
        if commits.error or commits.refused:
            branch = "refused"
        elif commits.flagged and not include_sensitive:
            branch = "held-back"
        else:
            gitbundle.fetch(project, bundle, record.id)
            branch = "fetched"
    files_done = not report.conflicts and not (report.held_back and not include_sensitive)
    if files_done and branch in ("none", "fetched"):
        record.changes = "applied"
        records.save(record)
    return Applied(files=report, commits=commits, branch=branch)


def report_lines(record: RunRecord, applied: Applied) -> list[str]:
    report, commits = applied.files, applied.commits
    lines = [f"vmsbx: applied {len(report.applied)} change(s) to {record.project}"]
    conflict = "  conflict (changed on this machine during the run; yours is kept):"
    lines += [f"{conflict} {_safe(p)} — {_safe(why)}" for p, why in report.conflicts]
    lines += [f"  refused: {_safe(p)} — {_safe(why)}" for p, why in report.refused]
    lines += [f"  mode: {_safe(p)} — {_safe(what)}" for p, what in report.mode_notes]
    if report.held_back:
        lines.append(f"  held back (sensitive; --include-sensitive applies them): {len(report.held_back)}")
        lines += [f"    {_safe(p)}" for p in report.held_back]
    if commits is None:
        return lines
    branch = commits.branch
    if applied.branch == "fetched":
        lines.append(f"  git: the agent's {commits.commit_count} commit(s) are on branch {branch} (unmerged)")
        lines.append(f"  merging {branch} brings {len(commits.brings)} path(s):")
        lines += [f"    {_commit_path(path)}" for path in commits.brings[:200]]
        if commits.flagged:
            flagged = len(commits.flagged)
            lines.append(f"  flagged in the commits (can run code on your machine; review first): {flagged}")
            lines += [f"    {_commit_path(path)}  ({_safe(path.reason)})" for path in commits.flagged[:200]]
        lines.append(f"  inspect: `git log -p HEAD..{branch}`; merge: `git merge {branch}`")
    elif applied.branch == "held-back":
        lines.append(
            f"  git: held back, branch {branch} not fetched: the commits touch paths that can run code on "
            f"your machine ({len(commits.flagged)}; `vmsbx diff {record.id}` shows them; "
            "--include-sensitive fetches the branch):"
        )
        lines += [f"    {_commit_path(path)}  ({_safe(path.reason)})" for path in commits.flagged[:200]]
    else:
        why = _safe(commits.error) if commits.error else "they touch paths vmsbx never brings back"
        lines.append(f"  git: refused, branch {branch} not fetched: {why}")
        lines += [f"    {_commit_path(path)}  ({_safe(path.reason)})" for path in commits.refused[:200]]
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
    (_changes_dir(record.id) / commit_reviews.COMMITS_FILE).unlink(missing_ok=True)
    record.changes = "discarded"
    records.save(record)
