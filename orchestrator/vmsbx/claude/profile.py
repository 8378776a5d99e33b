"""The host user's own Claude Code profile, offered to every agent run as a copy.

What is read is an allowlist of the user's config folder (`~/.claude`, or `$CLAUDE_CONFIG_DIR`):
`CLAUDE.md`, `settings.json`, `commands/`, `agents/`, `skills/`, plus the user-scope MCP server
definitions (`mcpServers`) of `~/.claude.json`. Nothing else there is opened, so
`.credentials.json`, the OAuth state in `.claude.json`, `projects/`, history and caches never
reach the VM. Inside what is read, credentials are left out: `env` entries whose name or value
looks secret (or names a secret file by the sync secret patterns), the settings that run
credential helpers, and MCP servers' headers, OAuth settings and secret env; an MCP server
whose URL or arguments hold a secret is left out whole.

The folder is the user's, but other programs write into it, so it is read as hostile-ish input:
links are never followed (a link inside is left out, whatever it points to), only regular files
are read (through descriptors opened with O_NOFOLLOW, so a swap between listing and opening
cannot redirect a read), and the copy is capped in files and bytes. The run gets its own copy
in its fresh HOME: nothing it does there reaches the host or the next run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from vmsbx.logsetup import looks_secret
from vmsbx.sync.rules import ExcludeRules

PROFILE_MAX_FILES = 256
PROFILE_MAX_BYTES = 512 * 1024
# ~/.claude.json also holds every project's history: it may be large, but only its MCP servers
# are kept.
_CLAUDE_JSON_MAX = 16 * 1024 * 1024
_WALK_MAX_ENTRIES = 4096
_FILES = ("CLAUDE.md", "settings.json")
_FOLDERS = ("commands", "agents", "skills")
# Settings that run a host-side credential helper or pin a login: meaningless in the sandbox
# (the relay holds the credential) and a way to carry one in.
_CREDENTIAL_SETTINGS = (
    "apiKeyHelper",
    "awsAuthRefresh",
    "awsCredentialExport",
    "otelHeadersHelper",
    "forceLoginMethod",
    "forceLoginOrgUUID",
)
# Variables vmsbx sets for the agent (relay address, run token, quiet flags) or that would send
# it to another provider: a profile must not override them.
_OWN_ENV = re.compile(
    r"^(ANTHROPIC_\w*|CLAUDE_CODE_OAUTH_TOKEN|CLAUDE_CODE_USE_\w+|CLAUDE_CONFIG_DIR"
    r"|CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC|DISABLE_AUTOUPDATER|DISABLE_TELEMETRY|DISABLE_ERROR_REPORTING"
    r"|HTTPS?_PROXY|NO_PROXY|https?_proxy|no_proxy)$"
)
_SECRET_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH(?!OR)|COOKIE|SESSION|PRIVATE", re.IGNORECASE
)
_MCP_KEEP = ("type", "command", "args", "url", "env", "timeout")


@dataclass(frozen=True)
class ClaudeProfile:
    """What of the user's profile a run gets, and what was left out (both shown at run start)."""

    files: dict[str, str] = field(default_factory=dict)
    """HOME-relative path -> text, for `.claude/` (CLAUDE.md, commands/…, not settings.json)."""
    settings: dict[str, object] = field(default_factory=dict)
    """settings.json with its credentials taken out (merged into the run's own settings)."""
    mcp_servers: dict[str, object] = field(default_factory=dict)
    """User-scope MCP servers, cleaned (they go into the run's ~/.claude.json)."""
    copied: tuple[str, ...] = ()
    """What was copied, relative to the config folder ("mcpServers.<name>" for a server)."""
    left_out: tuple[str, ...] = ()
    """What was left out and why, one line each."""


def config_dir(environ: dict[str, str] | os._Environ[str], home: Path) -> Path:
    """Claude Code's own rule: $CLAUDE_CONFIG_DIR, else ~/.claude."""
    configured = environ.get("CLAUDE_CONFIG_DIR")
    return Path(configured) if configured else home / ".claude"


def claude_json_path(environ: dict[str, str] | os._Environ[str], home: Path) -> Path:
    """Where Claude Code keeps its global state (with the user-scope MCP servers)."""
    configured = environ.get("CLAUDE_CONFIG_DIR")
    return Path(configured) / ".claude.json" if configured else home / ".claude.json"


