"""The real Claude Code binary, as an unprivileged user, talks to the relay, which talks to the
fake Messages API over TLS. The client holds only the per-run token; the upstream sees only the
real key; the budget answer stops the real client at once with a readable message."""

from __future__ import annotations

import json
import logging
import os
import pty
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from claude_code import claude_binary, unprivileged_user
from fake_anthropic import FakeAnthropic
from tls_ca import ThrowawayCA, make_ca

from vmsbx.agent.budget import Budget
from vmsbx.agent.claude_env import agent_environment, seeded_home_files
from vmsbx.agent.credential import Credential
from vmsbx.agent.relay import Relay
from vmsbx.runs.agentrun import new_token

FAKE_KEY = "sk-ant-api03-RECOGNISABLE-e2e-key-0123456789abcdef"


@dataclass
class Sandbox:
    """A fresh HOME and workspace owned by the test user, and the binary where it can run it."""

    root: Path
    binary: Path
    home: Path
    workspace: Path
    uid: int
    gid: int


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def binary_dir() -> Iterator[Path]:
    source = claude_binary()
    user = unprivileged_user()
    # pytest's tmp folders and root's cache are private to root: give the user a readable copy.
    root = Path(tempfile.mkdtemp(prefix="vmsbx-claude-"))
    root.chmod(0o755)
    target = root / "claude"
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    assert user.pw_uid != 0
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sandbox(binary_dir: Path) -> Iterator[Sandbox]:
    user = unprivileged_user()
    root = Path(tempfile.mkdtemp(prefix="run-", dir=binary_dir))
    root.chmod(0o755)
    home, workspace = root / "home", root / "workspace"
    for folder in (home, workspace):
        folder.mkdir()
        os.chown(folder, user.pw_uid, user.pw_gid)
    yield Sandbox(root, binary_dir / "claude", home, workspace, user.pw_uid, user.pw_gid)
    shutil.rmtree(root, ignore_errors=True)


class Events:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, run_id: str, event: dict[str, Any]) -> None:
        assert run_id == "run-e2e"
        self.seen.append(event)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.seen if event["event"] == name]


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert "RECOGNISABLE" not in record.getMessage()


def _start(
    script: list[dict[str, Any]], ca: ThrowawayCA, budget: Budget | None = None
) -> tuple[FakeAnthropic, Relay, Events, str]:
    fake = FakeAnthropic(script, tls=ca.server_context()).start()
    events = Events()
    relay = Relay(fake.url, ca_file=ca.ca_file, on_event=events, timeout=60)
    relay.start()
    token = new_token()
    relay.register_run("run-e2e", token, Credential("api_key", FAKE_KEY, source="test"), budget)
    return fake, relay, events, token


def _env(sandbox: Sandbox, relay: Relay, token: str, **extra: str) -> dict[str, str]:
    host, port = relay.address
    return {
        "HOME": str(sandbox.home),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        **agent_environment(token, f"http://{host}:{port}", "api_key"),
        **extra,
    }


