"""Pure pieces of a run on the host: the fail-closed policy checks, the relay plan per policy."""

from __future__ import annotations

import json

import pytest

from vmsbx.config.models import NetworkMode, SandboxSettings, Settings
from vmsbx.errors import ConfigError, UsageError
from vmsbx.guest import GuestFacts, check_walls
from vmsbx.runs.lifecycle import admission_request, check_policy, plan_relay, sandbox_environment


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


KEY = "sk-ant-api03-RECOGNISABLE-plan-key-0123456789"
TOKEN = "vmsbx-run-" + "t" * 43


def _policy(network: NetworkMode) -> Settings:
    allow = ("github",) if network == "allowlist" else ()
    return Settings(sandbox=SandboxSettings(network=network, allow_hosts=allow))


@pytest.mark.parametrize("network", ["api", "allowlist", "open"])
@pytest.mark.parametrize("is_agent", [True, False], ids=["agent", "command"])
def test_every_policy_with_a_network_goes_through_the_relay_with_its_budget(
    network: NetworkMode, is_agent: bool
) -> None:
    settings = _policy(network)
    relay = plan_relay(settings, "12k", required=is_agent, environ={"ANTHROPIC_API_KEY": KEY})
    assert relay is not None
    assert relay.budget == {"tokens": 12_000, "usd": None}
    request = admission_request(settings, "0123456789ab", TOKEN, relay)
    assert request is not None
    relay_part = request["relay"]
    assert isinstance(relay_part, dict)
    assert relay_part["budget"] == {"tokens": 12_000, "usd": None}
    assert relay_part["max_concurrent"] == 4
    assert request["egress"] == {"network": network, "allow_hosts": list(settings.sandbox.allow_hosts)}
    env = sandbox_environment(settings, {"relay": 40001, "proxy": 40002}, TOKEN, relay)
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8787"
    assert env["ANTHROPIC_API_KEY"] == TOKEN
    # The relay is on loopback: the agent reaches it directly, never through the egress proxy.
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:8788"
    assert "127.0.0.1" in env["NO_PROXY"].split(",")
    assert KEY not in json.dumps(env)


def test_a_budget_that_cannot_be_enforced_is_refused() -> None:
    with pytest.raises(UsageError, match="--budget"):
        plan_relay(_policy("none"), "12k", required=False, environ={"ANTHROPIC_API_KEY": KEY})
    # A command with a budget needs the relay, and so a credential for it.
    with pytest.raises(ConfigError, match="no API credential"):
        plan_relay(_policy("open"), "$1", required=False, environ={})
    assert plan_relay(_policy("open"), None, required=False, environ={}) is None
    assert plan_relay(_policy("none"), None, required=False, environ={"ANTHROPIC_API_KEY": KEY}) is None
    with pytest.raises(UsageError, match="'none'"):
        plan_relay(_policy("none"), None, required=True, environ={"ANTHROPIC_API_KEY": KEY})


def test_guest_python_fact_is_a_python3_name_or_nothing() -> None:
    assert facts(python="python3.13").python == "python3.13"
    assert facts().python == ""  # facts gathered before the field existed
    for hostile in ("python3.13/../../etc", "../shadow", "python3.13\n", "ruby3.3"):
        with pytest.raises(ValueError, match="python"):
            facts(python=hostile)
