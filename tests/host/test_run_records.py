"""A run's record on the host, written by the real record-keeping code (lifecycle's attach and
finish, the workspace collect, the relay's event log) with a real wsync.py for the workspace.
The guest launcher's own verbs (attach, ended, release) are played by `LocalGuest`: what they
return is plain data, and nothing of the code under test is replaced.

Pinned here: the record tree is private whatever the umask (the conversation, the stream and
the changes are the user's alone), and a changeset over the collect cap stays in the guest,
its mirror kept out of later syncs until `vmsbx discard`.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from sync_world import WSYNC, StreamingExec, sync_in

from vmsbx.agent import services
from vmsbx.config.models import SandboxSettings
from vmsbx.runs import lifecycle, review, workspace
from vmsbx.runs import record as records
from vmsbx.runs.guestctl import GUEST, Ended
from vmsbx.runs.outcome import GuestResult
from vmsbx.runs.record import RunRecord
from vmsbx.sync.delta import plan_sync
from vmsbx.sync.manifest import Manifest, scan
from vmsbx.sync.rules import exclude_rules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="wsync.py runs as root in the guest")
LOCAL = (sys.executable, str(WSYNC))
GiB = 1 << 30


class LocalChannel(StreamingExec):
    """The guest's `wsync run ID VERB @ws …` as the real wsync.py on a local folder."""

    def __init__(self, folder: Path, refuse: tuple[str, ...] = ()) -> None:
        super().__init__(refuse)
        self.folder = folder

    def exec(
        self, argv: list[str], *, stdin: BinaryIO | bytes | None, stdout: BinaryIO, stderr: BinaryIO
    ) -> int:
        head = [*GUEST, "wsync", "run"]
        assert argv[: len(head)] == head and argv[len(head) + 2] == "@ws", argv
        verb, options = argv[len(head) + 1], argv[len(head) + 3 :]
        return super().exec(
            [*LOCAL, verb, str(self.folder), *options], stdin=stdin, stdout=stdout, stderr=stderr
        )

    def call(self, request: dict[str, object]) -> dict[str, object]:
        raise AssertionError(f"no agent call expected: {request}")


class LocalGuest:
    """The launcher verbs lifecycle calls, answered the way the guest answers them."""

    def __init__(self, folder: Path, refuse: tuple[str, ...] = ()) -> None:
        self.client = LocalChannel(folder, refuse)
        self.released: list[str] = []
        self.later: list[bool] = []  # per release: left to the host agent (the end of a run)

    def attach(self, run_id: str, *, stdin: object, stdout: BinaryIO, stderr: BinaryIO, **_: object) -> int:
        stdout.write(b'{"type":"assistant","message":{"content":[{"type":"text","text":"secret plan"}]}}\n')
        return 0

    def ended(self, run_id: str, invocation_id: str, after: str | None, **kw: object) -> Ended:
        spool = kw["spool"]
        assert hasattr(spool, "write")
        spool.write(b'{"MESSAGE":"the conversation"}\n')
        return Ended(GuestResult(service_result="success", exit_code="exited", exit_status="0"), "c1", None)

    def release(self, run_id: str, *, later: bool = False) -> None:
        self.released.append(run_id)
        self.later.append(later)

    def stop(self, run_id: str) -> None:
        raise AssertionError("no stop expected")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("VMSBX_HOME", str(tmp_path / "home"))
    old = os.umask(0o022)
    try:
        yield tmp_path / "home"
    finally:
        os.umask(old)


