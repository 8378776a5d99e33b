"""From raw attempt output to verdicts. Pure: no guest, no processes (unit-tested).

The run's output is the sandbox's output, so it is treated as hostile: only lines in the
attempt format, naming a known attempt, count; text is stripped of control characters and cut.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.textsafe import strip_control
from vmsbx.verify.attempts import ATTEMPTS, BY_NAME, Attempt

PREFIX = b"VMSBX-VERIFY\t"
Verdict = Literal["pass", "FAIL", "inconclusive"]


class Observation(BaseModel):
    """What one attempt reported: whether it got through, and what it saw."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    succeeded: bool = Field(description="True if the attempt got through (the wall did not hold).")
    detail: str = Field(max_length=300, description="What happened, as the attempt saw it.")


class Result(BaseModel):
    """One row of the verify table."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    attempt: str
    category: str
    tries: str
    expected: str
    observed: str = Field(description="What happened inside the sandbox.")
    control: str = Field(description="What happened outside it (must have succeeded).")
    verdict: Verdict


class RunFacts(BaseModel):
    """What vmsbx itself (not the run's output) knows about the attack run and the guest after it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    exit_code: int
    reason: str
    oom_kills: int = 0
    memory_peak: int | None = None
    memory_max: int
    healthy_before: bool
    healthy_after: bool
    health_detail: str = ""


def parse(output: bytes) -> dict[str, Observation]:
    """Result lines of attempts.py (`VMSBX-VERIFY<TAB>name<TAB>ok|fail<TAB>detail`), first one wins."""
    seen: dict[str, Observation] = {}
    for raw in output.splitlines():
        if not raw.startswith(PREFIX):
            continue
        fields = raw[len(PREFIX) :].decode(errors="replace").split("\t", 2)
        if (
            len(fields) != 3
            or fields[0] not in BY_NAME
            or fields[0] in seen
            or fields[1] not in ("ok", "fail")
        ):
            continue
        detail = strip_control(fields[2]).replace("\n", " ").strip()[:300]
        seen[fields[0]] = Observation(succeeded=fields[1] == "ok", detail=detail)
    return seen


def _describe(obs: Observation | None) -> str:
    if obs is None:
        return "did not report"
    return ("got through: " if obs.succeeded else "blocked: ") + obs.detail


def judge(inside: dict[str, Observation], control: dict[str, Observation], facts: RunFacts) -> list[Result]:
    """One verdict per attempt. A control that did not succeed makes the attempt inconclusive:
    an attempt that cannot work anywhere proves nothing about the wall."""
    return [
        _judge_one(attempt, inside.get(attempt.name), control.get(attempt.name), facts)
        for attempt in ATTEMPTS
    ]


def _judge_one(
    attempt: Attempt, inside: Observation | None, control: Observation | None, facts: RunFacts
) -> Result:
    if attempt.kind == "health":
        control = Observation(succeeded=facts.healthy_before, detail="the guest and a run worked before")
        inside = Observation(succeeded=not facts.healthy_after, detail=facts.health_detail or "-")
    elif attempt.kind == "memory" and (inside is None or not inside.succeeded):
        # Trusted numbers from systemd decide, not the run's own line: the peak stayed under the
        # limit, and either the run was killed for it or the attempt gave up (throttled).
        limit = facts.memory_max >> 20
        peak = "?" if facts.memory_peak is None else str(facts.memory_peak >> 20)
        within = facts.memory_peak is not None and facts.memory_peak <= facts.memory_max
        if within and facts.oom_kills > 0:
            inside = Observation(
                succeeded=False,
                detail=f"the sandbox ended the run: {facts.reason} (peak {peak} of {limit} MiB)",
            )
        elif within and inside is not None:
            inside = Observation(
                succeeded=False, detail=f"{inside.detail} (peak {peak} of {limit} MiB)"[:300]
            )
        else:
            inside = None
    observed = _describe(inside)
    control_text = _describe(control).replace("got through: ", "worked: ", 1)
    if control is None or not control.succeeded:
        verdict: Verdict = "inconclusive"
    elif inside is None:
        verdict = "inconclusive"
    elif inside.succeeded:
        verdict = "FAIL"
    else:
        verdict = "pass"
    return Result(
        attempt=attempt.name,
        category=attempt.category,
        tries=attempt.tries,
        expected=attempt.expected,
        observed=observed,
        control=control_text,
        verdict=verdict,
    )


def merge_aftermath(run: dict[str, Observation], aftermath: dict[str, Observation]) -> dict[str, Observation]:
    """Persistent and journal attempts are judged by what root finds after the run, not by
    whether the write itself worked inside (a write to the run's own tmpfs is allowed)."""
    merged = dict(run)
    for attempt in ATTEMPTS:
        if attempt.kind in ("persistent", "journal"):
            if attempt.name in aftermath:
                written = run.get(attempt.name)
                note = f" (in the run: {_describe(written)})" if written is not None else ""
                found = aftermath[attempt.name]
                merged[attempt.name] = Observation(
                    succeeded=found.succeeded, detail=(found.detail + note)[:300]
                )
            else:
                merged.pop(attempt.name, None)
    return merged
