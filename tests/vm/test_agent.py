"""The user's job, end to end: the real Claude Code (from the npm registry) in the real sandbox,
talking through the real relay to a scripted fake of the Messages API on the host's loopback.

The fake is the only stand-in: it answers from a script of turns (a Write, a Bash call, a
final text …) so the runs are deterministic and need no internet. The key the user "has" is a
recognisable fake; the tests then look for it everywhere it must never be.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic
from vmcli import Cli

from vmsbx.sandbox.workdir import run_workdir
from vmsbx.textsafe import strip_control

pytestmark = pytest.mark.vm

KEY = "sk-ant-api03-VMSBXCANARY-" + "k3y" * 12  # recognisable, never a real key


def _agent_cli(cli: Cli, project: Path, api: FakeAnthropic) -> Cli:
    env = dict(cli.env, ANTHROPIC_API_KEY=KEY, VMSBX_AGENT_API_UPSTREAM=api.url)
    env.pop("CLAUDE_CODE_OAUTH_TOKEN", None)
    return Cli(env=env, cwd=project)


def _script(api: FakeAnthropic, turns: list[dict[str, Any]]) -> None:
    api.set_script(turns)


def _git_project(path: Path) -> Path:
    path.mkdir()
    (path / "README.md").write_text("# demo\n")
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    identity = ["-c", "user.email=u@x", "-c", "user.name=u"]
    subprocess.run(["git", "-C", str(path), *identity, "commit", "-qm", "init"], check=True)
    return path


def _newest_run(cli: Cli) -> dict[str, Any]:
    runs = cli.json("runs")
    assert isinstance(runs, list)
    newest: dict[str, Any] = max(runs, key=lambda run: str(run["started_at"]))
    return newest


WRITE_AND_RUN = [
    {
        "tool_use": {
            "name": "Write",
            "input": {"file_path": "{cwd}/hello.txt", "content": "hello from claude\n"},
        }
    },
    {
        "tool_use": {
            "name": "Bash",
            "input": {"command": "cat hello.txt && id -u && echo ran > ran.txt", "description": "check"},
        }
    },
    {"text": "Done: wrote hello.txt."},
]


@pytest.mark.parametrize("mode", ["systemd", "nsjail"])
def test_headless_task_writes_and_applies(
    cli: Cli, default_vm: dict[str, object], fake_api: FakeAnthropic, tmp_path: Path, mode: str
) -> None:
    project = _agent_cli(cli, _git_project(tmp_path / "proj"), fake_api)
    _script(fake_api, WRITE_AND_RUN)
    done = project.run("run", "--sandbox", mode, "-p", "write hello.txt, then check it", timeout=900)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"stdout: {out}\nstderr: {err}"
    assert "→ Write: " in out and "hello.txt" in out
    assert "→ Bash: cat hello.txt" in out
    assert "■ done" in out
    run = _newest_run(project)
    folder = cli.home / "runs" / run["id"]
    stream = [json.loads(line) for line in (folder / "stream.jsonl").read_text().splitlines() if line.strip()]
    assert stream[-1]["type"] == "result" and stream[-1]["is_error"] is False
    tool_results = [
        block for event in stream if event.get("type") == "user"
        for block in event["message"]["content"] if block.get("type") == "tool_result"
    ]  # fmt: skip
    # The agent worked at the run's stable workspace path (the project's own, or the fallback).
    workdir = run_workdir(str(project.cwd.resolve()))
    uses = [
        block for event in stream if event.get("type") == "assistant"
        for block in event["message"]["content"] if block.get("type") == "tool_use"
    ]  # fmt: skip
    assert uses[0]["input"]["file_path"] == f"{workdir}/hello.txt", uses[0]
    uid = re.search(r"hello from claude\\n(\d+)", json.dumps(tool_results))
    assert uid is not None and int(uid.group(1)) != 0  # the agent never runs as root
    assert (folder / "journal.jsonl").stat().st_size > 0
    assert "+ hello.txt" in err and "+ ran.txt" in err
    diff = project.ok("diff", run["id"]).stdout.decode()
    assert "+hello from claude" in diff
    project.ok("apply", "-y", run["id"])
    assert (project.cwd / "hello.txt").read_text() == "hello from claude\n"
    # The fake saw the real key on every request; the sandbox only ever had its run token.
    turns = [request for request in fake_api.requests if request.path == "/v1/messages"]
    assert len(turns) >= 3
    assert all(request.headers.get("x-api-key") == KEY for request in turns)
    record = json.loads((folder / "run.json").read_text())
    assert record["relay"] is True and record["api"]["requests"] >= 3
    assert record["workdir"] == workdir


def test_the_key_never_enters_the_guest(
    cli: Cli, default_vm: dict[str, object], fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    project = _agent_cli(cli, _git_project(tmp_path / "proj"), fake_api)
    wait = {"command": "sleep 20; env > env.txt", "description": "wait"}
    _script(fake_api, [{"tool_use": {"name": "Bash", "input": wait}}, {"text": "Done."}])
    run_id = project.ok("run", "--detach", "-p", "wait a bit").stdout.decode().strip()
    deadline = time.monotonic() + 300
    while not fake_api.requests and time.monotonic() < deadline:
        time.sleep(1)
    assert fake_api.requests, "the agent never reached the API"
    key = KEY.encode()
    # While it runs: every process environment, the unit's properties, the journal, the guest's
    # files (one batched guest command).
    probe = (
        'cat /proc/[0-9]*/environ 2>/dev/null | grep -c -a -F "$1";'
        " systemctl show 'vmsbx-*' 2>/dev/null | grep -c -F \"$1\";"
        ' journalctl -o export --no-pager 2>/dev/null | grep -c -a -F "$1";'
        ' grep -r -l -a -F --exclude=workspace.img "$1" /etc /var /usr/local /root /home /tmp /run /srv /opt'
        " 2>/dev/null | wc -l;"
        " cat /proc/[0-9]*/environ 2>/dev/null | grep -c -a -F vmsbx-run-"
    )
    seen = cli.ok("ssh", "--", "sh", "-c", probe, "probe", KEY).stdout.decode().split()
    assert seen[:4] == ["0", "0", "0", "0"], seen
    assert int(seen[4]) >= 1  # the probe itself works: the run's token is in the agent's env
    assert project.run("attach", run_id).returncode == 0
    cli.ok("ssh", "--", "sync")
    # The guest's disk, as the host stores it; the host's own records and logs.
    disk = cli.home / "vms" / "default" / "disk.qcow2"
    assert not _contains(disk, key)
    for path in cli.home.rglob("*"):
        if path.is_file() and path != disk and path.suffix not in (".qcow2", ".img"):
            assert key not in path.read_bytes(), f"the key leaked into {path}"
    workspace_env = project.ok("diff", run_id).stdout
    assert b"ANTHROPIC_API_KEY=vmsbx-run-" in workspace_env and key not in workspace_env


def _contains(path: Path, needle: bytes) -> bool:
    """Search a (large) file in chunks that overlap by the needle's length."""
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(64 << 20):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle) :]
    return False


