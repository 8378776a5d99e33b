"""Root saves a run's Claude Code conversations from the run's HOME (issue 20), on real files.

`record` (ExecStopPost=+, root) copies HOME/.claude/projects/*/<uuid>.jsonl from the run's
tmpfs into the root-only run folder. Everything on that path is the run's: these tests plant
what a run could (a symlink to another file, a FIFO, a file of another user, a swapped folder,
more than the cap) and check that root refuses each with a note, never blocks, keeps the caps,
and still saves the real conversations; then that the `sessions` verb prints them.
"""

from __future__ import annotations

import base64
import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from guest_code import load_guest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the launcher runs as root in the guest"),
    pytest.mark.usefixtures("never_blocks"),
]

RUN_UID = 61234
OTHER_UID = 61235
SESSION_A = "0a1b2c3d-0000-4000-8000-00000000000a"
SESSION_B = "0a1b2c3d-0000-4000-8000-00000000000b"
PROJECT = "-var-lib-private-vmsbx-ws-abcdefabcdef"

launcher = load_guest("launcher")


@pytest.fixture
def run(tmp_path: Path) -> Any:
    """A run's folders as the guest has them, with one conversation in its HOME."""
    run_dir = tmp_path / "runs" / "abcdefabcdef"
    tmp = run_dir / "tmp"
    workspace = tmp_path / "private" / "vmsbx-ws-abcdefabcdef"
    for folder in (tmp, workspace):
        folder.mkdir(parents=True)
    run_dir.chmod(0o700)
    tmp.chmod(0o1777)
    os.chown(workspace, RUN_UID, RUN_UID)

    class _Paths(launcher.RunPaths):  # type: ignore[name-defined,misc]
        __slots__ = ()
        run_dir = property(lambda _self: str(tmp_path / "runs" / _self.run_id))
        workspace_mount = property(lambda _self: str(tmp_path / "private" / _self.state_name))

    paths = _Paths("abcdefabcdef")
    _plant(paths, PROJECT, f"{SESSION_A}.jsonl", b'{"type":"user"}\n')
    return paths


def _projects(run: Any) -> Path:
    return Path(run.tmp_dir) / ".vmsbx-home" / ".claude" / "projects"


def _plant(run: Any, project: str, name: str, data: bytes, *, mtime: int | None = None) -> Path:
    """A file the run wrote: every folder and the file its own."""
    home = Path(run.tmp_dir) / ".vmsbx-home"
    folder = _projects(run) / project
    folder.mkdir(parents=True, exist_ok=True)
    for path in (home, home / ".claude", _projects(run), folder):
        os.chown(path, RUN_UID, RUN_UID)
    target = folder / name
    target.write_bytes(data)
    os.chown(target, RUN_UID, RUN_UID)
    if mtime is not None:
        os.utime(target, (mtime, mtime))
    return target


def _saved(run: Any) -> dict[str, bytes]:
    folder = Path(run.sessions_dir)
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def test_the_runs_conversation_is_saved_root_only(run: Any) -> None:
    assert launcher.save_sessions(run) == []
    assert _saved(run) == {f"{SESSION_A}.jsonl": b'{"type":"user"}\n'}
    assert oct(Path(run.sessions_dir).stat().st_mode & 0o777) == "0o700"
    assert oct((Path(run.sessions_dir) / f"{SESSION_A}.jsonl").stat().st_mode & 0o777) == "0o600"


def test_a_run_without_a_conversation_has_no_note(run: Any) -> None:
    import shutil

    shutil.rmtree(Path(run.tmp_dir) / ".vmsbx-home")
    assert launcher.save_sessions(run) == []
    assert _saved(run) == {}


def test_a_planted_symlink_is_never_followed(run: Any, tmp_path: Path) -> None:
    secret = tmp_path / "another-projects-secret"
    secret.write_text("secret\n")
    link = _projects(run) / PROJECT / f"{SESSION_B}.jsonl"
    link.symlink_to(secret)
    os.lchown(link, RUN_UID, RUN_UID)
    notes = launcher.save_sessions(run)
    assert notes == [f"session {SESSION_B}.jsonl not saved: {SESSION_B}.jsonl is a symbolic link, not a file"]
    assert set(_saved(run)) == {f"{SESSION_A}.jsonl"}


def test_a_swapped_projects_folder_is_refused(run: Any, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / PROJECT).mkdir(parents=True)
    (elsewhere / PROJECT / f"{SESSION_B}.jsonl").write_text("root's file\n")
    claude = _projects(run).parent
    _projects(run).rename(claude / "old")
    (claude / "projects").symlink_to(elsewhere)
    os.lchown(claude / "projects", RUN_UID, RUN_UID)
    assert launcher.save_sessions(run) == ["sessions not saved: projects is a symbolic link, not a directory"]
    assert _saved(run) == {}


def test_a_fifo_is_refused_without_blocking(run: Any) -> None:
    fifo = _projects(run) / PROJECT / f"{SESSION_B}.jsonl"
    os.mkfifo(fifo)
    os.chown(fifo, RUN_UID, RUN_UID)
    assert launcher.save_sessions(run) == [
        f"session {SESSION_B}.jsonl not saved: {SESSION_B}.jsonl is a FIFO, not a file"
    ]
    assert set(_saved(run)) == {f"{SESSION_A}.jsonl"}


