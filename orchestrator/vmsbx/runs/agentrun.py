"""Planning an agent run (pure): Claude Code's argv, its environment, its fresh HOME.

The agent reaches the model API only through the host relay: inside the run
`ANTHROPIC_BASE_URL` is the relay's loopback port and the key is a per-run random token that
the relay swaps for the real credential. Nothing here ever holds the user's credential.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from vmsbx.agent.claude_env import agent_environment, seeded_home_files
from vmsbx.agent.credential import CredentialKind
from vmsbx.claude.profile import ClaudeProfile
from vmsbx.contract import CLAUDE_ROOT, claude_binary
from vmsbx.errors import UsageError
from vmsbx.sandbox.layout import BRIDGES

_TEMPLATE_MAX_BYTES = 1024 * 1024


def new_token() -> str:
    """The run's stand-in for the API key: random, worthless outside the relay."""
    return "vmsbx-run-" + secrets.token_urlsafe(32)


def claude_argv(version: str, prompt: str | None, *, resume: str | None = None) -> list[str]:
    """Claude Code's argv: interactive, or headless on `prompt`; `resume`: the session id of a
    conversation restored into the run's HOME (conversation.restore_files) to go on with. It is
    named, not left to `--continue`'s own choice, so the run goes on with exactly the recorded
    conversation."""
    argv = [claude_binary(version), "--dangerously-skip-permissions"]
    if resume is not None:
        argv += ["--resume", resume]
    if prompt is not None:
        argv += ["-p", prompt, "--output-format", "stream-json", "--verbose"]
    return argv


def is_agent(command: tuple[str, ...] | list[str]) -> bool:
    """Whether a run's command is vmsbx's Claude Code (an agent run, which keeps a conversation)."""
    return bool(command) and command[0].startswith(f"{CLAUDE_ROOT}/")


def agent_prompt(command: tuple[str, ...] | list[str]) -> str | None:
    """The task of a headless agent run (the `-p` prompt of `claude_argv`), None for any other
    command: what `runs` and `show` name a run by, rather than the binary's path."""
    if not is_agent(command) or "-p" not in command[1:]:
        return None
    position = command.index("-p", 1) + 1
    return command[position] if position < len(command) else None


def agent_env(token: str, kind: CredentialKind) -> dict[str, str]:
    """The run's variables: the relay's loopback port, the token under the name that matches
    the real credential's kind, and Claude Code's own network chatter switched off."""
    return agent_environment(token, f"http://127.0.0.1:{BRIDGES['relay']}", kind)


def home_files(
    token: str,
    kind: CredentialKind,
    workspaces: list[str],
    template: Path | None,
    profile: ClaudeProfile | None = None,
) -> dict[str, str]:
    """The fresh HOME's seed (onboarding, folder trust, the run token and the permission
    prompt answered, so an interactive run starts at the prompt), the user's Claude profile
    (CLAUDE.md, settings, commands …, credentials already left out) under it, and the user's own
    template files from their vmsbx config folder, which win.

    `workspaces`: every path the agent may know its folder by; today one, the run's stable
    workdir (vmsbx.sandbox.workdir: a mount point, no link for Claude Code to resolve)."""
    files = seeded_home_files(workspaces[0], token, kind)
    state = json.loads(files[".claude.json"])
    for path in workspaces[1:]:
        state["projects"][path] = dict(state["projects"][workspaces[0]])
    if profile is not None:
        files.update(profile.files)
        if profile.mcp_servers:
            state["mcpServers"] = profile.mcp_servers
        # vmsbx's own answers (the bypass prompt) win over the profile's settings.
        settings = {**profile.settings, **json.loads(files[".claude/settings.json"])}
        files[".claude/settings.json"] = json.dumps(settings, indent=2) + "\n"
    files[".claude.json"] = json.dumps(state, indent=2) + "\n"
    if template is not None and template.is_dir():
        files.update(_template_files(template))
    return files


def _template_files(root: Path) -> dict[str, str]:
    """Regular text files under `root` (links are skipped, never followed: the template must
    not lead to other host files), at most 1 MiB in all."""
    files: dict[str, str] = {}
    total = 0
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            total += len(data)
            if total > _TEMPLATE_MAX_BYTES:
                raise UsageError(
                    f"the HOME template {root} holds more than 1 MiB",
                    hint="keep only settings files there (settings.json, CLAUDE.md, commands/)",
                )
            try:
                files[path.relative_to(root).as_posix()] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UsageError(
                    f"{path} is not UTF-8 text", hint="the HOME template holds text files"
                ) from exc
    return files
