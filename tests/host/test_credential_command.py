"""agent.credential_command runs a real host program (argv, no shell); failures never echo what
it printed, which may be the secret."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vmsbx.agent.credential import resolve_credential
from vmsbx.config.models import AgentSettings
from vmsbx.errors import ConfigError

SECRET = "sk-ant-api03-RECOGNISABLE-from-command"


def _settings(*argv: str) -> AgentSettings:
    return AgentSettings(credential_command=argv)


def test_command_output_is_the_key(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    # `$(...)` and `;` stay literal: no shell is involved.
    script = f"import pathlib,sys; pathlib.Path(sys.argv[1]).write_text('x'); print('  {SECRET}  ')"
    credential = resolve_credential(_settings(sys.executable, "-c", script, str(marker)), {})
    assert credential.reveal() == SECRET
    assert credential.kind == "api_key"
    assert credential.source == "agent.credential_command"
    assert marker.exists()
    oauth = resolve_credential(_settings(sys.executable, "-c", "print('sk-ant-oat01-abc')"), {})
    assert oauth.kind == "oauth_token"


def test_environment_wins_over_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    settings = _settings(sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    assert resolve_credential(settings, {"ANTHROPIC_API_KEY": "k"}).reveal() == "k"
    assert not marker.exists()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (f"import sys; print('{SECRET}'); print('{SECRET}', file=sys.stderr); sys.exit(3)", "exit code 3"),
        ("print('')", "is empty"),
        (f"print('{SECRET} and more')", "single printable token"),
        ("import sys; sys.stdout.buffer.write(b'\\xff\\xfe')", "not text"),
    ],
)
def test_failures_name_the_command_not_its_output(script: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        resolve_credential(_settings(sys.executable, "-c", script), {})
    assert "RECOGNISABLE" not in str(caught.value)
    assert caught.value.__cause__ is None or "RECOGNISABLE" not in str(caught.value.__cause__)


def test_missing_command_is_named() -> None:
    with pytest.raises(ConfigError, match="'no-such-credential-helper' was not found"):
        resolve_credential(_settings("no-such-credential-helper", "get"), {})
