"""The workspace on the real guest: the mirror, the changes a run makes, and applying them.

Plain commands stand in for the agent here (what writes the files does not matter to sync,
review and apply); tests/vm/test_agent.py runs the real Claude Code through the same path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from vmcli import Cli

from vmsbx.contract import GUESTD_SOCKET
from vmsbx.sandbox.workdir import run_workdir

pytestmark = pytest.mark.vm


def _project(cli: Cli, tmp_path: Path, *, git: bool = False) -> Cli:
    project = tmp_path / "my project ü"
    project.mkdir()
    (project / "README.md").write_text("hello\n")
    (project / "src").mkdir()
    (project / "src" / "app.py").write_text("print('hi')\n")
    (project / ".env").write_text("API_TOKEN=do-not-sync-me\n")
    (project / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n")
    if git:
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        subprocess.run(["git", "-C", str(project), "add", "README.md", "src"], check=True)
        subprocess.run(
            ["git", "-C", str(project), "-c", "user.email=u@x", "-c", "user.name=u", "commit", "-qm", "init"],
            check=True,
        )
    return Cli(env=cli.env, cwd=project)


def _last_run(cli: Cli) -> dict[str, object]:
    runs = cli.json("runs")
    assert isinstance(runs, list) and runs
    newest: dict[str, object] = max(runs, key=lambda run: str(run["started_at"]))
    return newest


def test_sync_apply_and_secrets(cli: Cli, default_vm: dict[str, object], tmp_path: Path) -> None:
    project = _project(cli, tmp_path)
    script = (
        "test ! -e .env && test ! -e id_ed25519 && cat README.md src/app.py"
        " && echo new > new.txt && echo more >> README.md && rm src/app.py && chmod 755 README.md"
        # setuid is refused inside the sandbox (RestrictSUIDSGID=yes):
        " && ! chmod 4755 new.txt 2>/dev/null"
    )
    done = project.ok("run", "--", "sh", "-c", script)
    assert b"hello" in done.stdout and b"print('hi')" in done.stdout
    stderr = done.stderr.decode()
    assert ".env" in stderr and "id_ed25519" in stderr  # the user is told what stayed behind
    assert "+ new.txt" in stderr and "~ README.md" in stderr and "- src/app.py" in stderr
    # Nothing reached the project yet.
    assert not (project.cwd / "new.txt").exists() and (project.cwd / "src" / "app.py").exists()
    run_id = str(_last_run(project)["id"])
    diff = project.ok("diff", run_id).stdout.decode()
    assert "+new" in diff and "+more" in diff
    project.ok("apply", "-y", run_id)
    assert (project.cwd / "new.txt").read_text() == "new\n"
    assert (project.cwd / "README.md").read_text() == "hello\nmore\n"
    assert not (project.cwd / "src" / "app.py").exists()
    assert (project.cwd / "README.md").stat().st_mode & 0o7777 == 0o755  # the mode change came too
    assert (project.cwd / ".env").read_text() == "API_TOKEN=do-not-sync-me\n"
    # Applying twice is refused; nothing changes.
    assert project.run("apply", "-y", run_id).returncode == 2


def test_discarded_changes_are_gone_at_the_next_run(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path
) -> None:
    project = _project(cli, tmp_path)
    project.ok("run", "--", "sh", "-c", "echo junk > junk.txt && echo edit >> README.md")
    project.ok("discard", "-y", str(_last_run(project)["id"]))
    again = project.ok("run", "--", "sh", "-c", "ls -a; cat README.md")
    assert b"junk.txt" not in again.stdout
    assert again.stdout.count(b"edit") == 0
    assert "changed nothing" in again.stderr.decode()


_KEPT = "/var/lib/vmsbx/projects/$1"
_PLANT = f'rm "{_KEPT}/mirror-stamp" && echo planted > "{_KEPT}/mnt/planted.txt"'


def test_a_sync_planned_without_asking_is_refused_when_the_mirror_changed(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path
) -> None:
    # After a run the host keeps the mirror's manifest as that run's end listed it, and plans
    # the next sync against it without a guest call; the launcher takes such a plan only if the
    # mirror's stamp is that listing's digest. Here the mirror changed behind vmsbx's back (as
    # a guest reboot remounts it): the launch is refused, the host asks the guest and plans
    # again, and the run sees exactly the host's project.
    project = _project(cli, tmp_path)
    project.ok("run", "--", "true")
    key = str(_last_run(project)["workspace_key"])
    kept = project.home / "vms" / "default" / "sync-cache" / f"{key}.mirror.json"
    assert kept.is_file(), "the run's end listing was kept"
    project.ok("ssh", "--", "sh", "-c", _PLANT, "sh", key)
    again = project.ok("run", "--", "sh", "-c", "ls -a")
    assert b"planted.txt" not in again.stdout and b"README.md" in again.stdout, again.stdout
    assert kept.is_file(), "the second run's end listing is kept in turn"


def test_a_rewrite_that_puts_the_old_mtime_back_still_comes_back(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path
) -> None:
    # The guest trusts its hash cache for files whose only change since the launcher checked it
    # is systemd's chown at the run's start (their ctime predates the unit's ExecStartPre stamp).
    # An agent that rewrites a file to the same size and puts back its exact mtime (to the
    # nanosecond) must not slip through that: its ctime is after the stamp. Two runs, so both
    # the files the sync wrote and the files a collect hashed are in the cache.
    project = _project(cli, tmp_path)
    assert "changed nothing" in project.ok("run", "--", "true").stderr.decode()
    script = "cp -p README.md /tmp/ref && printf 'HELLO\\n' > README.md && touch -r /tmp/ref README.md"
    done = project.ok("run", "--", "sh", "-c", script + " && stat -c '%s %y' README.md /tmp/ref")
    same, ref = done.stdout.decode().splitlines()
    assert same == ref  # size and mtime exactly as before the rewrite
    assert "~ README.md" in done.stderr.decode()
    run = _last_run(project)
    assert "+HELLO" in project.ok("diff", str(run["id"])).stdout.decode()
    # The stamp's other job: it carries the invocation ID vmsbx recorded (the launcher reads it
    # instead of asking systemctl), so the run's journal is selected by the right invocation.
    stamp = project.ok("ssh", "--", "cat", f"/var/lib/vmsbx/runs/{run['id']}/started").stdout.decode()
    assert stamp.strip() == run["invocation_id"]


def test_a_run_makes_these_guest_calls_and_no_more(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path
) -> None:
    # The sequence of guest calls is the run overhead, so it is pinned here. A headless run's
    # output, verdict, journal and workspace manifest come back in one `follow` call (no
    # `attach`, `ended` or `wsync run … manifest` of their own); nothing changed, so no `pack`.
    # Every one is taken by the resident guest agent: none starts an SSH session, a shell or a
    # Python in the guest (0.5-1.5 s each under TCG). The ended run's release is the host
    # agent's, after the CLI has returned.
    project = _project(cli, tmp_path)
    project.ok("run", "--", "true")  # the first sync and the policy's score happen here
    trace = Path(__file__).resolve().parents[2] / "benchmarks" / "trace_calls.py"
    done = subprocess.run(
        [sys.executable, str(trace), "run", "--", "true"],
        env=project.env, cwd=project.cwd, capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    trace_lines = done.stderr.decode().splitlines()
    lines = [line for line in trace_lines if line.startswith("trace:") and " in " not in line]
    calls = [" ".join(line.split()[3:5]) for line in lines]
    # No `wsync project … manifest` either: the sync is planned against the manifest the last
    # run's end listed (test_a_sync_planned_without_asking_is_refused_when_the_mirror_changed).
    assert calls == [
        "agent run_register", "guest launch", "guest follow", "agent run_unregister", "agent exec_later",
    ]  # fmt: skip
    carried = [line.rsplit("via ", 1)[-1] for line in lines if " guest " in line]
    assert carried == ["guestd"] * 2, lines
    assert "changed nothing" in done.stderr.decode()
    # The release did happen, after the CLI had gone: the run's tmpfs and its hold are freed.
    run_id, key = (str(_last_run(project)[field]) for field in ("id", "workspace_key"))
    freed = project.ok("ssh", "--", "sh", "-c", _FREED, "sh", run_id, key)
    assert freed.stdout.decode().split() == ["freed"], freed.stdout


_FREED = """
for _ in $(seq 600); do
    if ! mountpoint -q "/var/lib/vmsbx/runs/$1/tmp" && [ ! -e "/var/lib/vmsbx/projects/$2/owner" ]; then
        echo freed; exit 0
    fi
    sleep 0.1