# Every policy with a network reaches the API only through the relay, which holds the budget.
@pytest.mark.parametrize("network", ["api", "allowlist"])
def test_budget_cap_stops_an_agent_that_keeps_calling(
    cli: Cli, default_vm: dict[str, object], fake_api: FakeAnthropic, tmp_path: Path, network: str
) -> None:
    project = _agent_cli(cli, _git_project(tmp_path / "proj"), fake_api)
    _script(fake_api, [{
        "repeat_tool_use": {"name": "Bash", "input": {"command": "echo again", "description": "loop"}},
        "usage": {"input_tokens": 4000, "output_tokens": 1000},
    }])  # fmt: skip
    allow = ["--allow", "pypi"] if network == "allowlist" else []
    done = project.run(
        "run", "--network", network, *allow, "-p", "loop forever", "--budget", "12k", timeout=900
    )
    assert done.returncode != 0
    assert b"budget" in done.stderr
    record = _newest_run(project)
    folder = cli.home / "runs" / record["id"]
    saved = json.loads((folder / "run.json").read_text())
    assert saved["api"]["budget_exhausted"] is True
    events = [json.loads(line) for line in (folder / "relay.jsonl").read_text().splitlines()]
    assert sum(event["event"] == "budget_exhausted" for event in events) == 1
    assert 3 <= sum(event["event"] == "api_request" for event in events) <= 4  # 5k tokens each
    assert saved["relay"] is True and saved["policy"]["network"] == network
    turns = [request for request in fake_api.requests if request.path == "/v1/messages"]
    assert turns and all(request.headers.get("x-api-key") == KEY for request in turns)


