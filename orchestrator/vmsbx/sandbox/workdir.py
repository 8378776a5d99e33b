"""Where a run sees its project (pure): at the host's own path where the guest can take it, else
at a stable `/workspace/<name>`.

The same path as on the host makes the agent's tool lines, error messages and stack traces read
like the user's own, and gives Claude Code the same folder name every run (its per-project
history under ~/.claude/projects/ is keyed by it, which `vmsbx run --continue` relies on). Only
the name is shared between runs: each run still gets its own mount of its own size-capped
workspace in its own mount namespace, so two runs of one project do not see each other.

The host's path is taken only when it is plain enough to be a mount point in the guest:
absolute POSIX, every part of the few characters that systemd's BindPaths= and nsjail's config
take unquoted, and not under a folder the guest's system owns or a sandbox hides (ProtectHome=
hides /home and /root; /tmp is the run's own tmpfs). So a Mac's /Users/alice/code/app is
/Users/alice/code/app in the run; Linux's /home/alice/app, a Windows path or a name with a
space is /workspace/app.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

WORKSPACE_ROOT = "/workspace"
# Top-level folders of a Debian guest, and those a run's sandbox replaces or hides.
_GUEST_OWNED = frozenset({
    "bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "lost+found", "media",
    "mnt", "opt", "proc", "root", "run", "sbin", "snap", "srv", "sys", "tmp", "usr", "var",
})  # fmt: skip
_PLAIN_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")
_PATH_MAX = 240
_NAME_MAX = 64


def run_workdir(project: str) -> str:
    """The absolute path at which a run of `project` (the host's resolved project path) sees
    its workspace, in both sandbox modes."""
    path = PurePosixPath(project)
    parts = path.parts[1:]
    if (
        path.is_absolute()
        and str(path) == project
        and len(project) <= _PATH_MAX
        and len(parts) >= 2
        and parts[0] not in _GUEST_OWNED
        and all(_PLAIN_PART.fullmatch(part) for part in parts)
    ):
        return project
    return f"{WORKSPACE_ROOT}/{workspace_name(project)}"


def workspace_name(project: str) -> str:
    """The fallback folder's name: the project's last path part (POSIX or Windows), its unsafe
    characters as '-', never empty, never a dot name."""
    last = re.split(r"[\\/]", project.rstrip("\\/"))[-1] if project.strip("\\/") else ""
    name = _UNSAFE.sub("-", last).strip(".-")[:_NAME_MAX].strip(".-")
    return name or "project"