done
echo held
"""


_CONNECT = """
import socket, sys
probe = socket.socket(socket.AF_UNIX)
try:
    probe.connect(sys.argv[1])
    print("connected")
except OSError as exc:
    print("refused", exc.__class__.__name__)
"""


@pytest.mark.parametrize("mode", ["systemd", "nsjail"])
def test_a_run_cannot_reach_the_guest_agent(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path, mode: str
) -> None:
    # The guest agent runs launcher verbs as root: its socket is root's alone (a 0700
    # directory), and it answers uid 0 only (tests/host/test_guestd.py). A run is never root.
    project = _project(cli, tmp_path)
    done = project.ok("run", "--sandbox", mode, "--", "python3", "-c", _CONNECT, GUESTD_SOCKET)
    assert done.stdout.decode().split()[0] == "refused", done.stdout
    # Control: the path is right, root in the guest (vmsbx ssh) reaches it.
    control = project.ok("ssh", "--", "python3", "-c", _CONNECT, GUESTD_SOCKET)
    assert control.stdout.decode().strip() == "connected"


@pytest.mark.parametrize("mode", ["systemd", "nsjail"])
def test_a_run_sees_its_project_at_the_hosts_own_path(
    cli: Cli, default_vm: dict[str, object], mode: str
) -> None:
    # A top folder of the host's root that the guest does not own (the test's tmp is under
    # /tmp, the fallback's case): the guest makes the mount point, read-only root or not.
    top = Path(tempfile.mkdtemp(prefix="vmsbx-workdir-", dir="/"))
    try:
        project = top / "app"
        project.mkdir()
        (project / "README.md").write_text("hello\n")
        runner = Cli(env=cli.env, cwd=project)
        assert run_workdir(str(project)) == str(project)
        script = 'pwd && cat README.md && echo made > "$PWD/made.txt"'
        done = runner.ok("run", "--sandbox", mode, "--", "sh", "-c", script)
        lines = done.stdout.decode().splitlines()
        assert lines == [str(project), "hello"], lines
        assert "+ made.txt" in done.stderr.decode()
        runner.ok("apply", "-y", str(_last_run(runner)["id"]))
        assert (project / "made.txt").read_text() == "made\n"
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize("mode", ["systemd", "nsjail"])
def test_concurrent_runs_share_the_path_not_the_workspace(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path, mode: str
) -> None:
    project = _project(cli, tmp_path)
    workdir = run_workdir(str(project.cwd.resolve()))
    assert workdir == "/workspace/my-project", workdir  # a space, a ü: the documented fallback
    slow, quick = "pwd; echo A > who; sleep 25; cat who", "pwd; test ! -e who && echo B > who && cat who"
    first = project.ok("run", "--detach", "--sandbox", mode, "--", "sh", "-c", slow, input=b"").stdout
    second = project.ok("run", "--sandbox", mode, "--", "sh", "-c", quick)
    assert second.stdout.decode().splitlines() == [workdir, "B"]
    followed = project.ok("attach", first.decode().strip())
    assert followed.stdout.decode().splitlines() == [workdir, "A"]


def test_each_run_gets_its_own_workspace_cap(cli: Cli, default_vm: dict[str, object], tmp_path: Path) -> None:
    # The project's mirror outlives runs; a run with another cap must still get that cap, and
    # the project's files, whichever way the cap moved.
    project = _project(cli, tmp_path)
    probe = ["--", "sh", "-c", "cat README.md && stat -fc '%b %S' ."]
    sizes = {}
    for cap in ("96M", "48M", "96M"):
        done = project.ok("run", "--workspace-size", cap, *probe)
        readme, fs = done.stdout.decode().splitlines()
        assert readme == "hello"
        blocks, block_size = map(int, fs.split())
        sizes.setdefault(cap, []).append(blocks * block_size)
    for cap, seen in sizes.items():
        limit = int(cap.removesuffix("M")) << 20
        for total in seen:  # the filesystem's own overhead is all that is missing
            assert limit * 0.8 < total <= limit, (cap, seen)
    # Control: the two caps really differ in what the run saw.
    assert max(sizes["48M"]) < min(sizes["96M"]) * 0.6


def test_conflict_keeps_the_host_file(cli: Cli, default_vm: dict[str, object], tmp_path: Path) -> None:
    project = _project(cli, tmp_path)
    run_id = (
        project.ok(
            "run", "--detach", "--", "sh", "-c", "sleep 2; echo agent >> README.md; echo ok > other.txt"
        )
        .stdout.decode()
        .strip()
    )
    (project.cwd / "README.md").write_text("hello\nthe user's own edit\n")
    project.ok("attach", run_id)
    applied = project.run("apply", "-y", run_id)
    assert applied.returncode == 1
    out = applied.stdout.decode()
    assert "conflict" in out and "README.md" in out
    assert (project.cwd / "README.md").read_text() == "hello\nthe user's own edit\n"
    assert (project.cwd / "other.txt").read_text() == "ok\n"


def test_hostile_changes_are_refused_or_held_back(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path
) -> None:
    project = _project(cli, tmp_path, git=True)
    (project.cwd / "vmsbx.toml").write_text('[sandbox]\nnetwork = "none"\n')
    bashrc = tmp_path / "home" / ".bashrc"
    bashrc.parent.mkdir()
    bashrc.write_text("# the user's\n")
    script = (
        f"ln -s {bashrc} evil-link && mkdir -p .git/hooks"
        " && printf '#!/bin/sh\\necho pwned\\n' > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit"
        " && printf '[sandbox]\\nnetwork = \"open\"\\n' > vmsbx.toml"
        " && mkdir -p .github/workflows && echo 'on: push' > .github/workflows/x.yml && echo fine > fine.txt"
    )
    project.ok("run", "--", "sh", "-c", script)
    run_id = str(_last_run(project)["id"])
    applied = project.ok("apply", "-y", run_id).stdout.decode()
    assert "evil-link" in applied and "refused" in applied
    assert not (project.cwd / "evil-link").exists() and not (project.cwd / "evil-link").is_symlink()
    assert bashrc.read_text() == "# the user's\n"
    assert not (project.cwd / ".git" / "hooks" / "pre-commit").exists()
    assert (project.cwd / "vmsbx.toml").read_text() == '[sandbox]\nnetwork = "none"\n'  # held back
    assert not (project.cwd / ".github" / "workflows" / "x.yml").exists()
    assert (project.cwd / "fine.txt").read_text() == "fine\n"
    assert "vmsbx.toml" in applied and "held back" in applied
    # Only with explicit confirmation do the sensitive ones come (the git hook never does).
    project.ok("apply", "-y", "--include-sensitive", run_id)
    assert "open" in (project.cwd / "vmsbx.toml").read_text()
    assert not (project.cwd / ".git" / "hooks" / "pre-commit").exists()


def test_agent_commits_come_back_as_a_branch(cli: Cli, default_vm: dict[str, object], tmp_path: Path) -> None:
    project = _project(cli, tmp_path, git=True)
    script = (
        "echo work > work.txt && git add work.txt"
        " && git -c user.email=agent@vmsbx -c user.name=agent commit -qm 'agent: add work'"
    )
    project.ok("run", "--", "sh", "-c", script)
    run_id = str(_last_run(project)["id"])
    project.ok("apply", "-y", run_id)
    log = subprocess.run(
        ["git", "-C", str(project.cwd), "log", "--format=%s", f"vmsbx/{run_id}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert log.stdout.splitlines()[:2] == ["agent: add work", "init"]
    head = subprocess.run(
        ["git", "-C", str(project.cwd), "log", "--format=%s", "HEAD"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert head.stdout.splitlines() == ["init"]  # the user's branch is untouched
    record = json.loads((cli.home / "runs" / run_id / "run.json").read_text())
    assert record["changes"] == "applied"


def test_commits_that_touch_sensitive_paths_are_shown_and_held_back(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path
) -> None:
    # The attack: commit a CI workflow, then delete it from the work tree so the file changes
    # show nothing. The run summary, diff and show flag it from the bundle the guest made.
    project = _project(cli, tmp_path, git=True)
    script = (
        "mkdir -p .github/workflows && echo 'on: push' > .github/workflows/x.yml && git add .github"
        " && git -c user.email=a@vmsbx -c user.name=a commit -qm \"$(printf 'agent: ci \\033]0;pwned')\""
        " && rm -rf .github"
    )
    done = project.ok("run", "--", "sh", "-c", script)
    summary = done.stderr.decode()
    run_id = str(_last_run(project)["id"])
    assert f"merging vmsbx/{run_id} brings 1 path(s)" in summary
    assert "+ .github/workflows/x.yml  [sensitive]" in summary and "held back" in summary
    diff = project.ok("diff", run_id).stdout.decode()
    assert "agent: ci" in diff and "+on: push" in diff and "\x1b" not in diff
    assert "+ .github/workflows/x.yml  [sensitive]" in diff
    assert ".github/workflows/x.yml  [sensitive]" in project.ok("show", run_id).stdout.decode()
    held = project.ok("apply", "-y", run_id).stdout.decode()
    assert "held back, branch" in held
    branches = ["git", "-C", str(project.cwd), "branch", "--list", f"vmsbx/{run_id}"]
    assert subprocess.run(branches, capture_output=True, text=True, check=True).stdout == ""
    fetched = project.ok("apply", "-y", "--include-sensitive", run_id).stdout.decode()
    assert f"merging vmsbx/{run_id} brings 1 path(s)" in fetched
    assert subprocess.run(branches, capture_output=True, text=True, check=True).stdout.strip()