def test_interactive_agent_in_a_pty(
    cli: Cli, default_vm: dict[str, object], fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    import pty

    from vmcli import read_pty_until

    project = _agent_cli(cli, _git_project(tmp_path / "proj"), fake_api)
    _script(fake_api, [{"text": "PONG-FROM-FAKE"}])
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(project.cwd)
        os.execvpe("python3", ["python3", "-m", "vmsbx", "run"], project.env)
    seen = b""
    try:
        seen = read_pty_until(fd, b"bypass permissions", 240)
        assert b"bypass permissions" in seen, strip_control(seen.decode(errors="replace"))[-2000:]
        os.write(fd, b"ping\r")
        seen = read_pty_until(fd, b"PONG-FROM-FAKE", 180)
        assert b"PONG-FROM-FAKE" in seen, strip_control(seen.decode(errors="replace"))[-2000:]
        os.write(fd, b"/exit")
        time.sleep(1)
        os.write(fd, b"\r")
        read_pty_until(fd, None, 120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                os.kill(pid, signal.SIGTERM)
                _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) in (0, 130)


# Guest text the report must show as text: markup in the file the agent writes, in a tool's
# output and in its final answer.
PAGE_HOSTILE = "<script>document.body.setAttribute('data-pwned','1')</script><img src=x onerror=alert(1)>"
REPORT_TURNS = [
    {
        "tool_use": {
            "name": "Write",
            "input": {"file_path": "{cwd}/notes.md", "content": f"# notes\n{PAGE_HOSTILE}\n"},
        }
    },
    {
        "tool_use": {
            "name": "Bash",
            "input": {"command": "echo RESULT-MARK-42; cat notes.md", "description": "show"},
        }
    },
    {"text": f"FINAL-ANSWER-7: wrote notes.md {PAGE_HOSTILE}"},
]


def test_report_page_shows_task_answer_diff_tool_result_and_tokens_with_guest_text_escaped(
    cli: Cli, default_vm: dict[str, object], fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    from chromium import chromium_run

    project = _agent_cli(cli, _git_project(tmp_path / "proj"), fake_api)
    _script(fake_api, REPORT_TURNS)
    task = "write <b>notes</b> and show them"
    done = project.run("run", "-p", task, timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    run_id = _newest_run(project)["id"]
    folder = cli.home / "runs" / run_id
    events = [json.loads(line) for line in (folder / "relay.jsonl").read_text().splitlines()]
    requests = [event for event in events if event["event"] == "api_request"]
    tokens_in = sum(
        e["input_tokens"] + e["cache_creation_input_tokens"] + e["cache_read_input_tokens"] for e in requests
    )
    tokens_out = sum(e["output_tokens"] for e in requests)
    page = tmp_path / "report.html"
    page.write_bytes(project.ok("show", run_id, "--html").stdout)
    dom = chromium_run("--dump-dom", page.as_uri()).stdout
    assert '<pre id="task">write &lt;b&gt;notes&lt;/b&gt; and show them</pre>' in dom
    answer = dom.split('<pre id="answer">', 1)[1].split("</pre>", 1)[0]
    assert answer.startswith("FINAL-ANSWER-7: wrote notes.md &lt;script&gt;")
    diff = dom.split('<pre class="diff">', 1)[1].split("</pre>", 1)[0]
    assert "+++ b/notes.md" in diff and "+&lt;script&gt;document.body" in diff
    results = [part.split("</pre>", 1)[0] for part in dom.split('<pre class="result">')[1:]]
    assert any(r.startswith("RESULT-MARK-42\n# notes\n&lt;script&gt;") for r in results), results
    assert f"{len(requests)} request(s), {tokens_in} input / {tokens_out} output tokens" in dom
    assert len(requests) >= 3 and "model API via the relay" in dom
    # Nothing the guest wrote became markup: no script ran, no element was made from it.
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]
    assert "<img" not in dom and dom.count("<script") == 0
    text = project.ok("show", run_id).stdout.decode()
    assert f"task            {task}" in text and "FINAL-ANSWER-7" in text and "RESULT-MARK-42" in text


# -- continuing a conversation (issue 20) ----------------------------------------------------

FIRST_TURNS = [
    {
        "tool_use": {
            "name": "Bash",
            # The run's token in a tool's output, so in the conversation: the host must not keep it.
            "input": {"command": 'echo TOOL-MARK-1 "$ANTHROPIC_API_KEY"', "description": "mark"},
        }
    },
    {"text": "ANSWER-MARK-1: done."},
]
_LIVE_TOKEN = re.compile(r"vmsbx-run-(?!\[redacted\])[A-Za-z0-9_-]+")


def _turn_bodies(api: FakeAnthropic, since: int) -> str:
    """Every main-conversation request the fake got after the first `since`, as one text."""
    turns = [r for r in api.requests[since:] if r.path == "/v1/messages" and r.kind == "turn"]
    assert turns, "the agent sent no turn"
    return "\n".join(json.dumps(r.body) for r in turns)


def test_continue_and_resume_carry_only_the_conversation(
    cli: Cli, default_vm: dict[str, object], fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    project = _agent_cli(cli, _git_project(tmp_path / "proj"), fake_api)
    refused = project.run("run", "--continue", "--", "true")
    assert refused.returncode == 2 and b"--continue and --resume" in refused.stderr

    # Run 1: a tool call, then an answer; root keeps the conversation, the host fetches it.
    _script(fake_api, FIRST_TURNS)
    done = project.run("run", "-p", "FIRST-TASK-1", timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    first = _newest_run(project)
    assert len(first["conversation"]) >= 1 and first["continued_from"] is None
    assert first["guest_notes"] == [] and first["warnings"] == [], first
    sessions = cli.home / "runs" / first["id"] / "sessions"
    saved = "".join(path.read_text() for path in sessions.glob("*.jsonl"))
    assert "FIRST-TASK-1" in saved and "TOOL-MARK-1" in saved and "ANSWER-MARK-1" in saved
    assert "TOOL-MARK-1 vmsbx-run-[redacted]" in saved and not _LIVE_TOKEN.search(saved)
    listing = project.ok("runs").stdout.decode()
    assert "CONV" in listing and re.search(rf"^{first['id']}\s.*\byes\b", listing, re.M), listing

    # Run 2 goes on with run 1 (the newest run that kept one): its earlier turns reach the API.
    since = len(fake_api.requests)
    _script(fake_api, [{"text": "CONTINUED-2"}])
    done = project.run("run", "--continue", "-p", "SECOND-TASK-2", timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    bodies = _turn_bodies(fake_api, since)
    for mark in ("FIRST-TASK-1", "TOOL-MARK-1", "ANSWER-MARK-1", "SECOND-TASK-2"):
        assert mark in bodies, mark
    assert not _LIVE_TOKEN.search(bodies)
    second = _newest_run(project)
    assert second["continued_from"] == {"run": first["id"], "session": first["conversation"][-1]}

    # A plain run starts afresh: none of it.
    since = len(fake_api.requests)
    _script(fake_api, [{"text": "PLAIN-3"}])
    done = project.run("run", "-p", "THIRD-TASK-3", timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    bodies = _turn_bodies(fake_api, since)
    assert "THIRD-TASK-3" in bodies
    for mark in ("FIRST-TASK-1", "TOOL-MARK-1", "ANSWER-MARK-1", "SECOND-TASK-2"):
        assert mark not in bodies, mark
    assert _newest_run(project)["continued_from"] is None

    # --resume RUN picks the named run, not the newest (run 3) nor run 2 (which went on with it).
    since = len(fake_api.requests)
    _script(fake_api, [{"text": "RESUMED-4"}])
    done = project.run("run", "--resume", first["id"], "-p", "FOURTH-TASK-4", timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    bodies = _turn_bodies(fake_api, since)
    for mark in ("FIRST-TASK-1", "TOOL-MARK-1", "ANSWER-MARK-1", "FOURTH-TASK-4"):
        assert mark in bodies, mark
    for mark in ("SECOND-TASK-2", "THIRD-TASK-3"):
        assert mark not in bodies, mark
    for run_dir in (cli.home / "runs").iterdir():
        for path in run_dir.glob("sessions/*.jsonl"):
            assert not _LIVE_TOKEN.search(path.read_text()), path


def test_an_nsjail_run_keeps_and_continues_its_conversation(
    cli: Cli, default_vm: dict[str, object], fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """The jail's HOME and cwd are its own (the run's workdir), its files the outside uid's: the same
    kept conversation, restored under the jail's cwd."""
    project = _agent_cli(cli, _git_project(tmp_path / "proj"), fake_api)
    _script(fake_api, FIRST_TURNS)
    done = project.run("run", "--sandbox", "nsjail", "-p", "FIRST-TASK-1", timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    first = _newest_run(project)
    assert first["conversation"] and first["guest_notes"] == [], first
    since = len(fake_api.requests)
    _script(fake_api, [{"text": "CONTINUED-2"}])
    done = project.run("run", "--sandbox", "nsjail", "--continue", "-p", "SECOND-TASK-2", timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    bodies = _turn_bodies(fake_api, since)
    for mark in ("FIRST-TASK-1", "TOOL-MARK-1", "ANSWER-MARK-1", "SECOND-TASK-2"):
        assert mark in bodies, mark
    assert not _LIVE_TOKEN.search(bodies)
