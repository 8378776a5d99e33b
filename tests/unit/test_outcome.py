"""systemd's verdict on a run -> vmsbx's exit code and reason (the documented table)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmsbx.config.models import SandboxSettings
from vmsbx.runs.outcome import GuestResult, jail_failure, outcome

POLICY = SandboxSettings(memory_max=512 << 20, timeout=30, tasks_max=64)


def result(service: str, code: str, status: str, **extra: int | bool) -> GuestResult:
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


# The journal of a real `vmsbx run --sandbox nsjail -- true` on a trixie guest (systemd 257)
# before the fix: nsjail refused the jail's procfs and exited 255 before the holder ran.
JAIL_REFUSED = Path(__file__).parent / "golden" / "journal_nsjail_proc_refused.jsonl"


def test_a_jail_that_never_started_is_125_not_the_commands_255() -> None:
    refused = result("exit-code", "exited", "255", holder_started=False)
    code, reason = outcome(refused, POLICY)
    assert code == 125
    assert "failed before the command started" in reason


def test_a_command_that_exits_255_itself_keeps_its_code() -> None:
    own = result("exit-code", "exited", "255", holder_started=True)
    assert outcome(own, POLICY) == (255, "exited with code 255")
    # A guest launcher from before the field: unknown, so the command's code as before.
    assert outcome(result("exit-code", "exited", "255"), POLICY)[0] == 255


def test_a_run_stopped_before_its_holder_started_is_not_called_a_start_failure() -> None:
    stopped = result("success", "killed", "TERM", holder_started=False)
    assert outcome(stopped, POLICY)[0] == 143


def test_jail_failure_names_nsjails_first_error_and_its_cause() -> None:
    why = jail_failure(JAIL_REFUSED.read_bytes().splitlines())
    assert why == (
        "nsjail: Failed to mount mandatory point: '/proc' (mount('none' -> '/tmp/nsjail.0.root//proc'): "
        "procfs mount may fail if /proc has overmounts (e.g., /dev/null on /proc/kcore): "
        "Operation not permitted)"
    )


def test_jail_failure_is_none_without_an_nsjail_error_and_cleans_guest_text() -> None:
    assert jail_failure([b'{"MESSAGE": "Started vmsbx-run-x.service"}', b"not json", b"[1]"]) is None
    assert jail_failure([b'{"MESSAGE": ["binary", 1]}']) is None
    line = json.dumps({"MESSAGE": "[E][t][1] f():1 bad \x1b[31mred\x1b[0m\nnext" + "x" * 1000})
    why = jail_failure([line.encode()])
    assert why is not None
    assert why.startswith("nsjail: bad red next")
    assert len(why) <= 400
