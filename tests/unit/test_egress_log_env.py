"""The sandbox's proxy environment, the decision log file and `vmsbx logs --network` (pure)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmsbx.agent.egress.netlog import NETWORK_LOG_NAME, append_decision, summarise
from vmsbx.agent.egress.sandbox_env import env_for_sandbox
from vmsbx.cli.main import cli
from vmsbx.config import SandboxSettings
from vmsbx.runs import record as records


def test_no_network_means_no_proxy_variables() -> None:
    assert env_for_sandbox("none", 3128) == {}


@pytest.mark.parametrize("policy", ["api", "allowlist", "open"])
def test_every_proxied_policy_points_all_clients_at_the_one_port(policy: str) -> None:
    env = env_for_sandbox(policy, 3128)  # type: ignore[arg-type]
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        assert env[name] == env[name.lower()] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    argv = shlex.split(env["GIT_SSH_COMMAND"])
    assert argv[0] == "ssh"
    assert "ProxyCommand=socat - PROXY:127.0.0.1:%h:%p,proxyport=3128" in argv
    assert "ControlMaster=no" in argv


@pytest.mark.parametrize("port", [0, 65536, True, "3128"])
def test_a_bad_port_is_refused(port: object) -> None:
    with pytest.raises(ValueError, match="1 to 65535"):
        env_for_sandbox("allowlist", port)  # type: ignore[arg-type]


def _record(host: str | None, port: int | None, decision: str, **extra: object) -> dict[str, object]:
    return {"time": "2026-01-01T00:00:00.000+00:00", "run": "abc", "kind": "CONNECT", "host": host,
            "port": port, "address": None, "decision": decision, "rule": None, "reason": "",
            "bytes_up": 0, "bytes_down": 0, "duration": 0.0, **extra}  # fmt: skip


def test_decisions_append_as_private_json_lines(tmp_path: Path) -> None:
    path = tmp_path / NETWORK_LOG_NAME
    append_decision(path, _record("github.com", 443, "allow", bytes_up=5))
    append_decision(path, _record("evil.example", 443, "deny", reason="not listed"))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["host"] for line in lines] == ["github.com", "evil.example"]
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_summary_counts_per_destination_and_keeps_the_reasons() -> None:
    lines = [
        json.dumps(_record("github.com", 443, "allow", bytes_up=10, bytes_down=100)),
        json.dumps(_record("github.com", 443, "allow", kind="GET", bytes_up=1, bytes_down=2)),
        json.dumps(_record("evil.example", 443, "deny", reason="evil.example:443 is not listed")),
        json.dumps(_record("evil.example", 443, "deny", reason="evil.example:443 is not listed")),
        json.dumps(_record("2001:db8::1", 22, "deny", reason="not listed")),
        json.dumps(_record(None, None, "error", reason="malformed request line")),
        "not json",
        "[]",
    ]
    summary = {s.destination: s.as_dict() for s in summarise(lines)}
    assert list(summary) == ["github.com:443", "evil.example:443", "[2001:db8::1]:22", "(unparsed request)"]
    github = summary["github.com:443"]
    assert (github["count"], github["allowed"], github["denied"]) == (2, 2, 0)
    assert (github["bytes_up"], github["bytes_down"]) == (11, 102)
    assert github["kinds"] == ["CONNECT", "GET"]
    evil = summary["evil.example:443"]
    assert (evil["count"], evil["denied"], evil["reasons"]) == (2, 2, ["evil.example:443 is not listed"])
    assert summary["(unparsed request)"]["errors"] == 1


@pytest.fixture
def run_with_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("VMSBX_HOME", str(tmp_path / "home"))
    run_id = "0123456789ab"
    records.save(
        records.RunRecord(
            id=run_id, vm="default", sandbox="systemd", command=("curl", "x"), tty=False,
            policy=SandboxSettings(network="allowlist", allow_hosts=("github.com",)),
            unit=f"vmsbx-run-{run_id}.service", started_at=records.now(), state="exited",
        )
    )  # fmt: skip
    path = records.run_dir(run_id) / NETWORK_LOG_NAME
    append_decision(path, _record("github.com", 443, "allow", bytes_down=7))
    append_decision(path, _record("evil.example", 443, "deny", reason='add "evil.example"\x1b[31m'))
    return run_id


def test_logs_network_prints_a_table_and_the_refusals(run_with_log: str) -> None:
    result = CliRunner().invoke(cli, ["logs", "--network", run_with_log])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "DESTINATION",
        "COUNT",
        "ALLOWED",
        "DENIED",
        "ERRORS",
        "BYTES",
        "UP",
        "BYTES",
        "DOWN",
    ]
    assert lines[1].split() == ["github.com:443", "1", "1", "0", "0", "0", "7"]
    assert lines[2].split() == ["evil.example:443", "1", "0", "1", "0", "0", "0"]
    assert "\x1b" not in result.output  # reasons are shown without terminal control sequences
    assert 'evil.example:443: add "evil.example"' in result.output


def test_logs_network_json(run_with_log: str) -> None:
    result = CliRunner().invoke(cli, ["logs", "--network", "--json"])  # newest run
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["destination"], r["allowed"], r["denied"]) for r in rows] == [
        ("github.com:443", 1, 0),
        ("evil.example:443", 0, 1),
    ]
