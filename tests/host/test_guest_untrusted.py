"""Root's side of a run never follows what the run planted (issue 16.8), on real files.

The guest launcher (provision/guest/launcher.py, as root) saves the session holder's transcript
from the run's tmpfs at the run's end and connects to the holder's socket there. Everything in
that folder is the run's: these tests plant what a run could (symlinks, a FIFO, a device node,
a sparse file of a terabyte, a file or socket of another user, a swapped folder) in a real
directory laid out like the guest's, and check that root refuses each with a reason, never
blocks, never reads past its cap, and still saves and connects to the real thing.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from guest_code import GUEST, load_guest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the launcher runs as root in the guest"),
    pytest.mark.usefixtures("never_blocks"),
]

RUN_UID = 61234  # a DynamicUser= id: what the run's files belong to
OTHER_UID = 61235


launcher = load_guest("launcher")


@pytest.fixture
def run(tmp_path: Path) -> Any:
    """A run's folders as the guest has them: root-only run folder, its tmpfs mount point
    (root's, 1777), the holder's folder and transcript (the run's), the workspace (the run's)."""
    run_dir = tmp_path / "runs" / "abcdefabcdef"
    tmp = run_dir / "tmp"
    holder = tmp / ".vmsbx"
    workspace = tmp_path / "private" / "vmsbx-ws-abcdefabcdef"
    for folder in (tmp, workspace):
        folder.mkdir(parents=True)
    run_dir.chmod(0o700)
    tmp.chmod(0o1777)
    holder.mkdir(mode=0o700)
    (holder / "transcript").write_bytes(b"\x01\x00\x00\x00\x03out")
    for path in (holder, holder / "transcript", workspace):
        os.chown(path, RUN_UID, RUN_UID)

    class _Paths(launcher.RunPaths):  # type: ignore[name-defined,misc]
        """The contract's paths of the run, under tmp_path instead of /var/lib."""

        __slots__ = ()
        run_dir = property(lambda _self: str(tmp_path / "runs" / _self.run_id))
        workspace_mount = property(lambda _self: str(tmp_path / "private" / _self.state_name))

    return _Paths("abcdefabcdef")


def _holder(run: Any) -> Path:
    return Path(run.tmp_dir) / ".vmsbx"


def _plant_transcript(run: Any, how: str, other: Path) -> None:
    target = _holder(run) / "transcript"
    target.unlink()
    if how == "dev-zero":
        target.symlink_to("/dev/zero")
    elif how == "other-file":
        target.symlink_to(other)
    elif how == "fifo":
        os.mkfifo(target)
    elif how == "device":
        os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers
    elif how == "someone-elses":
        os.link(other, target)  # a hard link to a file the run does not own
    elif how == "directory":
        target.mkdir()
    if how != "someone-elses":
        os.lchown(target, RUN_UID, RUN_UID)


def test_the_runs_own_transcript_is_saved_whole(run: Any) -> None:
    assert launcher.save_transcript(run) is None
    saved = Path(run.transcript)
    assert saved.read_bytes() == b"\x01\x00\x00\x00\x03out"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("dev-zero", "transcript is a symbolic link, not a file"),
        ("other-file", "transcript is a symbolic link, not a file"),
        ("fifo", "transcript is a FIFO, not a file"),
        ("device", "transcript is a character device, not a file"),
        ("directory", "transcript is a directory, not a file"),
        ("someone-elses", f"transcript belongs to uid 0, not to the run's user ({RUN_UID})"),
    ],
)
def test_a_planted_transcript_is_refused_with_its_reason(
    run: Any, tmp_path: Path, how: str, said: str
) -> None:
    other = tmp_path / "another-projects-secret"
    other.write_text("secret of another project\n")
    _plant_transcript(run, how, other)
    assert launcher.save_transcript(run) == f"transcript not saved: {said}"
    assert not Path(run.transcript).exists()
    assert other.read_text() == "secret of another project\n"


