"""The real Claude Code binary for host tests, fetched once from the npm registry and verified.

The platform package `@anthropic-ai/claude-code-linux-x64` holds the whole program as
`package/claude`. The tarball's sha512 must equal the registry's `dist.integrity` for the pinned
version, or nothing is cached. `VMSBX_TEST_CLAUDE_BIN` may point at an already verified binary.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import pwd
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import pytest

from vmsbx.config.models import AgentSettings

VERSION = AgentSettings().claude_version
REGISTRY = "https://registry.npmjs.org"
TEST_USER = "vmsbxtest"


def _package() -> str:
    arch = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine())
    if arch is None:
        pytest.fail(f"no Claude Code package for {platform.machine()}")
    return f"@anthropic-ai/claude-code-linux-{arch}"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vmsbx" / "test-claude" / VERSION


def fetch_command() -> str:
    return (
        'PYTHONPATH=orchestrator python3 -c \'import sys; sys.path.insert(0, "tests/host"); '
        "import claude_code; print(claude_code.ensure_claude())'"
    )


def ensure_claude() -> Path:
    """The verified binary for the pinned version, fetched into the cache when missing."""
    override = os.environ.get("VMSBX_TEST_CLAUDE_BIN")
    if override:
        return Path(override)
    target = cache_dir() / "claude"
    if target.exists():
        return target
    package = _package()
    with urllib.request.urlopen(f"{REGISTRY}/{package.replace('/', '%2f')}/{VERSION}", timeout=60) as reply:
        dist = json.load(reply)["dist"]
    algorithm, _, expected = dist["integrity"].partition("-")
    if algorithm != "sha512":
        raise RuntimeError(f"unexpected integrity algorithm {algorithm!r} for {package}@{VERSION}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        tarball = Path(work) / "package.tgz"
        digest = hashlib.sha512()
        with urllib.request.urlopen(dist["tarball"], timeout=600) as reply, tarball.open("wb") as out:
            while block := reply.read(1 << 20):
                digest.update(block)
                out.write(block)
        if base64.b64encode(digest.digest()).decode() != expected:
            raise RuntimeError(f"{package}@{VERSION}: tarball sha512 does not match the registry's integrity")
        with tarfile.open(tarball) as archive:
            member = archive.getmember("package/claude")
            source = archive.extractfile(member)
            assert source is not None
            partial = Path(work) / "claude"
            with partial.open("wb") as out:
                shutil.copyfileobj(source, out)
        partial.chmod(0o755)
        partial.replace(target)
    return target


def claude_binary() -> Path:
    """ensure_claude(), or a test failure that says how to fetch it by hand."""
    try:
        binary = ensure_claude()
    except Exception as error:
        pytest.fail(
            f"the real Claude Code {VERSION} binary is needed and could not be fetched ({error}); "
            f"fetch it with: {fetch_command()}  (or set VMSBX_TEST_CLAUDE_BIN)",
            pytrace=False,
        )
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"{binary} is not an executable file; fetch it again with: {fetch_command()}", pytrace=False
        )
    return binary


def unprivileged_user() -> pwd.struct_passwd:
    """A plain user to run Claude Code as (it refuses --dangerously-skip-permissions as root)."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    if os.geteuid() != 0:
        pytest.fail(
            f"needs a user {TEST_USER!r} (or root to create it): useradd -m {TEST_USER}", pytrace=False
        )
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", TEST_USER], check=True)
    return pwd.getpwnam(TEST_USER)
