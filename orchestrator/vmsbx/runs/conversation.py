"""An agent run's conversation, kept and continued (`vmsbx run --continue / --resume RUN`).

Claude Code keeps each conversation as HOME/.claude/projects/<munged cwd>/<session>.jsonl.
Root in the guest saves the run's at its end (launcher `record`); the host fetches them
(`sessions`), checks every byte (the guest is not trusted: names, count, sizes, UTF-8) and keeps
them in runs/<id>/sessions/. A later run of the same project may continue one: its file goes
into the new run's fresh HOME, under the new run's own cwd, and Claude Code is told to resume
it. Nothing else carries over. Pure, except `store` and `stored`, which read and write the
run's folder.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmsbx.bounded import MiB
from vmsbx.contract import SESSION_FILE, SESSION_ID, SESSIONS_MAX_BYTES, SESSIONS_MAX_FILES
from vmsbx.errors import TransportError, UsageError
from vmsbx.paths import ensure_private_dir, write_private
from vmsbx.runs.record import RunRecord

# What a continued run brings in its launch request (capped at 4 MiB by the guest launcher,
# next to the profile and the HOME template): the conversation's JSON-escaped size, all copies.
RESTORE_MAX = 2 * MiB
# The `sessions` reply: the saved bytes as base64 (4/3) and each line's name and time.
FETCH_MAX = SESSIONS_MAX_BYTES * 4 // 3 + SESSIONS_MAX_FILES * 256 + 4096
# The run's stand-in for the API key (agentrun.new_token): worthless once the run has ended,
# but never kept: a tool call that printed the environment would put it in the conversation.
_RUN_TOKEN = re.compile(r"vmsbx-run-[A-Za-z0-9_-]+")
REDACTED = "vmsbx-run-[redacted]"


@dataclass(frozen=True)
class SessionFile:
    """One conversation as the guest saved it."""

    session: str  # Claude Code's session id (the file's name without .jsonl)
    mtime_ns: int  # when the run last wrote it: the newest is the one to continue
    text: str


def munge(cwd: str) -> str:
    """The folder Claude Code keeps a cwd's conversations in, under HOME/.claude/projects:
    every character that is not [A-Za-z0-9] made '-'."""
    return re.sub(r"[^A-Za-z0-9]", "-", cwd)


def redact(text: str) -> str:
    return _RUN_TOKEN.sub(REDACTED, text)


def parse_sessions(out: bytes) -> tuple[list[SessionFile], list[str]]:
    """The guest's `sessions` reply (one JSON line per file, oldest first), checked as hostile:
    a line that breaks the form fails the whole reply (TransportError); a file that is not
    UTF-8 is left out with a note. Run tokens are redacted."""
    files: list[SessionFile] = []
    notes: list[str] = []
    total = 0
    lines = out.splitlines()
    if len(lines) > SESSIONS_MAX_FILES:
        raise _bad(f"{len(lines)} files, more than the {SESSIONS_MAX_FILES} the guest saves")
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            raise _bad("a line is not JSON") from None
        if not isinstance(item, dict) or set(item) != {"name", "mtime_ns", "data"}:
            raise _bad("a line is not {name, mtime_ns, data}")
        name, mtime, data = item["name"], item["mtime_ns"], item["data"]
        if not isinstance(name, str) or not SESSION_FILE.fullmatch(name):
            raise _bad("a file's name is not <uuid>.jsonl")
        if isinstance(mtime, bool) or not isinstance(mtime, int) or not isinstance(data, str):
            raise _bad(f"{name}: mtime_ns or data of the wrong type")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{name}: data is not base64") from None
        total += len(raw)
        if total > SESSIONS_MAX_BYTES:
            raise _bad(f"more than the {SESSIONS_MAX_BYTES} bytes the guest saves")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            notes.append(f"conversation {name} not kept: it is not UTF-8")
            continue
        files.append(SessionFile(session=name.removesuffix(".jsonl"), mtime_ns=mtime, text=redact(text)))
    files.sort(key=lambda f: f.mtime_ns)
    return files, notes


def _bad(what: str) -> TransportError:
    return TransportError(
        f"the guest's list of the run's conversations breaks the contract: {what}",
        hint="`vmsbx up` pushes the launcher of this vmsbx version",
    )


def pick_run(runs: Sequence[RunRecord], project: str, run_id: str | None) -> RunRecord:
    """The run whose conversation a new run of `project` continues: `run_id`'s, or (None) the
    newest run of the project that kept one. UsageError when there is none, or the named run
    is another project's or kept no conversation."""
    if run_id is None:
        kept = [r for r in runs if r.project == project and r.conversation]
        if not kept:
            raise UsageError(
                f"no earlier agent run of {project} kept a conversation to continue",
                hint="`vmsbx runs` lists the runs (CONV: yes marks those that kept one); "
                "start one with `vmsbx run -p TASK`",
            )
        return max(kept, key=lambda r: r.started_at)
    found = [r for r in runs if r.id == run_id]
    if not found:
        raise UsageError(f"no run {run_id!r}", hint="`vmsbx runs` lists the runs vmsbx knows")
    chosen = found[0]
    if chosen.project != project:
        raise UsageError(
            f"run {run_id} is a run of {chosen.project or 'no project'}, not of {project}",
            hint=f"continue it from its own folder: cd {chosen.project}" if chosen.project else "",
        )
    if not chosen.conversation:
        raise UsageError(
            f"run {run_id} kept no conversation to continue (only agent runs keep one)",
            hint="`vmsbx runs` marks the runs that kept one (CONV: yes)",
        )
    return chosen


def restore_files(run_id: str, session: str, text: str, workdirs: Sequence[str]) -> dict[str, str]:
    """HOME-relative files that put the conversation where Claude Code looks for it in the new
    run: under each path the new run may know its cwd by (the old run's cwd may differ). At
    most RESTORE_MAX as the launch request carries them (JSON-escaped), else UsageError."""
    if not SESSION_ID.fullmatch(session):
        raise UsageError(
            f"run {run_id}: {session!r} is not a conversation's id", hint="see `vmsbx runs --json`"
        )
    folders = list(dict.fromkeys(munge(cwd) for cwd in workdirs))
    size = len(json.dumps(text)) * len(folders)
    if size > RESTORE_MAX:
        raise UsageError(
            f"run {run_id}'s conversation is {size // 1024} KiB in the launch request "
            f"({len(folders)} cop{'y' if len(folders) == 1 else 'ies'}): a run continues at most "
            f"{RESTORE_MAX // MiB} MiB of conversation",
            hint="start afresh with `vmsbx run -p TASK` and put what matters of the earlier run in the task",
        )
    return {f".claude/projects/{folder}/{session}.jsonl": text for folder in folders}


def store(run_dir: Path, files: Sequence[SessionFile]) -> list[str]:
    """Keep the fetched conversations in the run's folder (0700/0600); their ids, oldest
    first."""
    if not files:
        return []
    folder = ensure_private_dir(run_dir / "sessions")
    for item in files:
        write_private(folder / f"{item.session}.jsonl", item.text)
    return [item.session for item in files]


def stored(run_dir: Path, session: str) -> str:
    """A kept conversation's text (vmsbx's own file; UsageError when it is gone)."""
    path = run_dir / "sessions" / f"{session}.jsonl"
    if not SESSION_FILE.fullmatch(path.name) or not path.is_file():
        raise UsageError(
            f"the conversation {session} of run {run_dir.name} is gone from {path.parent}",
            hint="continue another run (`vmsbx runs`), or start afresh",
        )
    return path.read_text(encoding="utf-8")
