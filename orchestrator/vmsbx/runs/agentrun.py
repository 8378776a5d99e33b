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

from vmsbx.errors import UsageError
from vmsbx.sandbox.layout import BRIDGES, GUEST_LIB

# Everything Claude Code would otherwise do on its own on the network: updates, telemetry,
# error reports, feedback. The relay would refuse those paths anyway; this keeps it quiet.
QUIET_ENV = {
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
}
_TEMPLATE_MAX_BYTES = 1024 * 1024


def claude_path(version: str) -> str:
    """Where `vmsbx up` installs the pinned Claude Code binary in the guest."""
    return f"{GUEST_LIB}/claude/{version}/claude"


def new_token() -> str:
    """The run's stand-in for the API key: random, worthless outside the relay."""
    return "vmsbx-run-" + secrets.token_urlsafe(32)


def claude_argv(version: str, prompt: str | None) -> list[str]:
    argv = [claude_path(version), "--dangerously-skip-permissions"]
    if prompt is not None:
        argv += ["-p", prompt, "--output-format", "stream-json", "--verbose"]
    return argv


def agent_env(token: str) -> dict[str, str]:
    return {
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{BRIDGES['relay']}",
        "ANTHROPIC_API_KEY": token,
        **QUIET_ENV,
    }


def home_files(token: str, template: Path | None) -> dict[str, str]:
    """The fresh HOME's seed: onboarding done, updates off, the run token accepted, plus the
    user's own template files (settings, CLAUDE.md …) from their config folder."""
    claude_json = {
        "hasCompletedOnboarding": True,
        "bypassPermissionsModeAccepted": True,
        "autoUpdates": False,
        # Claude Code asks before using a key from the environment; the run token is ours.
        "customApiKeyResponses": {"approved": [token[-20:]], "rejected": []},
    }
    files = {
        ".claude.json": json.dumps(claude_json, indent=2) + "\n",
        ".claude/settings.json": json.dumps({"autoUpdates": False}, indent=2) + "\n",
    }
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
