"""Where a run sees its project: the host's path where the guest can take it, else /workspace/NAME;
and both sandbox kinds put the workspace there."""

from __future__ import annotations

import pytest

from vmsbx.config.models import SandboxSettings
from vmsbx.sandbox.layout import RunLayout
from vmsbx.sandbox.nsjail import check_jail_config, render_nsjail_config
from vmsbx.sandbox.systemd import render_unit_properties
from vmsbx.sandbox.workdir import run_workdir, workspace_name

LAYOUT = RunLayout(run_id="0123456789ab")


@pytest.mark.parametrize(
    "project",
    ["/Users/alice/code/app", "/Volumes/Work/my_app-2", "/work/ci/proj", "/workspace/app", "/w/a@b+c.d"],
)
def test_a_plain_host_path_outside_the_guests_own_folders_is_kept(project: str) -> None:
    assert run_workdir(project) == project


@pytest.mark.parametrize(
    ("project", "fallback"),
    [
        ("/home/alice/app", "/workspace/app"),  # ProtectHome= hides /home
        ("/root/app", "/workspace/app"),
        ("/tmp/pytest-of-root/x/proj0", "/workspace/proj0"),  # the run's own tmpfs
        ("/usr/src/linux", "/workspace/linux"),
        ("/var/lib/app", "/workspace/app"),
        ("/Users/alice/My Project", "/workspace/My-Project"),  # a space: not a plain mount point
        ("/Users/alice/Änderungen", "/workspace/nderungen"),
        ("/app", "/workspace/app"),  # one part: it would be a new top folder of the guest's root
        ("C:\\Users\\alice\\app", "/workspace/app"),  # Windows
        ("/Users/alice/.hidden", "/workspace/hidden"),
        ("/Users/alice/-x", "/workspace/x"),
        ("/Users/alice/a/../b", "/workspace/b"),
        ("/", "/workspace/project"),
        ("/Users/" + "a" * 250, "/workspace/" + "a" * 64),
    ],
)
def test_any_other_path_falls_back_to_a_stable_workspace_folder(project: str, fallback: str) -> None:
    assert run_workdir(project) == fallback


def test_the_fallback_name_never_leaves_the_workspace_folder() -> None:
    for hostile in ("..", ".", "/..", "a/..", '"x"', "a\nb", "$(id)", "\\\\server\\share\\"):
        name = workspace_name(hostile)
        assert "/" not in name and name not in ("", ".", "..")
        assert run_workdir(hostile).startswith("/workspace/")


def test_systemd_binds_the_workspace_at_the_workdir_and_starts_there() -> None:
    props = render_unit_properties(SandboxSettings(), LAYOUT, "/Users/alice/app")
    assert "WorkingDirectory=/Users/alice/app" in props
    binds = [p for p in props if p.startswith("BindPaths=")]
    assert binds == [
        f"BindPaths={LAYOUT.tmp_dir}:/tmp {LAYOUT.tmp_dir}:/var/tmp {LAYOUT.workspace_mount}:/Users/alice/app"
    ]
    # The StateDirectory= stays: systemd's chown to the run's user is what the bind shows.
    assert f"StateDirectory={LAYOUT.state_name}" in props


def test_nsjail_mounts_the_workspace_at_the_workdir_writable_and_nothing_else_moves() -> None:
    config = render_nsjail_config(SandboxSettings(), LAYOUT, outside_uid=60001, workdir="/Users/alice/app")
    assert 'cwd: "/Users/alice/app"' in config
    assert 'dst: "/Users/alice/app"' in config and 'dst: "/workspace"' not in config
    assert check_jail_config(config, workdir="/Users/alice/app") == []
    # Checked against another workdir, the same config has a writable mount where none may be.
    problems = check_jail_config(config)
    assert any("'/Users/alice/app' is writable" in problem for problem in problems)


@pytest.mark.parametrize("workdir", ["relative", "/", "/tmp", '/a"b'])
def test_nsjail_refuses_a_workdir_that_is_no_place_of_its_own(workdir: str) -> None:
    with pytest.raises(ValueError, match="cannot be the jail's workspace"):
        render_nsjail_config(SandboxSettings(), LAYOUT, outside_uid=60001, workdir=workdir)
