"""vmsbx's own log: JSON lines with fields, secrets masked by pattern and by registration."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from vmsbx import logsetup


@pytest.mark.parametrize(
    "secret",
    [
        "sk-ant-api03-AbCdEf0123456789_xyz",
        "sk-proj-abcdefghijklmnopqrstuvwx",
        "ghp_abcdefghijklmnopqrstuvwxyz0123",
        "xoxb-1234567890-abcdef",
        "AKIAABCDEFGHIJKLMNOP",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijklmnop",
    ],
)
def test_token_shapes_are_masked(secret: str) -> None:
    assert secret not in logsetup.mask(f"connecting with {secret} now")
    assert logsetup.MASK in logsetup.mask(f"connecting with {secret} now")


def test_bearer_and_key_assignments_are_masked_and_plain_text_is_not() -> None:
    assert logsetup.mask("Authorization: Bearer abc.def-123456") == "Authorization: Bearer ***"
    assert logsetup.mask("url?api_key=hunter22&x=1") == "url?api_key=***&x=1"
    assert (
        logsetup.mask("ssh connected to 127.0.0.1:2222 in 0.3s") == "ssh connected to 127.0.0.1:2222 in 0.3s"
    )


def test_log_lines_are_json_with_fields_and_registered_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMSBX_HOME", str(tmp_path))
    monkeypatch.setattr(logsetup, "_configured", [])
    root = logging.getLogger("vmsbx")
    saved = list(root.handlers)
    try:
        path = logsetup.setup(0)
        assert path == tmp_path / "logs" / "vmsbx.log"
        logsetup.register_secret("correct-horse-battery")
        log = logging.getLogger("vmsbx.test")
        log.info("provider command", extra={"argv": "qemu-img create x", "seconds": 0.25})
        log.warning("token is %s", "correct-horse-battery", extra={"detail": "also correct-horse-battery"})
        for handler in root.handlers:
            handler.flush()
        lines = [json.loads(line) for line in path.read_text().splitlines()]
    finally:
        for handler in root.handlers[len(saved) :]:
            root.removeHandler(handler)
            handler.close()
    assert lines[0]["msg"] == "provider command" and lines[0]["argv"] == "qemu-img create x"
    assert lines[0]["seconds"] == 0.25 and lines[0]["level"] == "info" and lines[0]["logger"] == "vmsbx.test"
    assert lines[1]["msg"] == "token is ***" and lines[1]["detail"] == "also ***"
    assert "correct-horse-battery" not in path.read_text()
