"""The relay's pure policy: tokens, routes, header rewriting, upstream URLs, the credential mask."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from vmsbx.agent.claude_env import agent_environment, seeded_home_files
from vmsbx.agent.credential import OAUTH_BETA, Credential, resolve_credential
from vmsbx.agent.relay_rules import (
    match_run,
    parse_upstream,
    presented_tokens,
    route_allowed,
    upstream_headers,
)
from vmsbx.config.models import AgentSettings
from vmsbx.errors import ConfigError

KEY = "sk-ant-api03-RECOGNISABLE-unit-key"


def test_credential_never_shows_its_secret() -> None:
    credential = Credential("api_key", KEY, source="ANTHROPIC_API_KEY")
    for text in (repr(credential), str(credential), f"{credential}", f"{credential!r}", f"{[credential]}"):
        assert "RECOGNISABLE" not in text
    assert "ANTHROPIC_API_KEY" in repr(credential)
    with pytest.raises(TypeError):
        pickle.dumps(credential)
    assert credential.reveal() == KEY
    assert credential.auth_headers() == [("x-api-key", KEY)]
    assert Credential("oauth_token", "tok", source="x").auth_headers() == [("authorization", "Bearer tok")]


@pytest.mark.parametrize("secret", ["", "   ", "two words", "line\nbreak", "tab\there", "nul\x00"])
def test_credential_refuses_what_cannot_be_a_header(secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Credential("api_key", secret, source="ANTHROPIC_API_KEY")
    assert secret.strip() == "" or secret not in str(caught.value)


def test_resolve_credential_from_the_environment() -> None:
    settings = AgentSettings()
    assert resolve_credential(settings, {"ANTHROPIC_API_KEY": f" {KEY}\n"}).reveal() == KEY
    both = resolve_credential(settings, {"ANTHROPIC_API_KEY": KEY, "CLAUDE_CODE_OAUTH_TOKEN": "o"})
    assert both.kind == "api_key"
    oauth = resolve_credential(settings, {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-x"})
    assert (oauth.kind, oauth.source) == ("oauth_token", "CLAUDE_CODE_OAUTH_TOKEN")
    with pytest.raises(ConfigError, match="no API credential") as caught:
        resolve_credential(settings, {"ANTHROPIC_API_KEY": "  "})
    assert "CLAUDE_CODE_OAUTH_TOKEN" in str(caught.value)


def test_tokens_are_matched_to_exactly_one_live_run() -> None:
    live = {"a": "token-a" * 6, "b": "token-b" * 6}
    assert match_run(presented_tokens([("X-Api-Key", "token-a" * 6)]), live) == "a"
    assert match_run(presented_tokens([("authorization", "Bearer " + "token-b" * 6)]), live) == "b"
    assert match_run(presented_tokens([("authorization", "bearer  " + "token-b" * 6 + " ")]), live) == "b"
    assert match_run(presented_tokens([]), live) is None
    assert match_run(presented_tokens([("x-api-key", "")]), live) is None
    assert match_run(presented_tokens([("authorization", "Basic " + "token-a" * 6)]), live) is None
    both = [("x-api-key", "token-a" * 6), ("authorization", "Bearer " + "token-b" * 6)]
    assert match_run(presented_tokens(both), live) is None
    assert match_run(presented_tokens([("x-api-key", "token-a" * 6), ("x-api-key", "nope")]), live) is None
    assert match_run(presented_tokens([("x-api-key", "token-a" * 6)]), {}) is None


@pytest.mark.parametrize(
    ("method", "path", "query", "allowed"),
    [
        ("POST", "/v1/messages", "", True),
        ("POST", "/v1/messages", "beta=true", True),
        ("POST", "/v1/messages/count_tokens", "beta=true", True),
        ("POST", "/v1/messages", "beta=true&x=y", False),
        ("GET", "/v1/messages", "", False),
        ("POST", "/v1/messages/", "", False),
        ("POST", "/v1/complete", "", False),
        ("POST", "/v1/messages/batches", "", False),
        ("HEAD", "/api/hello", "", False),
        ("POST", "//v1/messages", "", False),
    ],
)
def test_routes(method: str, path: str, query: str, allowed: bool) -> None:
    assert route_allowed(method, path, query) is allowed


def test_upstream_headers_drop_sandbox_auth_and_hop_by_hop() -> None:
    upstream = parse_upstream("https://api.anthropic.com")
    incoming = [
        ("Host", "127.0.0.1:4000"),
        ("X-Api-Key", "vmsbx-run-token"),
        ("Authorization", "Bearer vmsbx-run-token"),
        ("Proxy-Authorization", "x"),
        ("Cookie", "a=b"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "999"),
        ("Accept-Encoding", "gzip, br"),
        ("anthropic-beta", "claude-code-20250219, interleaved-thinking-2025-05-14"),
        ("anthropic-version", "2023-06-01"),
        ("User-Agent", "claude-cli/2.1.332"),
    ]
    headers = upstream_headers(incoming, Credential("api_key", KEY, source="t"), upstream, 12)
    assert headers == [
        ("anthropic-version", "2023-06-01"),
        ("user-agent", "claude-cli/2.1.332"),
        ("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14"),
        ("host", "api.anthropic.com"),
        ("accept-encoding", "identity"),
        ("content-length", "12"),
        ("x-api-key", KEY),
    ]
    oauth = upstream_headers(incoming, Credential("oauth_token", "tok", source="t"), upstream, 0)
    assert ("anthropic-beta", f"claude-code-20250219,interleaved-thinking-2025-05-14,{OAUTH_BETA}") in oauth
    assert ("authorization", "Bearer tok") in oauth
    assert not any(name == "x-api-key" for name, _ in oauth)
    already = upstream_headers(
        [("anthropic-beta", OAUTH_BETA)], Credential("oauth_token", "t", source="t"), upstream, 0
    )
    assert ("anthropic-beta", OAUTH_BETA) in already


def test_upstream_urls() -> None:
    default = parse_upstream("https://api.anthropic.com")
    assert (default.host, default.port, default.prefix, default.host_header) == (
        "api.anthropic.com",
        443,
        "",
        "api.anthropic.com",
    )
    proxied = parse_upstream("https://gw.example.com:8443/anthropic/")
    assert (proxied.port, proxied.prefix, proxied.host_header) == (8443, "/anthropic", "gw.example.com:8443")
    assert parse_upstream("http://127.0.0.1:8080").scheme == "http"
    assert parse_upstream("http://[::1]:8080").host_header == "[::1]:8080"
    for bad in (
        "http://api.anthropic.com",
        "http://10.0.0.1",
        "ftp://x",
        "https://u:p@host",
        "https://h/?q=1",
        "x",
    ):
        with pytest.raises(ConfigError):
            parse_upstream(bad)


def test_agent_environment_and_seeded_home() -> None:
    token = "vmsbx-run-" + "t" * 43
    env = agent_environment(token, "http://127.0.0.1:4000", "api_key")
    assert env["ANTHROPIC_API_KEY"] == token
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in env
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert agent_environment(token, "http://x", "oauth_token")["CLAUDE_CODE_OAUTH_TOKEN"] == token
    files = seeded_home_files("/workspace", token, "api_key")
    state = json.loads(files[".claude.json"])
    assert state["projects"]["/workspace"]["hasTrustDialogAccepted"] is True
    assert state["customApiKeyResponses"]["approved"] == [token[-20:]]
    assert json.loads(files[".claude/settings.json"]) == {"skipDangerousModePermissionPrompt": True}
    assert "customApiKeyResponses" not in json.loads(
        seeded_home_files("/w", token, "oauth_token")[".claude.json"]
    )


def test_api_ca_file_is_trusted_config_only(tmp_path: Path) -> None:
    from vmsbx.config.loader import resolve_settings

    (tmp_path / "vmsbx.toml").write_text('[agent]\napi_ca_file = "/tmp/evil-ca.pem"\n')
    with pytest.raises(ConfigError, match="api_ca_file"):
        resolve_settings(project_dir=tmp_path, flags={}, env={"VMSBX_CONFIG": str(tmp_path / "none.toml")})
