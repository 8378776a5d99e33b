"""runs/<id>/run.json: what vmsbx knows about one run, written by vmsbx itself (trusted).

Every decision recorded here (exit status, reason, resource peaks) comes from systemd in the
guest via the launcher's ExecStopPost= step, never from text the sandboxed program printed.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.config.models import SandboxSettings
from vmsbx.errors import UsageError
from vmsbx.paths import ensure_private_dir, state_root, write_private
from vmsbx.sandbox.layout import is_run_id

RunState = Literal["starting", "running", "exited", "failed", "lost"]


class Resources(BaseModel):
    """Peaks read from the run's cgroup after it ended."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    memory_peak: int | None = Field(default=None, description="memory.peak, bytes.")
    cpu_usage_usec: int | None = Field(default=None, description="cpu.stat usage_usec.")
    tasks_peak: int | None = Field(default=None, description="pids.peak, if the kernel has it.")
    oom_kills: int = Field(default=0, description="memory.events oom_kill.")
    tasks_limit_hits: int = Field(default=0, description="pids.events max: forks refused.")


class BudgetCap(BaseModel):
    """The run's --budget as the relay enforced it (None: no cap of that kind)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tokens: int | None = None
    usd: float | None = None


class ProfileCopy(BaseModel):
    """What of the host user's Claude profile (~/.claude) an agent run got a copy of."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="The config folder it was read from.")
    copied: list[str] = Field(default_factory=list, description="Files (and mcpServers.<name>) copied.")
    left_out: list[str] = Field(default_factory=list, description="What was left out, and why.")


class ContinuedFrom(BaseModel):
    """The earlier run's conversation an agent run continued (`vmsbx run --continue/--resume`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    run: str = Field(description="The earlier run's id.")
    session: str = Field(description="Claude Code's session id of the conversation.")


class RunRecord(BaseModel):
    """One run, as `vmsbx runs` lists it and `run.json` stores it."""

    model_config = ConfigDict(extra="forbid")
    id: str
    vm: str
    sandbox: Literal["systemd", "nsjail"]
    command: tuple[str, ...]
    tty: bool
    policy: SandboxSettings
    unit: str
    invocation_id: str | None = None
    exposure: float | None = Field(default=None, description="systemd-analyze security score of the unit.")
    state: RunState = "starting"
    started_at: str
    ended_at: str | None = None
    duration: float | None = Field(default=None, description="Seconds from start to end.")
    exit_code: int | None = Field(default=None, description="vmsbx's exit code for this run.")
    reason: str | None = Field(default=None, description="Why it ended, in one line.")
    service_result: str | None = Field(default=None, description="systemd's Result= of the unit.")
    resources: Resources = Field(default_factory=Resources)
    journal_cursor: str | None = Field(default=None, description="Where the next log pull resumes.")
    outside_uid: int | None = Field(default=None, description="nsjail mode: the jail user's id outside.")
    project: str | None = Field(default=None, description="The host project folder the run mirrored.")
    workspace_key: str | None = Field(default=None, description="Which guest mirror of the project it used.")
    changes: Literal["none", "pending", "collected", "held", "failed", "applied", "discarded"] = Field(
        default="none",
        description="Where the agent's changes are: in the guest, in runs/<id>/changes, …; held: "
        "over the collect cap, kept in the guest's mirror (workspace_key) until discarded.",
    )
    collect_max: int | None = Field(
        default=None, description="[sync] collect_max when the run started (None: vmsbx's default)."
    )
    relay: bool = Field(default=False, description="Whether the run could reach the model API via the relay.")
    egress: bool = Field(default=False, description="Whether the run had an egress proxy (policy not none).")
    budget: BudgetCap | None = Field(default=None, description="The run's API spend cap, if it had one.")
    warnings: list[str] = Field(default_factory=list, description="What the user was warned about.")
    api: dict[str, object] | None = Field(
        default=None, description="The relay's account of the run's API use."
    )
    guest_notes: list[str] = Field(
        default_factory=list,
        description="What root in the guest refused or cut short when it recorded the run "
        "(e.g. a transcript the run replaced with a symlink or a FIFO).",
    )
    jail_problems: list[str] = Field(
        default_factory=list, description="nsjail mode: weaknesses found in the rendered jail config."
    )
    claude_profile: ProfileCopy | None = Field(
        default=None, description="Agent runs: what of the user's Claude profile the run was given."
    )
    workdir: str | None = Field(
        default=None,
        description="Where the run saw its workspace (the project's own path, or /workspace/NAME); "
        "None for runs recorded before vmsbx gave it a stable path.",
    )
    conversation: list[str] = Field(
        default_factory=list,
        description="Agent runs: Claude Code's session ids of the conversations kept in "
        "runs/<id>/sessions/, oldest first (the last one is what --continue resumes).",
    )
    continued_from: ContinuedFrom | None = Field(
        default=None, description="Agent runs: the earlier run's conversation this run continued."
    )


def runs_root() -> Path:
    return state_root() / "runs"


def run_dir(run_id: str) -> Path:
    if not is_run_id(run_id):
        raise UsageError(
            f"invalid run id {run_id!r}", hint="run ids are 12 lowercase hex characters; see `vmsbx runs`"
        )
    return runs_root() / run_id


def save(record: RunRecord) -> None:
    # The conversation, the stream and the changes live beside it: 0700/0600 whatever the umask.
    directory = ensure_private_dir(run_dir(record.id))
    write_private(directory / "run.json", record.model_dump_json(indent=2))


def discard(run_id: str) -> None:
    """Forget a record that never started (e.g. a launch retried under a new id): its folder
    holds only what vmsbx wrote before the launch (run.json, the sync's base and summary)."""
    shutil.rmtree(run_dir(run_id), ignore_errors=True)


def load(run_id: str) -> RunRecord:
    path = run_dir(run_id) / "run.json"
    if not path.is_file():
        raise UsageError(f"no run {run_id!r}", hint="`vmsbx runs` lists the runs vmsbx knows")
    return RunRecord.model_validate_json(path.read_text())


def all_runs() -> list[RunRecord]:
    root = runs_root()
    if not root.is_dir():
        return []
    records = []
    for entry in root.iterdir():
        if is_run_id(entry.name) and (entry / "run.json").is_file():
            records.append(RunRecord.model_validate_json((entry / "run.json").read_text()))
    return sorted(records, key=lambda r: r.started_at)


def resolve(run_id: str | None) -> RunRecord:
    """A run by id, or the newest one when no id is given."""
    if run_id:
        return load(run_id)
    runs = all_runs()
    if not runs:
        raise UsageError("there are no runs yet", hint="start one with `vmsbx run -- CMD`")
    return runs[-1]


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
