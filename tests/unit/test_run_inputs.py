"""Pure pieces of a run on the host: the workspace tar, the fail-closed policy checks."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from vmsbx.config.models import SandboxSettings, Settings
from vmsbx.errors import UsageError
from vmsbx.guest import GuestFacts, check_walls
from vmsbx.runs.lifecycle import check_policy
from vmsbx.runs.workspace import workspace_tar


def test_workspace_tar_keeps_links_as_links_and_skips_special_files(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "app.py").write_text("print('hi')\n")
    (project / "run.sh").write_text("#!/bin/sh\n")
    (project / "run.sh").chmod(0o4755)
    secret = tmp_path / "outside-secret"
    secret.write_text("do not copy me")
    (project / "link").symlink_to(secret)
    (project / "linkdir").symlink_to(tmp_path)
    os.mkfifo(project / "fifo")
    with tarfile.open(fileobj=io.BytesIO(workspace_tar(project))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"src", "src/app.py", "run.sh", "link", "linkdir"}
        assert members["link"].issym() and members["link"].linkname == str(secret)
        assert members["linkdir"].issym()
        assert all(m.uid == 0 and m.uname == "" for m in members.values())
        extracted = tar.extractfile("src/app.py")
        assert extracted is not None and extracted.read() == b"print('hi')\n"
        data = b"".join((tar.extractfile(m) or io.BytesIO()).read() for m in tar.getmembers() if m.isfile())
    assert b"do not copy me" not in data


def test_policy_checks_fail_closed() -> None:
    check_policy(Settings())
    with pytest.raises(UsageError, match="network policy 'api'"):
        check_policy(Settings(sandbox=SandboxSettings(network="api")))
    with pytest.raises(UsageError, match="open"):
        check_policy(Settings(sandbox=SandboxSettings(network="open")))


def facts(**overrides: str) -> GuestFacts:
    values = {
        "pid1": "systemd",
        "systemd_version": "252",
        "cgroup_fs": "cgroup2fs",
        "arch": "x86_64",
        "kernel": "6.1.0",
        "system_state": "running",
        "max_user_namespaces": "1000",
        "guest_version": "",
    }
    values.update(overrides)
    return GuestFacts(**values)


def test_guest_without_a_wall_is_refused() -> None:
    check_walls(facts())
    for bad, words in (
        ({"pid1": "init"}, "not systemd"),
        ({"systemd_version": "247"}, "older than 248"),
        ({"cgroup_fs": "tmpfs"}, "cgroup v2"),
    ):
        with pytest.raises(Exception, match=words) as refused:
            check_walls(facts(**bad))
        assert refused.value.exit_code == 10  # type: ignore[attr-defined]
