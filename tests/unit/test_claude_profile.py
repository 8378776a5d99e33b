"""The host user's Claude profile as a run gets it: the allowlist, the credentials left out, the
caps, links and special files never followed or opened (real files under tmp_path)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vmsbx.claude import profile as profiles
from vmsbx.runs import agentrun
from vmsbx.sync.rules import exclude_rules

CANARY = "sk-ant-oat01-PROFILECANARY-" + "x" * 24
RULES = exclude_rules(None, ())


def _home(tmp_path: Path) -> Path:
    root = tmp_path / ".claude"
    (root / "commands").mkdir(parents=True)
    (root / "CLAUDE.md").write_text("Always answer like a pirate.\n")
    (root / "commands" / "greet.md").write_text("Say hello to $ARGUMENTS\n")
    (root / "agents").mkdir()
    (root / "agents" / "reviewer.md").write_text("---\nname: reviewer\n---\nReview.\n")
    (root / "skills" / "tidy").mkdir(parents=True)
    (root / "skills" / "tidy" / "SKILL.md").write_text("---\nname: tidy\n---\nTidy up.\n")
    (root / ".credentials.json").write_text(json.dumps({"claudeAiOauth": {"accessToken": CANARY}}))
    (root / "projects").mkdir()
    (root / "projects" / "old.jsonl").write_text(CANARY)
    (root / "history.jsonl").write_text(CANARY)
    settings = {
        "permissions": {"allow": ["Bash(npm test)"], "disableBypassPermissionsMode": "disable"},
        "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "echo done"}]}]},
        "env": {
            "PROFILE_OK": "1",
            "GIT_AUTHOR_NAME": "Ann",
            "GITHUB_TOKEN": "plain-looking",
            "HARMLESS_NAME": CANARY,
            "ANTHROPIC_BASE_URL": "https://elsewhere.example",
            "CERT": "/home/ann/.ssh/id_ed25519",
        },
        "apiKeyHelper": "pass show anthropic",
        "skipDangerousModePermissionPrompt": False,
    }
    (root / "settings.json").write_text(json.dumps(settings))
    state = {
        "oauthAccount": {"emailAddress": "ann@example.com", "token": CANARY},
        "primaryApiKey": CANARY,
        "mcpServers": {
            "docs": {"type": "http", "url": "https://mcp.example/docs", "headers": {"Authorization": CANARY}},
            "local": {"command": "npx", "args": ["-y", "srv"], "env": {"MODE": "fast", "API_KEY": CANARY}},
            "leaky": {"command": "srv", "args": [f"--key={CANARY}"]},
        },
    }
    (tmp_path / ".claude.json").write_text(json.dumps(state))
    return root


def test_the_profile_is_copied_and_credentials_are_left_out(tmp_path: Path) -> None:
    root = _home(tmp_path)
    profile = profiles.read_profile(root, tmp_path / ".claude.json", RULES)
    assert profile.files == {
        ".claude/CLAUDE.md": "Always answer like a pirate.\n",
        ".claude/agents/reviewer.md": "---\nname: reviewer\n---\nReview.\n",
        ".claude/commands/greet.md": "Say hello to $ARGUMENTS\n",
        ".claude/skills/tidy/SKILL.md": "---\nname: tidy\n---\nTidy up.\n",
    }
    assert profile.settings["env"] == {"PROFILE_OK": "1", "GIT_AUTHOR_NAME": "Ann"}
    assert profile.settings["permissions"] == {"allow": ["Bash(npm test)"]}
    assert "hooks" in profile.settings and "apiKeyHelper" not in profile.settings
    assert profile.mcp_servers == {
        "docs": {"type": "http", "url": "https://mcp.example/docs"},
        "local": {"command": "npx", "args": ["-y", "srv"], "env": {"MODE": "fast"}},
    }
    assert "mcpServers.docs" in profile.copied and "mcpServers.leaky" not in profile.copied
    left_out = "\n".join(profile.left_out)
    for name in ("GITHUB_TOKEN", "HARMLESS_NAME", "ANTHROPIC_BASE_URL", "CERT", "apiKeyHelper", "headers"):
        assert name in left_out
    assert "mcpServers.leaky: its URL or arguments hold a secret" in left_out

    files = agentrun.home_files("vmsbx-run-" + "t" * 40, "api_key", ["/w"], None, profile)
    everything = json.dumps(files)
    assert CANARY not in everything and "ann@example.com" not in everything
    assert not any(".credentials" in name or "projects/" in name for name in files)
    settings = json.loads(files[".claude/settings.json"])
    assert settings["skipDangerousModePermissionPrompt"] is True  # vmsbx's answer wins
    assert settings["env"]["PROFILE_OK"] == "1"
    state = json.loads(files[".claude.json"])
    assert state["projects"]["/w"]["hasTrustDialogAccepted"] is True
    assert set(state["mcpServers"]) == {"docs", "local"}
    assert files[".claude/CLAUDE.md"].startswith("Always answer")
    lines = profiles.describe(profile, root)
    assert "CLAUDE.md" in lines[0] and "--no-claude-profile" in lines[0]
    assert any("network policy" in line for line in lines)


def test_links_and_special_files_are_never_followed_or_opened(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("OUTSIDE\n")
    root = tmp_path / ".claude"
    (root / "commands").mkdir(parents=True)
    (root / "CLAUDE.md").symlink_to(outside / "secret.md")
    (root / "commands" / "linked.md").symlink_to(outside / "secret.md")
    (root / "commands" / "folder").symlink_to(outside)
    (root / "agents").symlink_to(outside)
    os.mkfifo(root / "commands" / "pipe.md")  # opening it would block: it must not be opened
    (root / "commands" / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (root / "commands" / "binary.md").write_bytes(b"\xff\xfe\x00")
    profile = profiles.read_profile(root, None, RULES)
    assert profile.files == {}
    assert "OUTSIDE" not in json.dumps(profile.files)
    left_out = "\n".join(profile.left_out)
    for name in ("CLAUDE.md: a link", "commands/linked.md: a link", "commands/folder: a link"):
        assert name in left_out
    assert "agents/: not a folder" in left_out
    assert "commands/pipe.md: not a regular file" in left_out
    assert "commands/key.pem: matches the secret pattern" in left_out
    assert "commands/binary.md: not UTF-8 text" in left_out


def test_the_copy_is_capped_in_files_and_bytes(tmp_path: Path) -> None:
    root = tmp_path / ".claude"
    (root / "commands").mkdir(parents=True)
    for number in range(profiles.PROFILE_MAX_FILES + 5):
        (root / "commands" / f"c{number:04}.md").write_text("x\n")
    profile = profiles.read_profile(root, None, RULES)
    assert len(profile.files) == profiles.PROFILE_MAX_FILES
    assert sum("over the profile's cap" in line for line in profile.left_out) == 5

    big = tmp_path / "big" / ".claude"
    (big / "skills" / "s").mkdir(parents=True)
    (big / "CLAUDE.md").write_text("memory\n")
    (big / "skills" / "s" / "data.md").write_text("y" * profiles.PROFILE_MAX_BYTES)
    profile = profiles.read_profile(big, None, RULES)
    assert set(profile.files) == {".claude/CLAUDE.md"}
    assert any(line.startswith("skills/s/data.md: over the profile's cap") for line in profile.left_out)


def test_no_profile_is_an_empty_one(tmp_path: Path) -> None:
    profile = profiles.read_profile(tmp_path / "absent", tmp_path / "absent.json", RULES)
    assert profile == profiles.ClaudeProfile()
    assert profiles.describe(profile, tmp_path / "absent")[0].startswith("no Claude profile")
