"""Bad and hostile input through the real command line, in-process: every case ends in literal
handling or one clear error with exit code 2 — no traceback, nothing written outside vmsbx's
state and the project.

(No VM here: these are refused before anything reaches one. The cases that need the guest —
literal arguments and odd project paths in a real run — are in tests/vm/test_bad_input_vm.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsbx.cli.main import main
from vmsbx.sync.manifest import scan
from vmsbx.sync.rules import exclude_rules


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def box(vmsbx_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with an odd name, and vmsbx's state, config and cache under tmp_path."""
    project = vmsbx_env / "my project ü ☃\nline two"
    project.mkdir()
    monkeypatch.chdir(project)
    return project


def vmsbx(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.err


def assert_refused(box: Path, capsys: pytest.CaptureFixture[str], *args: str, says: str = "") -> str:
    outside = box.parent
    before = _tree(outside)
    code, err = vmsbx(capsys, *args)
    assert code == 2, (args, code, err)
    assert err.startswith(("vmsbx: error: ", "Usage:", "Error:")), err
    assert says in err, err
    # Nothing written anywhere but vmsbx's state (which a refused command need not even create).
    assert {p for p in _tree(outside) - before if not p.startswith("home")} == set()
    return err


HOSTILE_CONFIG = [
    ('[sandbox]\nmemory_max = "99999999999999999999999T"\n', "sandbox.memory_max"),
    ('[sandbox]\nmemory_max = "-1G"\n', "sandbox.memory_max"),
    ("[sandbox]\ntasks_max = -5\n", "sandbox.tasks_max"),
    ("[sandbox]\ntasks_max = 100000000000000000000000000000\n", "sandbox.tasks_max"),
    ('[sandbox]\ntimeout = "-5s"\n', "sandbox.timeout"),
    ("[sandbox]\ncpus = -1\n", "sandbox.cpus"),
    ("[sandbox]\ncpus = inf\n", "sandbox.cpus"),
    ("[sandbox]\nopen_files = 0\n", "sandbox.open_files"),
    ('[sandbox]\nworkspace_size = "1e400"\n', "sandbox.workspace_size"),
    ('[sandbox]\nnetwork = "open; rm -rf /"\n', "sandbox.network"),
    ('[vm]\nname = "../../etc"\n', "vm.name"),
    ('[vm]\nname = "a/b"\n', "vm.name"),
    ('[vm]\nname = "x\\u001b[2J"\n', "vm.name"),
    ("[sandbox]\nno_such_key = 1\n", "no_such_key"),
    ('[vm]\nmemory = "' + "9" * 5000 + '"\n', "vm.memory"),
]


@pytest.mark.parametrize(("toml", "names"), HOSTILE_CONFIG)
def test_hostile_project_config_is_refused_by_name(
    box: Path, capsys: pytest.CaptureFixture[str], toml: str, names: str
) -> None:
    (box / "vmsbx.toml").write_text(toml)
    err = assert_refused(box, capsys, "run", "--", "true", says=names)
    assert "\x1b" not in err
    assert len(err) < 2000, "a huge value must not be echoed whole"


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc", "..", "x\ny", "UPPER", "-dash", "a" * 41, ""])
@pytest.mark.parametrize("verb", ["up", "run", "verify", "ssh", "destroy"])
def test_vm_names_with_paths_are_refused(
    box: Path, capsys: pytest.CaptureFixture[str], verb: str, name: str
) -> None:
    extra = ["--", "true"] if verb in ("run", "ssh") else ["-y"] if verb == "destroy" else []
    assert_refused(box, capsys, verb, "--name", name, *extra)


@pytest.mark.parametrize(
    "run_id",
    ["../../etc/passwd", "/etc/passwd", "0123456789ab/..", "..", "abc/../def", "0123456789AB", "x" * 200],
)
@pytest.mark.parametrize("verb", [["attach"], ["logs"], ["logs", "-f"], ["stop-run"]])
def test_run_ids_with_paths_are_refused(
    box: Path, capsys: pytest.CaptureFixture[str], verb: list[str], run_id: str
) -> None:
    assert_refused(box, capsys, *verb, run_id, says="run id")


def test_a_nul_in_a_run_argument_is_refused(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(box, capsys, "run", "--", "echo", "a\0b", says="NUL")
    assert_refused(box, capsys, "run", "--env", "A=x\0y", "--", "true", says="--env")
    assert_refused(box, capsys, "run", "--env", "A B=1", "--", "true", says="--env")


def test_negative_and_huge_run_flags_are_refused(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(box, capsys, "run", "--memory", "-1G", "--", "true", says="memory")
    assert_refused(box, capsys, "run", "--tasks", "-1", "--", "true", says="tasks")
    assert_refused(box, capsys, "run", "--timeout", "99999999999999999999999h", "--", "true", says="timeout")
    assert_refused(box, capsys, "run", "--cpus", "nan", "--", "true", says="cpus")


def test_an_odd_project_path_is_read_literally(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (box / "vmsbx.toml").write_text('[sandbox]\nmemory_max = "1G"\n')
    code, err = vmsbx(capsys, "status", "--json")
    assert code == 0, err
    # A bad key there is reported against that very path.
    (box / "vmsbx.toml").write_text("[sandbox]\nbogus = 1\n")
    err = assert_refused(box, capsys, "run", "--", "true", says="bogus")
    assert "my project ü ☃" in err


def test_links_in_the_workspace_stay_links_and_lead_nowhere(box: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside-secret"
    secret.write_text("host secret\n")
    (box / "to-secret").symlink_to(secret)
    (box / "to-outside-dir").symlink_to(tmp_path)
    (box / "real.txt").write_text("project file\n")
    found = scan(box, exclude_rules(None, ())).manifest.by_path()
    assert found["to-secret"].kind == "symlink" and found["to-secret"].target == str(secret)
    assert found["to-outside-dir"].kind == "symlink"
    assert not any(name.startswith("to-outside-dir/") for name in found)
    # Only the project's own file was read: the link's target never was.
    assert {entry.path for entry in found.values() if entry.kind == "file"} == {"real.txt"}


def test_a_workspace_that_is_a_symlink_is_copied_from_its_target_only(box: Path, tmp_path: Path) -> None:
    link = tmp_path / "linked-project"
    link.symlink_to(box)
    (box / "a.txt").write_text("a\n")
    # vmsbx resolves the project folder once (lifecycle.start), then never follows a link in it.
    assert sorted(scan(link.resolve(), exclude_rules(None, ())).manifest.by_path()) == ["a.txt"]
