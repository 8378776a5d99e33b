"""Pure pieces of a run on the host: the fail-closed policy checks."""

from __future__ import annotations

import pytest

from vmsbx.config.models import SandboxSettings, Settings
from vmsbx.errors import UsageError
from vmsbx.guest import GuestFacts, check_walls
from vmsbx.runs.lifecycle import check_policy


def test_policy_checks_fail_closed() -> None:
    check_policy(Settings())
    check_policy(Settings(sandbox=SandboxSettings(network="api")))
    with pytest.raises(UsageError, match=r"empty sandbox\.allow_hosts"):
        check_policy(Settings(sandbox=SandboxSettings(network="allowlist")))
    check_policy(Settings(sandbox=SandboxSettings(network="allowlist", allow_hosts=("github.com",))))
    check_policy(Settings(sandbox=SandboxSettings(network="open")))


def facts(**overrides: str) -> GuestFacts:
    values = {
        "pid1": "systemd",
        "systemd_version": "252",
        "cgroup_fs": "cgroup2fs",
        "arch": "x86_64",
        "kernel": "6.1.0",
        "system_state": "running",
        "max_user_namespaces": "1000",
        "guest_version": "",
    }
    values.update(overrides)
    return GuestFacts(**values)


def test_guest_without_a_wall_is_refused() -> None:
    check_walls(facts())
    for bad, words in (
        ({"pid1": "init"}, "not systemd"),
        ({"systemd_version": "247"}, "older than 248"),
        ({"cgroup_fs": "tmpfs"}, "cgroup v2"),
    ):
        with pytest.raises(Exception, match=words) as refused:
            check_walls(facts(**bad))
        assert refused.value.exit_code == 10  # type: ignore[attr-defined]


def test_guest_python_fact_is_a_python3_name_or_nothing() -> None:
    assert facts(python="python3.13").python == "python3.13"
    assert facts().python == ""  # facts gathered before the field existed
    for hostile in ("python3.13/../../etc", "../shadow", "python3.13\n", "ruby3.3"):
        with pytest.raises(ValueError, match="python"):
            facts(python=hostile)