def test_a_swapped_holder_folder_is_refused(run: Any, tmp_path: Path) -> None:
    elsewhere = tmp_path / "another-run"
    elsewhere.mkdir()
    (elsewhere / "transcript").write_text("another run's transcript")
    holder = _holder(run)
    holder.rename(holder.with_name(".vmsbx-old"))
    holder.symlink_to(elsewhere)
    os.lchown(holder, RUN_UID, RUN_UID)
    assert launcher.save_transcript(run) == "transcript not saved: .vmsbx is a symbolic link, not a directory"
    assert not Path(run.transcript).exists()


def test_a_holder_folder_of_another_user_is_refused(run: Any) -> None:
    os.chown(_holder(run), OTHER_UID, OTHER_UID)
    note = launcher.save_transcript(run)
    assert note == (
        f"transcript not saved: .vmsbx belongs to uid {OTHER_UID}, not to the run's user ({RUN_UID})"
    )


def test_without_a_known_run_user_nothing_is_read(run: Any) -> None:
    os.chown(run.workspace_mount, 0, 0)  # never handed over: the run's user is not known
    assert launcher.save_transcript(run) == (
        "transcript not saved: the run's user is unknown: its workspace was never handed to it"
    )


def test_a_sparse_terabyte_is_cut_at_the_cap(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "TRANSCRIPT_CAP", 3 << 20)
    with open(_holder(run) / "transcript", "r+b") as handle:
        handle.truncate(1 << 40)
    note = launcher.save_transcript(run)
    assert note == f"transcript cut at {3 << 20} bytes (it was {1 << 40})"
    assert Path(run.transcript).stat().st_size == 3 << 20


def test_the_real_cap_keeps_the_holders_own_limit() -> None:
    holder = (GUEST / "session_holder.py").read_text()
    assert "TRANSCRIPT_MAX = 256 * 1024 * 1024" in holder
    assert launcher.TRANSCRIPT_CAP > 256 * 1024 * 1024


def test_a_missing_transcript_is_said_so(run: Any) -> None:
    (_holder(run) / "transcript").unlink()
    assert launcher.save_transcript(run) == "transcript not saved: the run left none"


# -- the holder's socket ---------------------------------------------------------------------


def _listen(path: Path, uid: int) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chown(path, uid, uid)
    server.listen(1)
    return server


def test_attach_connects_to_the_runs_own_socket(run: Any) -> None:
    with _listen(_holder(run) / "holder.sock", RUN_UID) as server:
        client = launcher.connect_holder(run)
        with client, server.accept()[0] as served:
            client.sendall(b"{}\n")
            assert served.recv(16) == b"{}\n"


def test_attach_never_follows_a_link_to_another_socket(run: Any, tmp_path: Path) -> None:
    with _listen(tmp_path / "victim.sock", RUN_UID) as victim:
        victim.setblocking(False)
        link = _holder(run) / "holder.sock"
        link.symlink_to(tmp_path / "victim.sock")
        os.lchown(link, RUN_UID, RUN_UID)
        with pytest.raises(launcher.Untrusted, match=r"holder\.sock is a symbolic link, not a socket"):
            launcher.connect_holder(run)
        with pytest.raises(BlockingIOError):
            victim.accept()  # nobody connected


def test_attach_refuses_a_socket_of_another_user(run: Any) -> None:
    with (
        _listen(_holder(run) / "holder.sock", OTHER_UID),
        pytest.raises(launcher.Untrusted, match=f"belongs to uid {OTHER_UID}"),
    ):
        launcher.connect_holder(run)


def test_attach_refuses_a_file_where_the_socket_should_be(run: Any) -> None:
    path = _holder(run) / "holder.sock"
    path.write_text("")
    os.chown(path, RUN_UID, RUN_UID)
    with pytest.raises(launcher.Untrusted, match=r"holder\.sock is a file, not a socket"):
        launcher.connect_holder(run)
