"""The host refuses a launch request the guest would not read whole, and says what to shrink."""

from __future__ import annotations

from launch_samples import sample_request

from vmsbx.contract import LAUNCH_REQUEST_MAX, LaunchRequest, RunSpec
from vmsbx.runs.lifecycle import request_too_big


def _with_home_file(size: int) -> LaunchRequest:
    request = sample_request("systemd")
    spec = {name: getattr(request.spec, name) for name in RunSpec.__slots__}
    spec["home_files"] = {".claude/projects/-x/s.jsonl": "x" * size}
    fields = {name: getattr(request, name) for name in LaunchRequest.__slots__}
    return LaunchRequest(**{**fields, "spec": RunSpec(**spec)})


def test_a_request_the_guest_reads_whole_passes() -> None:
    assert request_too_big(sample_request("nsjail")) is None
    assert request_too_big(_with_home_file(LAUNCH_REQUEST_MAX // 2)) is None


def test_a_bigger_one_is_refused_naming_the_home_files_and_the_fix() -> None:
    error = request_too_big(_with_home_file(LAUNCH_REQUEST_MAX))
    assert error is not None
    assert "4 MiB" in str(error) and "4096 KiB of it the run's HOME files" in str(error)
    assert "--no-claude-profile" in (error.hint or "")