def test_a_file_of_another_user_is_refused(run: Any) -> None:
    other = _plant(run, PROJECT, f"{SESSION_B}.jsonl", b"{}\n")
    os.chown(other, OTHER_UID, OTHER_UID)
    assert launcher.save_sessions(run) == [
        f"session {SESSION_B}.jsonl not saved: {SESSION_B}.jsonl belongs to uid {OTHER_UID}, "
        f"not to the run's user ({RUN_UID})"
    ]
    assert set(_saved(run)) == {f"{SESSION_A}.jsonl"}


def test_a_home_of_another_user_is_refused(run: Any) -> None:
    os.chown(Path(run.tmp_dir) / ".vmsbx-home", OTHER_UID, OTHER_UID)
    assert launcher.save_sessions(run) == [
        f"sessions not saved: .vmsbx-home belongs to uid {OTHER_UID}, not to the run's user ({RUN_UID})"
    ]


def test_an_oversize_file_is_left_out_whole(run: Any) -> None:
    big = _plant(run, PROJECT, f"{SESSION_B}.jsonl", b"")
    with open(big, "r+b") as handle:
        handle.truncate(1 << 40)  # sparse: a terabyte that costs nothing
    os.utime(big, (2_000_000_000, 2_000_000_000))
    notes = launcher.save_sessions(run)
    assert notes == [f"session {SESSION_B}.jsonl not saved: over the cap of 16 files, {8 << 20} bytes"]
    assert set(_saved(run)) == {f"{SESSION_A}.jsonl"}


def test_the_caps_keep_the_newest(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "SESSIONS_MAX_FILES", 2)
    names = [f"0a1b2c3d-0000-4000-8000-0000000000{i:02d}.jsonl" for i in range(4)]
    for i, name in enumerate(names):
        _plant(run, PROJECT, name, b"{}\n", mtime=1_900_000_000 + i)
    notes = launcher.save_sessions(run)
    assert set(_saved(run)) == set(names[2:])
    assert len(notes) == 3  # two older planted ones and the fixture's own


def test_odd_names_are_ignored_and_odd_folders_noted(run: Any) -> None:
    _plant(run, PROJECT, "notes.txt", b"x")
    _plant(run, PROJECT, "../escape.jsonl".replace("/", "-"), b"x")
    weird = _projects(run) / "a b"
    weird.mkdir()
    os.chown(weird, RUN_UID, RUN_UID)
    assert launcher.save_sessions(run) == ["sessions: project folder 'a b' skipped: not a cwd's name"]
    assert set(_saved(run)) == {f"{SESSION_A}.jsonl"}


def test_the_same_session_in_two_folders_keeps_the_newer(run: Any) -> None:
    _plant(run, PROJECT, f"{SESSION_A}.jsonl", b"old\n", mtime=1_800_000_000)
    _plant(run, "-var-lib-vmsbx-ws-abcdefabcdef", f"{SESSION_A}.jsonl", b"new\n", mtime=1_900_000_000)
    assert launcher.save_sessions(run) == []
    assert _saved(run) == {f"{SESSION_A}.jsonl": b"new\n"}


def test_the_sessions_verb_prints_them_oldest_first(run: Any) -> None:
    _plant(run, PROJECT, f"{SESSION_A}.jsonl", b'{"a":1}\n', mtime=1_900_000_001)
    _plant(run, PROJECT, f"{SESSION_B}.jsonl", b'{"b":"\xff"}\n', mtime=1_900_000_000)
    assert launcher.save_sessions(run) == []
    Path(run.result).write_text("{}")
    out = io.StringIO()
    original = launcher.paths
    try:
        launcher.paths = lambda _run_id: run
        with redirect_stdout(out):
            assert launcher.sessions(run.run_id) == 0
    finally:
        launcher.paths = original
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["name"] for line in lines] == [f"{SESSION_B}.jsonl", f"{SESSION_A}.jsonl"]
    assert base64.b64decode(lines[0]["data"]) == b'{"b":"\xff"}\n'
    assert lines[1] == {
        "name": f"{SESSION_A}.jsonl",
        "mtime_ns": 1_900_000_001 * 10**9,
        "data": base64.b64encode(b'{"a":1}\n').decode(),
    }


def test_a_folder_of_many_names_is_looked_at_only_so_far(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "SESSIONS_SCAN_MAX", 5)
    for i in range(10):
        _plant(run, PROJECT, f"junk-{i}", b"")
    notes = launcher.save_sessions(run)
    assert notes == [f"sessions: only the first 5 names in {PROJECT} were looked at"]


def test_notes_are_capped_in_the_record(run: Any) -> None:
    for i in range(30):
        fifo = _projects(run) / PROJECT / f"0a1b2c3d-0000-4000-8000-0000000001{i:02d}.jsonl"
        os.mkfifo(fifo)
        os.chown(fifo, RUN_UID, RUN_UID)
    notes = launcher.save_sessions(run)
    assert len(notes) == launcher.SESSIONS_NOTES_MAX
    assert notes[-1] == "sessions: 11 more notes left out"
    assert set(_saved(run)) == {f"{SESSION_A}.jsonl"}
