"""The user's own Claude profile in a run: the real Claude Code in the real sandbox, through the
real relay, to the scripted fake of the Messages API.

The host profile has a CLAUDE.md, a custom command, settings with one plain and one secret env
entry, and a `.credentials.json`. The memory and the command must reach the model (the fake's
recorded requests); the credential and the secret must be nowhere: not in any request, not in
any guest process environment, not in the run's HOME or anywhere else on the guest's disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fake_anthropic import FakeAnthropic
from test_agent import _agent_cli, _git_project
from vmcli import Cli

pytestmark = pytest.mark.vm

MEMORY = "PROFILE-MEMORY-7f3a: the user prefers answers in haiku."
COMMAND = "PROFILE-COMMAND-91bc: greet the person named"
CREDENTIAL = "sk-ant-oat01-PROFILECRED-" + "c" * 30
SETTINGS_SECRET = "PROFILESECRET-" + "s" * 24


def _profile(folder: Path) -> Path:
    (folder / "commands").mkdir(parents=True)
    (folder / "CLAUDE.md").write_text(MEMORY + "\n")
    (folder / "commands" / "greet.md").write_text(COMMAND + " $ARGUMENTS\n")
    (folder / ".credentials.json").write_text(
        json.dumps({"claudeAiOauth": {"accessToken": CREDENTIAL, "refreshToken": CREDENTIAL}})
    )
    settings = {"env": {"PROFILE_PLAIN": "plain-profile-value", "MY_SERVICE_TOKEN": SETTINGS_SECRET}}
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / ".claude.json").write_text(json.dumps({"oauthAccount": {"accessToken": CREDENTIAL}}))
    return folder


@pytest.mark.parametrize("mode", ["systemd", "nsjail"])
def test_the_profile_reaches_the_run_and_its_credentials_do_not(
    cli: Cli, default_vm: dict[str, object], fake_api: FakeAnthropic, tmp_path: Path, mode: str
) -> None:
    profile = _profile(tmp_path / "claude-config")
    project = _agent_cli(cli, _git_project(tmp_path / "proj"), fake_api)
    project = Cli(env=dict(project.env, CLAUDE_CONFIG_DIR=str(profile)), cwd=project.cwd)
    wait = {"command": "sleep 20; env > env.txt", "description": "wait"}
    fake_api.set_script([{"tool_use": {"name": "Bash", "input": wait}}, {"text": "Done."}])
    started = project.ok("run", "--sandbox", mode, "--detach", "-p", "/greet Ann")
    run_id = started.stdout.decode().strip()
    said = started.stderr.decode()
    assert "your Claude profile from" in said and "CLAUDE.md" in said and "commands/greet.md" in said
    assert "MY_SERVICE_TOKEN: looks like a secret" in said
    deadline = time.monotonic() + 300
    while not fake_api.requests and time.monotonic() < deadline:
        time.sleep(1)
    assert fake_api.requests, "the agent never reached the API"
    # While it runs: process environments, the journal, the guest's disk, and the run's own
    # tmpfs (its HOME) seen through the agent's /proc/PID/root; the memory must be found there.
    probe = (
        "agents=$(grep -l -a -F vmsbx-run- /proc/[0-9]*/environ 2>/dev/null"
        ' | sed "s,/environ\\$,/root/tmp,");'
        ' for needle in "$1" "$2"; do'
        '  cat /proc/[0-9]*/environ 2>/dev/null | grep -c -a -F "$needle";'
        '  journalctl -o export --no-pager 2>/dev/null | grep -c -a -F "$needle";'
        '  grep -r -l -a -F --exclude=workspace.img "$needle" /etc /var /usr/local /root /home /tmp /run'
        "   /srv /opt $agents 2>/dev/null | wc -l;"
        " done;"
        ' grep -r -l -a -F "$3" $agents 2>/dev/null | wc -l'
    )
    seen = cli.ok("ssh", "--", "sh", "-c", probe, "probe", CREDENTIAL, SETTINGS_SECRET, MEMORY)
    counts = seen.stdout.decode().split()
    assert counts[:6] == ["0"] * 6, counts
    assert int(counts[6]) >= 1, counts  # the probe sees the run's HOME: the memory is there
    assert project.run("attach", run_id).returncode == 0
    # What the model was sent: the memory and the command's text, never the secrets.
    turns = [request for request in fake_api.requests if request.kind == "turn"]
    sent = json.dumps([request.as_json() for request in fake_api.requests])
    # Claude Code 2.1.332 sends the user's memory as context at the head of the first user
    # message (measured: not in the `system` field), so that is where it is looked for.
    assert MEMORY in json.dumps(turns[0].body["messages"])
    assert COMMAND in json.dumps(turns[0].body["messages"])
    assert CREDENTIAL not in sent and SETTINGS_SECRET not in sent
    # The settings' plain env entry reached the agent's tools; the secret one did not.
    diff = project.ok("diff", run_id).stdout.decode()
    assert "PROFILE_PLAIN=plain-profile-value" in diff
    assert SETTINGS_SECRET not in diff and CREDENTIAL not in diff
    record = json.loads((cli.home / "runs" / run_id / "run.json").read_text())
    assert record["claude_profile"]["copied"] == ["CLAUDE.md", "settings.json", "commands/greet.md"]
    assert any("MY_SERVICE_TOKEN" in line for line in record["claude_profile"]["left_out"])
    for path in cli.home.rglob("*"):
        if path.is_file() and path.suffix not in (".qcow2", ".img"):
            data = path.read_bytes()
            assert CREDENTIAL.encode() not in data and SETTINGS_SECRET.encode() not in data, path

    # Switched off, the next run gets none of it.
    fake_api.set_script([{"text": "Done."}])
    before = len(fake_api.requests)
    off = project.ok("run", "--sandbox", mode, "--no-claude-profile", "-p", "hello")
    assert "not copied" in off.stderr.decode()
    later = json.dumps([request.as_json() for request in fake_api.requests[before:]])
    assert MEMORY not in later