def _as_user(sandbox: Sandbox, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={sandbox.uid}", f"--regid={sandbox.gid}", "--clear-groups", "--", *argv]


def _files_containing(folder: Path, needle: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_headless_session_through_the_relay(sandbox: Sandbox, ca: ThrowawayCA) -> None:
    hello = sandbox.workspace / "hello.txt"
    script = [
        {
            "tool_use": {
                "name": "Write",
                "input": {"file_path": str(hello), "content": "hello from the fake\n"},
            }
        },
        {
            "tool_use": {"name": "Bash", "input": {"command": "cat hello.txt && echo bash-ran > ran.txt"}},
            # Paused mid-stream: the client is alive, so its environment can be read.
            "hold": True,
        },
        {"text": "All done."},
    ]
    fake, relay, events, token = _start(script, ca)
    try:
        argv = [
            str(sandbox.binary),
            "-p",
            "write hello.txt and check it",
            "--output-format",
            "stream-json",
            "--verbose",
            "--dangerously-skip-permissions",
        ]
        process = subprocess.Popen(
            _as_user(sandbox, argv),
            cwd=sandbox.workspace,
            env=_env(sandbox, relay, token),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _wait_for(lambda: len(fake.requests) >= 2 or process.poll() is not None, 120, "the second turn")
        assert process.poll() is None, process.communicate()
        # setpriv exec()s the client, so the child is Claude Code itself.
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        fake.release()
        stdout, stderr = process.communicate(timeout=120)
    finally:
        fake.release()
        relay.stop()
        fake.stop()

    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    assert b"claude" in cmdline
    assert f"ANTHROPIC_API_KEY={token}".encode() in environ.split(b"\0")
    assert b"RECOGNISABLE" not in environ
    assert b"RECOGNISABLE" not in cmdline

    assert hello.read_text() == "hello from the fake\n"
    assert (sandbox.workspace / "ran.txt").read_text() == "bash-ran\n"
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    result = lines[-1]
    assert (result["type"], result["subtype"], result["is_error"]) == ("result", "success", False)
    assert result["result"] == "All done."

    turns = [r for r in fake.requests if r.kind == "turn"]
    assert [r.turn for r in turns] == [0, 1, 2]
    for request in fake.requests:
        assert request.path == "/v1/messages"
        assert request.headers["x-api-key"] == FAKE_KEY
        assert "authorization" not in request.headers
        assert token not in json.dumps(request.as_json())
    assert [e["status"] for e in events.named("api_request")] == [200, 200, 200]
    assert "RECOGNISABLE" not in json.dumps(events.seen)
    # Nothing the client wrote (its HOME, the workspace) holds the real key.
    assert _files_containing(sandbox.root, b"RECOGNISABLE") == []
    assert b"RECOGNISABLE" not in stdout + stderr


def test_budget_stops_the_real_client_without_retries(sandbox: Sandbox, ca: ThrowawayCA) -> None:
    script = [
        {
            "repeat_tool_use": {"name": "Bash", "input": {"command": "true"}},
            "usage": {"input_tokens": 100, "output_tokens": 20},
        }
    ]
    fake, relay, events, token = _start(script, ca, budget=Budget(tokens=300))
    try:
        argv = [
            str(sandbox.binary),
            "-p",
            "loop forever",
            "--output-format",
            "json",
            "--dangerously-skip-permissions",
        ]
        done = subprocess.run(
            _as_user(sandbox, argv),
            cwd=sandbox.workspace,
            env=_env(sandbox, relay, token),
            capture_output=True,
            timeout=180,
            check=False,
        )
    finally:
        relay.stop()
        fake.stop()
    result = json.loads(done.stdout)
    assert done.returncode == 1, done.stderr.decode(errors="replace")[-2000:]
    assert result["is_error"] is True
    assert "402" in result["result"]
    assert "vmsbx budget exhausted" in result["result"]
    # Three turns reached the API, then exactly one refused request: the client did not retry.
    assert len(fake.requests) == 3
    assert [e["reason"] for e in events.named("api_refused")] == ["budget"]
    [exhausted] = events.named("budget_exhausted")
    assert exhausted["usage"]["total_tokens"] == 360
    assert relay.usage("run-e2e").total_tokens == 360


def test_interactive_session_starts_at_the_prompt_with_seeded_home(sandbox: Sandbox, ca: ThrowawayCA) -> None:
    hello = sandbox.workspace / "hello.txt"
    script = [
        {"tool_use": {"name": "Write", "input": {"file_path": str(hello), "content": "interactive\n"}}},
        {"text": "Written."},
    ]
    fake, relay, _events, token = _start(script, ca)
    for name, content in seeded_home_files(str(sandbox.workspace), token, "api_key").items():
        path = sandbox.home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    for path in [sandbox.home, *sandbox.home.rglob("*")]:
        os.chown(path, sandbox.uid, sandbox.gid)
    controller, terminal = pty.openpty()
    screen = bytearray()

    def pump(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                try:
                    screen.extend(os.read(controller, 65536))
                except OSError:
                    return

    try:
        process = subprocess.Popen(
            _as_user(sandbox, [str(sandbox.binary), "--dangerously-skip-permissions"]),
            cwd=sandbox.workspace,
            env=_env(sandbox, relay, token, TERM="xterm-256color"),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,
        )
        os.close(terminal)
        deadline = time.monotonic() + 60
        # The prompt box shows the bypass-permissions footer once the client waits for input;
        # any onboarding dialog would show instead (and never this footer).
        while b"bypass permissions on" not in screen:
            assert process.poll() is None, screen.decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, screen.decode(errors="replace")[-3000:]
            pump(0.5)
        assert b"Do you want to use this API key" not in screen
        assert b"trust this folder" not in screen
        os.write(controller, b"write hello.txt")
        pump(1.0)
        os.write(controller, b"\r")
        deadline = time.monotonic() + 60
        while not hello.exists() or fake.turns_used < 2:
            assert process.poll() is None, screen.decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, screen.decode(errors="replace")[-3000:]
            pump(0.5)
        pump(2.0)
        os.write(controller, b"/exit\r")
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            pump(0.5)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    finally:
        os.close(controller)
        relay.stop()
        fake.stop()
    assert hello.read_text() == "interactive\n"
    assert [r.headers["x-api-key"] for r in fake.requests] == [FAKE_KEY] * len(fake.requests)
    assert process.returncode == 0, screen.decode(errors="replace")[-3000:]
