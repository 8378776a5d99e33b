"""The agent's git commits come back as a branch, never as files under .git/.

At sync-in vmsbx notes which commits the host repository has; after the run the guest makes a
bundle of the workspace's HEAD minus those (as a throw-away user, see guest.py `bundle`), and
`vmsbx apply` fetches it into `refs/heads/vmsbx/<run>` with object checking on. The user
inspects and merges that branch like any other; nothing in the project's .git/ (config,
hooks) is ever written from the guest.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from vmsbx.errors import UsageError

_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
# The user's own repository, but vmsbx's own git calls need none of its hooks or helpers.
_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]


def _git(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(
        ["git", *_SAFE, "-C", str(project), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def is_repository(project: Path) -> bool:
    return (project / ".git").is_dir() and not (project / ".git").is_symlink()


def base_commits(project: Path) -> list[str]:
    """Every commit a ref of the host repository points at (the bundle leaves these out)."""
    if not is_repository(project):
        return []
    done = _git(project, "for-each-ref", "--format=%(objectname)", "refs/heads", "refs/tags", "refs/remotes")
    head = _git(project, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    found = done.stdout.split() + head.stdout.split()
    return sorted({sha for sha in found if _COMMIT.fullmatch(sha)})


def branch_name(run_id: str) -> str:
    return f"vmsbx/{run_id}"


def fetch(project: Path, bundle: Path, run_id: str) -> str:
    """Fetch the bundle's HEAD into `vmsbx/<run>`; returns the new branch's commit."""
    if not is_repository(project):
        raise UsageError(
            f"{project} is not a git repository, but the agent's commits need one",
            hint="`git init` the project, or discard the run",
        )
    ref = f"refs/heads/{branch_name(run_id)}"
    verified = _git(project, "bundle", "verify", "--quiet", str(bundle))
    if verified.returncode != 0:
        raise UsageError(
            f"the agent's commits do not fit this repository: {verified.stderr.strip()[-300:]}",
            hint="the host repository lost commits the run started from; fetch them back, then apply again",
        )
    done = _git(
        project,
        "-c", "transfer.fsckObjects=true", "-c", "fetch.fsckObjects=true",
        "fetch", "--no-tags", "--no-write-fetch-head", "--quiet", str(bundle), f"HEAD:{ref}",
    )  # fmt: skip
    if done.returncode != 0:
        raise UsageError(
            f"git refused the agent's commits: {done.stderr.strip()[-300:]}",
            hint=f"`git branch -D {branch_name(run_id)}` if it exists from an earlier apply",
        )
    return _git(project, "rev-parse", ref).stdout.strip()