def _started_run(tmp_path: Path, ws: Path, *, collect_max: int | None = None) -> RunRecord:
    """A run as `start` leaves it: its record, its base manifest, its synced workspace."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("private notes\n")
    ws.mkdir()
    rules = exclude_rules(None, ())
    sync_in(StreamingExec(), project, str(ws), rules, owner=(0, 0), wsync=LOCAL)
    host = scan(project, rules)
    sync = workspace.SyncIn(
        key="0123456789abcdef", scan=host, plan=plan_sync(host.manifest, Manifest()), rules=rules
    )
    record = RunRecord(
        id="a1b2c3d4e5f6",
        vm="default",
        sandbox="systemd",
        command=("claude", "-p", "hi"),
        tty=False,
        policy=SandboxSettings(),
        unit="vmsbx-run-a1b2c3d4e5f6.service",
        invocation_id="0" * 32,
        state="running",
        started_at=records.now(),
        project=str(project),
        workspace_key=sync.key,
        changes="pending",
        **({"collect_max": collect_max} if collect_max else {}),
    )
    records.save(record)
    workspace.save_base(records.run_dir(record.id), sync, [])
    return record


def test_a_run_record_is_private_whatever_the_umask(home: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    record = _started_run(tmp_path, ws)
    (ws / "new.txt").write_text("the agent's work\n")
    guest = LocalGuest(ws)
    services._record_event(record.id, {"event": "api_request", "tokens": 3})
    assert lifecycle.attach(record, guest, stdin=None, view=True) == 0  # type: ignore[arg-type]
    # The collected run's release is left to the host agent: the CLI does not wait for it.
    assert (guest.released, guest.later) == ([record.id], [True])
    run_dir = records.run_dir(record.id)
    made = {path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*")}
    assert {"run.json", "stream.jsonl", "journal.jsonl", "relay.jsonl", "sync.json"} <= made
    assert {"changes/changeset.json", "changes/base.json", "changes/blobs"} <= made
    assert any(name.startswith("changes/blobs/") for name in made)
    loose = [
        f"{path.relative_to(home)} {stat.filemode(path.stat().st_mode)}"
        for path in [records.runs_root(), *sorted(records.runs_root().rglob("*"))]
        if path.stat().st_mode & 0o077
    ]
    assert loose == [], "readable by others: " + ", ".join(loose)


def test_a_changeset_over_the_cap_stays_held_in_the_guest(home: Path, tmp_path: Path) -> None:
    """Refused from the manifest (no pack, nothing under changes/ but the base), the guest's
    hold is kept (no release), later runs of the project take another mirror, and discard
    gives it back."""
    ws = tmp_path / "ws"
    record = _started_run(tmp_path, ws, collect_max=64 * 1024 * 1024)
    with (ws / "big.bin").open("wb") as handle:
        handle.truncate(3 * GiB)
    guest = LocalGuest(ws, refuse=("pack",))
    assert lifecycle.finish(record, guest, quiet=True) == 0  # type: ignore[arg-type]
    stored = records.load(record.id)
    assert stored.changes == "held" and guest.released == []
    assert "big.bin" in (stored.reason or "") and "/var/lib/vmsbx/projects/0123456789abcdef/mnt" in (
        stored.reason or ""
    )
    changes = records.run_dir(record.id) / "changes"
    assert sorted(path.name for path in changes.iterdir()) == ["base-commits.json", "base.json", "rules.json"]
    assert (ws / "big.bin").stat().st_size == 3 * GiB
    project = Path(stored.project or "")
    busy = lifecycle._finish_earlier_runs(guest, "default", project)  # type: ignore[arg-type]
    assert busy == {"0123456789abcdef"}
    review.discard(stored, release=lambda: guest.release(stored.id))
    assert guest.released == [record.id] and records.load(record.id).changes == "discarded"
    assert guest.later == [False]  # `vmsbx discard` frees it before it returns
    assert lifecycle._finish_earlier_runs(guest, "default", project) == set()  # type: ignore[arg-type]


def test_all_of_vmsbx_home_is_private_whatever_the_umask(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Besides the runs: a VM's folder and record (the ssh provider's create, which needs no
    VM), the log file, the host-side sync hash cache."""
    import logging

    from vmsbx import logsetup
    from vmsbx.config.models import VMSettings
    from vmsbx.paths import ensure_private_dir, vm_dir
    from vmsbx.providers.ssh import SSHHostProvider

    key = tmp_path / "id_test"
    key.write_text("not a real key\n")
    settings = VMSettings(
        provider="ssh",
        ssh_host="192.0.2.1",
        ssh_key=str(key),
        ssh_host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    )
    SSHHostProvider(settings).create("perms")
    monkeypatch.setattr(logsetup, "_configured", [])
    root = logging.getLogger("vmsbx")
    saved = list(root.handlers)
    try:
        assert logsetup.setup(0) is not None
        logging.getLogger("vmsbx.test").info("hello")
    finally:
        for handler in root.handlers[len(saved) :]:
            root.removeHandler(handler)
            handler.close()
    project = tmp_path / "project"
    project.mkdir()
    (project / "a.txt").write_text("a\n")
    scan(
        project,
        exclude_rules(None, ()),
        cache_file=ensure_private_dir(vm_dir("perms") / "sync-cache") / "k.json",
    )
    made = {path.relative_to(home).as_posix() for path in home.rglob("*")}
    assert {"vms/perms/vm.json", "logs/vmsbx.log", "vms/perms/sync-cache/k.json"} <= made
    loose = [
        f"{path.relative_to(home)} {stat.filemode(path.stat().st_mode)}"
        for path in [home, *sorted(home.rglob("*"))]
        if path.stat().st_mode & 0o077
    ]
    assert loose == [], "readable by others: " + ", ".join(loose)


def test_a_record_that_never_started_is_forgotten_whole(home: Path, tmp_path: Path) -> None:
    # A launch the guest refused and the host tries again under a new id (a jail uid clash, a
    # mirror that is not the one planned against): the first id's folder already holds the
    # sync's base and summary, and must go with its run.json.
    record = _started_run(tmp_path, tmp_path / "ws")
    assert (records.run_dir(record.id) / "changes" / "base.json").is_file()
    records.discard(record.id)
    assert not records.run_dir(record.id).exists()
    assert record.id not in {run.id for run in records.all_runs()}
