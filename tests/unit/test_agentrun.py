"""Planning an agent run: argv, environment and HOME seed never carry the user's credential."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmsbx.errors import UsageError
from vmsbx.runs import agentrun


def test_headless_and_interactive_argv() -> None:
    assert agentrun.claude_argv("2.1.332", None) == [
        "/usr/local/lib/vmsbx/claude/2.1.332/claude",
        "--dangerously-skip-permissions",
    ]
    headless = agentrun.claude_argv("2.1.332", "fix it; rm -rf /")
    assert headless[2:] == ["-p", "fix it; rm -rf /", "--output-format", "stream-json", "--verbose"]


def test_env_points_at_the_relay_with_the_run_token() -> None:
    token = agentrun.new_token()
    env = agentrun.agent_env(token, "api_key")
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8787"
    assert env["ANTHROPIC_API_KEY"] == token
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    oauth = agentrun.agent_env(token, "oauth_token")
    assert oauth["CLAUDE_CODE_OAUTH_TOKEN"] == token and "ANTHROPIC_API_KEY" not in oauth
    assert "IS_SANDBOX" not in env  # that would let Claude Code run as root
    assert agentrun.new_token() != token


def test_home_seed_and_user_template(tmp_path: Path) -> None:
    template = tmp_path / "claude-home"
    (template / ".claude").mkdir(parents=True)
    (template / ".claude" / "CLAUDE.md").write_text("be brief\n")
    (template / "link").symlink_to("/etc/passwd")
    files = agentrun.home_files(
        "vmsbx-run-abcdefghijklmnopqrstuvwxyz", "api_key", ["/var/lib/ws", "/var/lib/private/ws"], template
    )
    seed = json.loads(files[".claude.json"])
    assert seed["hasCompletedOnboarding"] is True
    assert seed["projects"]["/var/lib/ws"]["hasTrustDialogAccepted"] is True
    assert seed["projects"]["/var/lib/private/ws"]["hasTrustDialogAccepted"] is True
    assert seed["customApiKeyResponses"]["approved"] == ["ghijklmnopqrstuvwxyz"]
    assert files[".claude/CLAUDE.md"] == "be brief\n"
    assert "link" not in files


def test_template_too_big_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (1024 * 1024 + 1))
    with pytest.raises(UsageError):
        agentrun.home_files("t" * 30, "api_key", ["/workspace"], tmp_path)
