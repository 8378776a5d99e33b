"""The `vmsbx` command line, driven in-process: help, exit codes, config errors, laziness.

Every test runs in an empty folder with VMSBX_HOME, VMSBX_CACHE and VMSBX_CONFIG pointing under
tmp_path and every other VMSBX_* variable removed, so neither the real state nor the real user
config is touched. Only verbs that reach no VM are run (status, stop and destroy of absent VMs).
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import vmsbx.cli
from vmsbx.cli.main import VERBS, cli, main

VERB_MODULES = sorted(module for module, _help in VERBS.values())
HEAVY_PACKAGES = ("paramiko", "rich", "fabric", "invoke")


@dataclass
class Env:
    home: Path
    user_config: Path
    project: Path

    @property
    def project_file(self) -> Path:
        return self.project / "vmsbx.toml"


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    for name in list(os.environ):
        if name.startswith("VMSBX_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    user_config = tmp_path / "user" / "config.toml"
    user_config.parent.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("VMSBX_HOME", str(home))
    monkeypatch.setenv("VMSBX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VMSBX_CONFIG", str(user_config))
    monkeypatch.chdir(project)
    return Env(home=home, user_config=user_config, project=project)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    """Run `vmsbx ARGS` through main(), as the console script does, and collect its exit code."""
    try:
        result = main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    else:
        code = result if isinstance(result, int) else 0
    captured = capsys.readouterr()
    return Outcome(code=code, out=captured.out, err=captured.err)


def assert_config_error(outcome: Outcome, *fragments: str) -> None:
    """Exit 2 with one paragraph on stderr that names each fragment, and no traceback."""
    assert outcome.code == 2, outcome
    message = outcome.err.strip()
    assert message.startswith("vmsbx: error: ")
    assert "\n" not in message, f"expected one paragraph, got:\n{message}"
    assert "Traceback" not in outcome.err + outcome.out
    for fragment in fragments:
        assert fragment in message


# --- help -------------------------------------------------------------------------------------


def test_help_lists_every_verb(env: Env) -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    commands = result.output.split("Commands:", 1)[1]
    for verb in ("up", "status", "ssh", "stop", "destroy", "reset", "image", "doctor"):
        assert f"  {verb} " in commands
    for _module, short in VERBS.values():
        assert short in commands


def test_short_help_flag_and_main_exit_zero(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_main(capsys, "-h")
    assert outcome.code == 0
    assert "Commands:" in outcome.out


def test_version(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_main(capsys, "--version")
    assert outcome.code == 0
    assert outcome.out.startswith("vmsbx, version ")


def test_verb_help_reads_like_documentation(env: Env) -> None:
    result = CliRunner().invoke(cli, ["destroy", "--help"])
    assert result.exit_code == 0
    assert "--yes" in result.output
    assert "--name" in result.output


def test_unknown_verb_is_a_usage_error(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_main(capsys, "frobnicate")
    assert outcome.code == 2
    assert "frobnicate" in outcome.err
    assert "Traceback" not in outcome.err


# --- configuration errors: exit 2, one paragraph naming the file and the key --------------------


def test_unknown_key_in_project_file(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.project_file.write_text('[vm]\nmemroy = "4G"\n')
    outcome = run_main(capsys, "stop")
    assert_config_error(outcome, str(env.project_file), "vm.memroy", "vm.memory")


def test_unknown_key_in_user_config(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.user_config.write_text('colour = "blue"\n')
    outcome = run_main(capsys, "destroy", "-y")
    assert_config_error(outcome, str(env.user_config), "colour")


def test_wrong_type(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.user_config.write_text('[vm]\ncpus = "four"\n')
    outcome = run_main(capsys, "stop")
    assert_config_error(outcome, str(env.user_config), "vm.cpus", "wrong type")


def test_negative_memory(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.project_file.write_text('[vm]\nmemory = "-1G"\n')
    outcome = run_main(capsys, "destroy", "-y")
    assert_config_error(outcome, str(env.project_file), "vm.memory", "-1G", "negative")


def test_unknown_provider_name(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.user_config.write_text('[vm]\nprovider = "virtualbox"\n')
    outcome = run_main(capsys, "stop")
    assert_config_error(outcome, str(env.user_config), "vm.provider", "virtualbox", "qemu")


def test_unknown_provider_flag_is_refused_before_anything_runs(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = run_main(capsys, "up", "--provider", "virtualbox")
    assert outcome.code == 2
    assert "virtualbox" in outcome.err
    assert "Traceback" not in outcome.err
    assert not env.home.exists()


def test_project_file_may_not_loosen_the_sandbox(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.project_file.write_text('[sandbox]\nnetwork = "open"\n')
    outcome = run_main(capsys, "stop")
    assert_config_error(outcome, str(env.project_file), "sandbox.network", "loosen", str(env.user_config))


def test_project_file_may_not_choose_the_provider(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.project_file.write_text('[vm]\nprovider = "qemu"\n')
    outcome = run_main(capsys, "destroy", "-y")
    assert_config_error(outcome, str(env.project_file), "vm.provider", "not allowed in a project file")


def test_invalid_toml(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.project_file.write_text("[vm\n")
    outcome = run_main(capsys, "stop")
    assert_config_error(outcome, str(env.project_file), "not valid TOML")


def test_unknown_vmsbx_environment_variable(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMSBX_VM_MEMROY", "4G")
    outcome = run_main(capsys, "stop")
    assert_config_error(outcome, "VMSBX_VM_MEMROY")


@pytest.mark.parametrize("name", ["../x", "Default", "a/b", "-x", "x" * 41])
def test_invalid_vm_name(env: Env, capsys: pytest.CaptureFixture[str], name: str) -> None:
    outcome = run_main(capsys, "stop", "--name", name)
    assert outcome.code == 2
    assert "invalid VM name" in outcome.err
    assert "Traceback" not in outcome.err
    assert not env.home.exists()


def test_invalid_vm_name_for_destroy_touches_nothing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    outside = env.home / "x"
    outside.mkdir(parents=True)
    outcome = run_main(capsys, "destroy", "-y", "--name", "../x")
    assert outcome.code == 2
    assert outside.is_dir()


# --- verbs on an empty home ----------------------------------------------------------------------


def test_status_json_on_empty_home_is_an_empty_list(env: Env) -> None:
    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "[]"


def test_status_text_on_empty_home(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_main(capsys, "status")
    assert outcome.code == 0
    assert "no VMs yet" in outcome.out


def test_destroy_of_an_absent_vm_succeeds(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_main(capsys, "destroy", "-y", "--name", "nothere")
    assert outcome.code == 0, outcome
    assert "nothere: already gone" in outcome.out


def test_stop_of_an_absent_vm_succeeds(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_main(capsys, "stop", "--name", "nothere")
    assert outcome.code == 0, outcome
    assert "nothere" in outcome.out
    assert "nothing to stop" in outcome.out


def test_stop_and_destroy_use_vm_name_from_config(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.user_config.write_text('[vm]\nname = "from-config"\n')
    assert "from-config: already gone" in run_main(capsys, "destroy", "-y").out
    assert "from-config: does not exist" in run_main(capsys, "stop").out


# --- fast start: no heavy import on the way to --help ---------------------------------------------


def _imported_names(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_main_module_source_imports_no_heavy_package() -> None:
    source = Path(vmsbx.cli.__file__).parent / "main.py"
    imported = _imported_names(source)
    for heavy in (*HEAVY_PACKAGES, "pydantic"):
        assert not any(name == heavy or name.startswith(heavy + ".") for name in imported), heavy
    # Verb modules are named as strings in VERBS and imported on demand, never at the top.
    assert not imported & set(VERB_MODULES)


def _forget(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> None:
    """Drop modules from sys.modules (and their package attribute) until the test ends."""
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
        package, _, attribute = name.rpartition(".")
        if package in sys.modules and hasattr(sys.modules[package], attribute):
            monkeypatch.delattr(sys.modules[package], attribute)


def test_listing_and_help_import_no_verb_module(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _forget(monkeypatch, [*VERB_MODULES, "vmsbx.cli.common"])
    ctx = cli.make_context("vmsbx", ["--help"], resilient_parsing=True)
    assert cli.list_commands(ctx) == list(VERBS)
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    loaded = [name for name in (*VERB_MODULES, "vmsbx.cli.common") if name in sys.modules]
    assert loaded == []


def test_a_fresh_import_of_main_and_help_load_no_heavy_package(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    heavy = [name for name in sys.modules if name.split(".")[0] in HEAVY_PACKAGES]
    _forget(monkeypatch, [*heavy, *VERB_MODULES, "vmsbx.cli.common", "vmsbx.cli.main"])
    fresh = importlib.import_module("vmsbx.cli.main")
    assert fresh.main(["--help"]) == 0
    assert "Commands:" in capsys.readouterr().out
    leaked = [name for name in sys.modules if name.split(".")[0] in HEAVY_PACKAGES]
    assert leaked == []
    assert [name for name in VERB_MODULES if name in sys.modules] == []


def test_getting_a_verb_imports_only_that_verb(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _forget(monkeypatch, VERB_MODULES)
    ctx = cli.make_context("vmsbx", ["--help"], resilient_parsing=True)
    command = cli.get_command(ctx, "status")
    assert command is not None
    assert command.name == "status"
    assert [name for name in VERB_MODULES if name in sys.modules] == ["vmsbx.cli.status"]
    assert cli.get_command(ctx, "nope") is None
