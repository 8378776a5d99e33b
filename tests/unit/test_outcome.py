"""systemd's verdict on a run -> vmsbx's exit code and reason (the documented table)."""

from __future__ import annotations

import pytest

from vmsbx.config.models import SandboxSettings
from vmsbx.runs.outcome import GuestResult, outcome

POLICY = SandboxSettings(memory_max=512 << 20, timeout=30, tasks_max=64)


def result(service: str, code: str, status: str, **extra: int) -> GuestResult:
    return GuestResult(service_result=service, exit_code=code, exit_status=status, **extra)


@pytest.mark.parametrize(
    ("verdict", "expected_code", "reason_part"),
    [
        (result("success", "exited", "0"), 0, "exited with code 0"),
        (result("exit-code", "exited", "3"), 3, "exited with code 3"),
        (result("exit-code", "exited", "127"), 127, "code 127"),
        (result("oom-kill", "killed", "KILL", oom_kills=1), 137, "out of memory"),
        (result("timeout", "killed", "TERM"), 143, "timeout"),
        (result("signal", "killed", "SEGV"), 139, "killed by signal SIGSEGV"),
        (result("core-dump", "dumped", "ABRT"), 134, "dumped core on signal SIGABRT"),
        # `systemctl stop`: SIGTERM is a clean exit for systemd, but the program did not finish.
        (result("success", "killed", "TERM"), 143, "killed by signal SIGTERM"),
        (result("start-limit-hit", "", ""), 125, "the sandbox ended the run"),
    ],
)
def test_outcome_table(verdict: GuestResult, expected_code: int, reason_part: str) -> None:
    code, reason = outcome(verdict, POLICY)
    assert code == expected_code
    assert reason_part in reason


def test_limits_are_named_in_reasons() -> None:
    assert "512M" in outcome(result("oom-kill", "killed", "KILL"), POLICY)[1]
    assert "30s" in outcome(result("timeout", "killed", "TERM"), POLICY)[1]


def test_tasks_limit_is_reported_whatever_the_end() -> None:
    code, reason = outcome(result("timeout", "killed", "TERM", tasks_limit_hits=12), POLICY)
    assert code == 143
    assert "TasksMax=64" in reason
    assert "12 forks" in reason


def test_unknown_fields_from_the_guest_are_ignored_not_trusted() -> None:
    parsed = GuestResult.model_validate_json(
        '{"service_result": "success", "exit_code": "exited", "exit_status": "0", "extra": "x"}'
    )
    assert outcome(parsed, POLICY) == (0, "exited with code 0")


def test_what_root_refused_at_the_end_is_kept_and_clipped() -> None:
    said = GuestResult.model_validate_json(
        '{"service_result": "success", "exit_code": "exited", "exit_status": "0",'
        ' "notes": ["transcript not saved: transcript is a FIFO, not a file"]}'
    )
    assert said.notes == ["transcript not saved: transcript is a FIFO, not a file"]
    assert result("success", "exited", "0").notes == []  # a guest from before notes
    flooded = GuestResult(
        service_result="success", exit_code="exited", exit_status="0", notes=["x" * 10_000] * 100
    )
    assert len(flooded.notes) == 16 and {len(note) for note in flooded.notes} == {300}
    odd = GuestResult.model_validate({"service_result": "", "exit_code": "", "exit_status": "", "notes": "a"})
    assert odd.notes == []