def read_profile(root: Path, claude_json: Path | None, rules: ExcludeRules) -> ClaudeProfile:
    """The profile under `root` (absent: an empty one), credentials left out as described above.

    `rules` are the sync secret patterns: a file they match is not copied, and neither is an
    env entry whose value they match.
    """
    reader = _Reader(rules)
    if root.is_dir():
        try:
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            reader.leave_out(str(root), f"cannot be read ({exc.strerror})")
        else:
            try:
                reader.read_root(root_fd)
            finally:
                os.close(root_fd)
    if claude_json is not None:
        reader.read_mcp_servers(claude_json)
    return ClaudeProfile(
        files=reader.files,
        settings=reader.settings,
        mcp_servers=reader.mcp_servers,
        copied=tuple(reader.copied),
        left_out=tuple(reader.left_out),
    )


class _Reader:
    def __init__(self, rules: ExcludeRules) -> None:
        self.rules = rules
        self.files: dict[str, str] = {}
        self.settings: dict[str, object] = {}
        self.mcp_servers: dict[str, object] = {}
        self.copied: list[str] = []
        self.left_out: list[str] = []
        self.total = 0
        self.full = False

    def leave_out(self, name: str, why: str) -> None:
        self.left_out.append(f"{name}: {why}")

    def read_root(self, root_fd: int) -> None:
        for name in _FILES:
            text = self.read_file(root_fd, name, name)
            if text is None:
                continue
            if name == "settings.json":
                self.read_settings(text)
            else:
                self.files[f".claude/{name}"] = text
                self.copied.append(name)
        for folder in _FOLDERS:
            self.read_folder(root_fd, folder)

    def read_folder(self, root_fd: int, folder: str) -> None:
        try:
            mode = os.lstat(folder, dir_fd=root_fd).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(mode):
            self.leave_out(f"{folder}/", "not a folder (links are not followed)")
            return
        seen = 0
        # fwalk hands out a descriptor per folder and never follows a link, even one swapped in
        # while it walks.
        for path, dirs, names, dir_fd in os.fwalk(folder, dir_fd=root_fd, follow_symlinks=False):
            dirs.sort()
            for name in sorted(names):
                seen += 1
                if seen > _WALK_MAX_ENTRIES:
                    self.leave_out(f"{folder}/", f"holds more than {_WALK_MAX_ENTRIES} entries; the rest")
                    return
                rel = f"{path}/{name}"
                reason = self.rules.match(rel)
                if reason is not None:
                    self.leave_out(rel, f"matches the {reason}")
                    continue
                text = self.read_file(dir_fd, name, rel)
                if text is not None:
                    self.files[f".claude/{rel}"] = text
                    self.copied.append(rel)
            # fwalk lists links to folders among the folders (and would not enter them): say so.
            for name in list(dirs):
                if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
                    dirs.remove(name)
                    self.leave_out(f"{path}/{name}", "a link (not followed)")
            seen += len(dirs)

    def read_file(self, dir_fd: int, name: str, rel: str) -> str | None:
        """The text of regular file `name` in `dir_fd`, within the caps; None (and a note) for
        anything else."""
        try:
            mode = os.lstat(name, dir_fd=dir_fd).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            self.leave_out(rel, "a link (not followed)")
            return None
        if not stat.S_ISREG(mode):
            # Not even opened: opening a device or a FIFO can have effects of its own.
            self.leave_out(rel, "not a regular file")
            return None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.leave_out(rel, "a link (not followed)" if exc.errno == errno.ELOOP else str(exc.strerror))
            return None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self.leave_out(rel, "not a regular file")
                return None
            if self.full or len(self.files) + 1 > PROFILE_MAX_FILES:
                self.full = True
                self.leave_out(rel, f"over the profile's cap of {PROFILE_MAX_FILES} files")
                return None
            room = PROFILE_MAX_BYTES - self.total
            data = handle.read(room + 1)
            if len(data) > room:
                self.leave_out(rel, f"over the profile's cap of {PROFILE_MAX_BYTES // 1024} KiB")
                return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.leave_out(rel, "not UTF-8 text")
            return None
        self.total += len(data)
        return text

    def read_settings(self, text: str) -> None:
        try:
            loaded = json.loads(text)
        except ValueError:
            self.leave_out("settings.json", "not valid JSON")
            return
        if not isinstance(loaded, dict):
            self.leave_out("settings.json", "not a JSON object")
            return
        for key in _CREDENTIAL_SETTINGS:
            if loaded.pop(key, None) is not None:
                self.leave_out(f"settings.json {key}", "a credential helper")
        permissions = loaded.get("permissions")
        bypass_off = isinstance(permissions, dict) and permissions.pop("disableBypassPermissionsMode", None)
        if bypass_off is not None and bypass_off is not False:
            self.leave_out(
                "settings.json permissions.disableBypassPermissionsMode",
                "vmsbx runs the agent with --dangerously-skip-permissions, inside the sandbox",
            )
        if "env" in loaded:
            env = loaded["env"]
            loaded["env"] = self.clean_env(env, "settings.json env") if isinstance(env, dict) else {}
        self.settings = loaded
        self.copied.append("settings.json")

    def clean_env(self, env: dict[object, object], where: str) -> dict[str, str]:
        kept: dict[str, str] = {}
        for name, value in env.items():
            if not isinstance(name, str) or not isinstance(value, str | int | float | bool):
                self.leave_out(f"{where} {name!s:.60}", "not a name and a plain value")
                continue
            text = str(value)
            if _OWN_ENV.match(name):
                self.leave_out(f"{where} {name}", "vmsbx sets it for the run")
            elif _SECRET_NAME.search(name) or looks_secret(text) or self._names_secret_file(text):
                self.leave_out(f"{where} {name}", "looks like a secret")
            else:
                kept[name] = text
        return kept

    def _names_secret_file(self, value: str) -> bool:
        return "/" in value and self.rules.match(value.strip("/")) is not None

    def read_mcp_servers(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.leave_out(path.name, f"cannot be read ({exc.strerror})")
            return
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self.leave_out(path.name, "not a regular file")
                return
            data = handle.read(_CLAUDE_JSON_MAX + 1)
        if len(data) > _CLAUDE_JSON_MAX:
            self.leave_out(f"{path.name} mcpServers", f"the file is over {_CLAUDE_JSON_MAX >> 20} MiB")
            return
        try:
            state = json.loads(data)
        except ValueError:
            self.leave_out(f"{path.name} mcpServers", "the file is not valid JSON")
            return
        servers = state.get("mcpServers") if isinstance(state, dict) else None
        if not isinstance(servers, dict):
            return
        for name, server in sorted(servers.items()):
            where = f"mcpServers.{name}"
            if not isinstance(server, dict):
                self.leave_out(where, "not an object")
                continue
            cleaned = self.clean_mcp_server(server, where)
            if cleaned is not None:
                self.mcp_servers[name] = cleaned
                self.copied.append(where)

    def clean_mcp_server(self, server: dict[str, object], where: str) -> dict[str, object] | None:
        url, args = server.get("url"), server.get("args", [])
        if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
            self.leave_out(where, "its args are not a list of strings")
            return None
        if any(looks_secret(text) for text in [*args, url if isinstance(url, str) else ""]):
            self.leave_out(where, "its URL or arguments hold a secret")
            return None
        cleaned: dict[str, object] = {}
        for key, value in server.items():
            if key not in _MCP_KEEP:
                self.leave_out(f"{where}.{key}", "may hold credentials (headers, OAuth …)")
            elif key == "env":
                cleaned[key] = self.clean_env(value, f"{where}.env") if isinstance(value, dict) else {}
            else:
                cleaned[key] = value
        return cleaned


_LISTED_MAX = 20


def describe(profile: ClaudeProfile, source: Path) -> list[str]:
    """What a user sees at run start: what was copied, what was left out (the run's record
    keeps the full lists)."""
    where = _shown(source)
    if not profile.copied and not profile.left_out:
        return [f"no Claude profile to copy from {where}"]
    lines = [
        f"your Claude profile from {where}, copied for this run only: "
        f"{_listed(profile.copied) or 'nothing'} (--no-claude-profile leaves it out)"
    ]
    if profile.mcp_servers:
        lines.append("its MCP servers reach the network only as this run's network policy allows")
    if profile.left_out:
        lines.append(f"left out of it: {_listed(profile.left_out, separator='; ')}")
    return lines


def _listed(items: tuple[str, ...], separator: str = ", ") -> str:
    shown = separator.join(items[:_LISTED_MAX])
    more = len(items) - _LISTED_MAX
    return f"{shown}{separator}… and {more} more" if more > 0 else shown


def _shown(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if text == home or text.startswith(home + "/") else text
