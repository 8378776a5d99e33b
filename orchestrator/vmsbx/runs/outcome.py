"""Turn systemd's verdict on a run into vmsbx's exit code and a one-line reason (pure).

| exit code | when |
|---|---|
| the command's own code | it exited by itself (126/127: not executable / not found) |
| 128 + N | killed by signal N |
| 137 | the sandbox ended it: out of memory (MemoryMax=) |
| 143 | the sandbox ended it: wall-clock timeout (RuntimeMaxSec=, SIGTERM) |
| 125 | vmsbx or the sandbox failed to start or follow it (nsjail's own 255 included) |
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vmsbx.config.models import SandboxSettings
from vmsbx.contract import EXIT_FAILED
from vmsbx.textsafe import strip_control

SANDBOX_FAILED = EXIT_FAILED  # the launcher's own code for a sandbox that did not start
OOM_CODE = 128 + signal.SIGKILL
TIMEOUT_CODE = 128 + signal.SIGTERM
MAX_NOTES, NOTE_CHARS = 16, 300


class GuestResult(BaseModel):
    """result.json as the guest launcher's ExecStopPost= step wrote it (from systemd's env)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    service_result: str
    exit_code: str
    exit_status: str
    memory_peak: int | None = None
    cpu_usage_usec: int | None = None
    tasks_peak: int | None = None
    oom_kills: int = 0
    tasks_limit_hits: int = 0
    ended_at: float | None = None
    # Whether the session holder (the jail's or unit's first vmsbx process) ever ran: False
    # when the sandbox failed to start it (nsjail's own 255, systemd's 2xx exec failures);
    # None from a guest launcher that predates the field.
    holder_started: bool | None = None

    notes: list[str] = Field(
        default_factory=list,
        description="What root refused or cut short when it recorded the run (a planted link, a FIFO, "
        "a transcript past its cap); clipped, it comes from the guest.",
    )

    @field_validator("notes", mode="before")
    @classmethod
    def _clip_notes(cls, value: object) -> list[str]:
        if not isinstance(value, list):
            return []
        return [str(note)[:NOTE_CHARS] for note in value[:MAX_NOTES]]


def _signal_number(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals["SIG" + name.removeprefix("SIG")])
    except KeyError:
        return None


def _size(value: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value} bytes"


def outcome(result: GuestResult, policy: SandboxSettings) -> tuple[int, str]:
    """(exit code, reason) for a finished run."""
    service = result.service_result
    tasks_note = ""
    if result.tasks_limit_hits:
        tasks_note = (
            f"; the tasks limit (TasksMax={policy.tasks_max}) refused {result.tasks_limit_hits} forks"
        )
    if service == "oom-kill" or (result.oom_kills and service != "success"):
        return (
            OOM_CODE,
            f"out of memory: the run went past its memory limit ({_size(policy.memory_max)})" + tasks_note,
        )
    if service == "timeout":
        return TIMEOUT_CODE, f"timeout: the run went past its time limit ({policy.timeout:g}s)" + tasks_note
    if result.exit_code == "exited" and result.holder_started is False:
        return (
            SANDBOX_FAILED,
            f"the sandbox failed before the command started (exit status {result.exit_status})" + tasks_note,
        )
    if result.exit_code == "exited" and result.exit_status.isdigit():
        code = int(result.exit_status)
        return code, f"exited with code {code}" + tasks_note
    if result.exit_code in ("killed", "dumped"):
        number = _signal_number(result.exit_status)
        if number is not None:
            what = "dumped core on" if result.exit_code == "dumped" else "killed by"
            return 128 + number, f"{what} signal {signal.Signals(number).name}" + tasks_note
    if service == "success":
        return 0, "exited with code 0" + tasks_note
    return SANDBOX_FAILED, f"the sandbox ended the run ({service or 'unknown result'})" + tasks_note


# nsjail's log lines: "[E][2026-12-01T22:00:54+0000][1] buildMountTree():328 Failed to ...".
_NSJAIL_LOG = re.compile(r"\[([DIWEF])\]\[[^\]]*\]\[\d+\] (?:[A-Za-z_][\w:~]*\(\):\d+ )?(.+)", re.DOTALL)
JAIL_REASON_MAX = 400


def jail_failure(journal: Iterable[bytes]) -> str | None:
    """Why nsjail refused to start the jail, from the run's journal (journalctl -o json lines):
    its first error, with the warning just before it (which carries the errno), or None if
    nsjail logged no error. Only read for a run whose holder never ran, so no sandboxed code
    wrote to this journal; it is still guest output, shown cleaned and capped."""
    warning = None
    for line in journal:
        try:
            message = json.loads(line).get("MESSAGE")
        except (ValueError, AttributeError):
            continue
        match = _NSJAIL_LOG.fullmatch(message.strip()) if isinstance(message, str) else None
        if match is None:
            continue
        level, text = match.groups()
        if level in "EF":
            reason = f"nsjail: {text}" + (f" ({warning})" if warning else "")
            return " ".join(strip_control(reason).split())[:JAIL_REASON_MAX]
        if level == "W":
            warning = text
    return None
