"""What a sandboxed Claude Code needs to talk to the relay and start without asking anything.

Pure: returns the environment and the HOME files for one run; the run lifecycle puts them in
place. Measured with Claude Code 2.1.332 against a loopback fake of the API:
- `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` alone stops every call except `POST
  /v1/messages?beta=true` on ANTHROPIC_BASE_URL (no DNS lookup at all, no `HEAD /api/hello`, no
  telemetry, no session-title side request); without it the client also resolves
  api.anthropic.com. `DISABLE_AUTOUPDATER=1` stops the "Auto-update failed" notice. The other two
  flags are older spellings of parts of the first, kept for other versions.
- An interactive start in a fresh HOME stops at, in turn: an online check that needs
  api.anthropic.com itself (skipped by `hasCompletedOnboarding`), the folder trust dialog
  (`projects[cwd].hasTrustDialogAccepted`), "Detected a custom API key" (API keys only; the
  answer is stored as the key's last 20 characters), and the bypass-permissions warning
  (`skipDangerousModePermissionPrompt` in settings.json). Headless `-p` asks none of these.
- With an API key the client sends `x-api-key`; with `CLAUDE_CODE_OAUTH_TOKEN` it sends
  `Authorization: Bearer` and adds `oauth-2025-04-20` to `anthropic-beta` (and picks models and
  billing text for a subscription), so the sandbox gets the token under the name that matches
  the real credential's kind.
"""

from __future__ import annotations

import json

from vmsbx.agent.credential import CredentialKind

QUIET_ENV: dict[str, str] = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


def agent_environment(token: str, base_url: str, kind: CredentialKind) -> dict[str, str]:
    """The variables that point the sandboxed client at the relay with the per-run token."""
    name = "ANTHROPIC_API_KEY" if kind == "api_key" else "CLAUDE_CODE_OAUTH_TOKEN"
    return {"ANTHROPIC_BASE_URL": base_url, name: token, **QUIET_ENV}


def seeded_home_files(workspace: str, token: str, kind: CredentialKind) -> dict[str, str]:
    """HOME-relative files that let an interactive run start straight at the prompt.

    `workspace` is the agent's working directory as the agent sees it.
    """
    state: dict[str, object] = {
        "hasCompletedOnboarding": True,
        "projects": {workspace: {"hasTrustDialogAccepted": True}},
    }
    if kind == "api_key":
        state["customApiKeyResponses"] = {"approved": [token[-20:]], "rejected": []}
    settings = {"skipDangerousModePermissionPrompt": True}
    return {
        ".claude.json": json.dumps(state, indent=2) + "\n",
        ".claude/settings.json": json.dumps(settings, indent=2) + "\n",
    }
