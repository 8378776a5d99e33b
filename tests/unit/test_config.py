"""Settings models and layered loading, including the tighten-only rule for ./vmsbx.toml.

No process or socket is opened: every test writes its files under tmp_path and passes an
explicit `env` whose VMSBX_CONFIG points at a file there, so the real user config is never read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from vmsbx.config import (
    LayerKind,
    SandboxSettings,
    Settings,
    VMSettings,
    format_duration,
    format_size,
    load_settings,
    parse_duration,
    parse_size,
    resolve_settings,
)
from vmsbx.config.loader import env_var_name, project_rule_keys
from vmsbx.config.models import GiB, MiB, setting_fields
from vmsbx.errors import ConfigError


@dataclass
class Sandbox:
    """A user config file and a project folder under tmp_path, and a loader bound to them."""

    user_file: Path
    project_dir: Path

    @property
    def project_file(self) -> Path:
        return self.project_dir / "vmsbx.toml"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"VMSBX_CONFIG": str(self.user_file), **(extra or {})}

    def load(
        self,
        *,
        user: str | None = None,
        project: str | None = None,
        env: Mapping[str, str] | None = None,
        flags: Mapping[str, object] | None = None,
    ) -> Settings:
        if user is not None:
            self.user_file.write_text(user, encoding="utf-8")
        if project is not None:
            self.project_file.write_text(project, encoding="utf-8")
        return load_settings(project_dir=self.project_dir, flags=flags, env=self.env(env))

    def error(self, **kwargs: object) -> ConfigError:
        """Load, expect a ConfigError, check its shape, and return it."""
        with pytest.raises(ConfigError) as caught:
            self.load(**kwargs)  # type: ignore[arg-type]
        error = caught.value
        assert error.exit_code == 2
        message = str(error)
        assert "\n" not in message, "an error is one paragraph"
        assert "Traceback" not in message
        return error


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    project_dir = tmp_path / "project"
    project_dir.mkdir()
    return Sandbox(user_file=tmp_path / "user" / "config.toml", project_dir=project_dir)


@pytest.fixture
def user_dir(box: Sandbox) -> Path:
    box.user_file.parent.mkdir()
    return box.user_file.parent


# --- defaults and layering -------------------------------------------------------------------


def test_defaults_when_no_file_variable_or_flag(box: Sandbox) -> None:
    settings = box.load()
    assert settings == Settings()
    assert settings.vm.name == "default"
    assert settings.vm.provider == "auto"
    assert settings.vm.cpus == 2
    assert settings.vm.memory == 4 * GiB
    assert settings.vm.disk == 20 * GiB
    assert settings.vm.image == "bookworm"
    assert settings.vm.accel == "auto"
    assert settings.vm.guest_network == "restricted"
    assert settings.vm.boot_timeout == 300.0
    assert settings.sandbox.mode == "systemd"
    assert settings.sandbox.network == "api"
    assert settings.sandbox.memory_max == 4 * GiB
    assert settings.sandbox.cpus == 2.0
    assert settings.sandbox.tasks_max == 512
    assert settings.sandbox.timeout == 7200.0
    assert settings.sandbox.workspace_size == 10 * GiB
    assert settings.sandbox.tmp_size == 1 * GiB
    assert settings.sandbox.allow_hosts == ()
    assert settings.sandbox.score_threshold == 1.0
    assert settings.agent.credential_command is None
    assert settings.agent.api_upstream == "https://api.anthropic.com"
    assert settings.agent.claude_version == "2.1.332"
    assert settings.extra_host_paths == ()


@pytest.mark.parametrize(
    ("use_project", "use_env", "use_flag", "expected"),
    [
        (False, False, False, "from-user"),
        (True, False, False, "from-project"),
        (True, True, False, "from-env"),
        (True, True, True, "from-flag"),
        (False, False, True, "from-flag"),
    ],
)
def test_layers_override_in_order(
    box: Sandbox,
    user_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_project: bool,
    use_env: bool,
    use_flag: bool,
    expected: str,
) -> None:
    # The project file may name only a VM that exists (tests/host/test_project_vm.py has the rest).
    monkeypatch.setenv("VMSBX_HOME", str(tmp_path / "home"))
    record = tmp_path / "home" / "vms" / "from-project" / "vm.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"name": "from-project", "provider": "qemu", "network": "restricted"}')
    settings = box.load(
        user='[vm]\nname = "from-user"\n',
        project='[vm]\nname = "from-project"\n' if use_project else "",
        env={"VMSBX_VM_NAME": "from-env"} if use_env else {},
        flags={"vm.name": "from-flag"} if use_flag else {},
    )
    assert settings.vm.name == expected


def test_layers_merge_key_by_key_and_report_origins(box: Sandbox, user_dir: Path) -> None:
    box.user_file.write_text('[vm]\ncpus = 8\nmemory = "8G"\n', encoding="utf-8")
    box.project_file.write_text('[vm]\nmemory = "6G"\n', encoding="utf-8")
    resolved = resolve_settings(
        project_dir=box.project_dir,
        env=box.env({"VMSBX_SANDBOX_NETWORK": "none"}),
        flags={"vm.name": "cli", "vm.disk": None},
    )
    settings = resolved.settings
    assert (settings.vm.cpus, settings.vm.memory, settings.vm.name) == (8, 6 * GiB, "cli")
    assert settings.sandbox.network == "none"
    assert settings.vm.disk == 20 * GiB, "a None flag means 'not given'"
    assert resolved.origins["vm.cpus"].layer is LayerKind.USER
    assert resolved.origins["vm.cpus"].where == str(box.user_file)
    assert resolved.origins["vm.memory"].layer is LayerKind.PROJECT
    assert resolved.origins["sandbox.network"].where == "environment variable VMSBX_SANDBOX_NETWORK"
    assert resolved.origins["vm.name"].layer is LayerKind.FLAG
    assert resolved.origins["vm.disk"].layer is LayerKind.DEFAULT


def test_env_defaults_to_os_environ(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VMSBX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VMSBX_CONFIG", str(box.user_file))
    monkeypatch.setenv("VMSBX_VM_CPUS", "3")
    assert load_settings(project_dir=box.project_dir).vm.cpus == 3


def test_user_config_comes_from_vmsbx_config_in_env(box: Sandbox, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.toml"
    other.write_text("[vm]\ncpus = 5\n", encoding="utf-8")
    settings = load_settings(project_dir=box.project_dir, env={"VMSBX_CONFIG": str(other)})
    assert settings.vm.cpus == 5


def test_values_from_env_are_parsed(box: Sandbox) -> None:
    settings = box.load(
        env={
            "VMSBX_VM_MEMORY": "8G",
            "VMSBX_VM_BOOT_TIMEOUT": "60",
            "VMSBX_VM_CPUS": "4",
            "VMSBX_SANDBOX_NETWORK": "none",
            "VMSBX_SANDBOX_TIMEOUT": "1h30m",
            "VMSBX_SANDBOX_CPUS": "0.5",
            "VMSBX_SANDBOX_ALLOW_HOSTS": "GitHub.com, pypi.org,,",
            "VMSBX_AGENT_CREDENTIAL_COMMAND": "pass show 'anthropic key'",
            "VMSBX_EXTRA_HOST_PATHS": os.pathsep.join(["/srv/a", "/srv/b"]),
        }
    )
    assert settings.vm.memory == 8 * GiB
    assert settings.vm.boot_timeout == 60.0
    assert settings.vm.cpus == 4
    assert settings.sandbox.network == "none"
    assert settings.sandbox.timeout == 5400.0
    assert settings.sandbox.cpus == 0.5
    assert settings.sandbox.allow_hosts == ("github.com", "pypi.org")
    assert settings.agent.credential_command == ("pass", "show", "anthropic key")
    assert settings.extra_host_paths == ("/srv/a", "/srv/b")


def test_empty_credential_command_variable_clears_the_file_value(box: Sandbox, user_dir: Path) -> None:
    settings = box.load(
        user='[agent]\ncredential_command = ["pass", "show", "x"]\n',
        env={"VMSBX_AGENT_CREDENTIAL_COMMAND": ""},
    )
    assert settings.agent.credential_command is None


def test_flags_accept_typed_values_and_list_strings(box: Sandbox) -> None:
    settings = box.load(
        flags={
            "vm.cpus": 6,
            "sandbox.memory_max": "2G",
            "sandbox.allow_hosts": "a.example,b.example",
            "agent.credential_command": ("op", "read", "op://x/y"),
        }
    )
    assert settings.vm.cpus == 6
    assert settings.sandbox.memory_max == 2 * GiB
    assert settings.sandbox.allow_hosts == ("a.example", "b.example")
    assert settings.agent.credential_command == ("op", "read", "op://x/y")


def test_reserved_variables_are_ignored(box: Sandbox) -> None:
    settings = box.load(
        env={
            "VMSBX_HOME": "/tmp/home",
            "VMSBX_CACHE": "/tmp/cache",
            "VMSBX_TEST_ANYTHING": "1",
            "VMSBX_TEST_": "",
            "OTHER_VMSBX_VM_CPUS": "9",
        }
    )
    assert settings == Settings()


# --- bad input -------------------------------------------------------------------------------


def test_unknown_top_level_key_names_file_and_valid_keys(box: Sandbox, user_dir: Path) -> None:
    message = str(box.error(user="bogus = 1\n"))
    assert str(box.user_file) in message
    assert "'bogus'" in message
    assert "[vm], [sandbox], [agent]" in message
    assert "extra_host_paths" in message


def test_top_level_key_that_belongs_in_a_section_says_where(box: Sandbox) -> None:
    message = str(box.error(project='memory = "1G"\n'))
    assert "vmsbx.toml" in message
    assert "'memory'" in message
    assert "[vm]" in message


def test_unknown_nested_key_lists_the_section_keys(box: Sandbox) -> None:
    message = str(box.error(project='[vm]\nmemroy = "1G"\n'))
    assert "vmsbx.toml" in message
    assert "'vm.memroy'" in message
    assert "did you mean 'vm.memory'" in message
    assert "name, provider, cpus, memory, disk, image, accel, guest_network, boot_timeout" in message


def test_top_level_key_written_after_a_table_gets_a_toml_hint(box: Sandbox) -> None:
    message = str(box.error(project='[sandbox]\nnetwork = "none"\nextra_host_paths = []\n'))
    assert "'sandbox.extra_host_paths'" in message
    assert "above the first [section] header" in message


def test_section_that_is_not_a_table(box: Sandbox, user_dir: Path) -> None:
    message = str(box.error(user="vm = 3\n"))
    assert str(box.user_file) in message
    assert "[vm]" in message


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('[vm]\ncpus = "four"\n', ["'vm.cpus'", '"four"', "wrong type", "from 1 to 64"]),
        ("[vm]\ncpus = true\n", ["'vm.cpus'", "true", "from 1 to 64"]),
        ("[vm]\ncpus = 65\n", ["'vm.cpus'", "65", "out of range"]),
        ('[vm]\nmemory = "-4G"\n', ["'vm.memory'", '"-4G"', "negative", "4GiB"]),
        ('[vm]\nmemory = "lots"\n', ["'vm.memory'", '"lots"', "512M, 4G"]),
        ('[vm]\nmemory = "128M"\n', ["'vm.memory'", '"128M"', "at least 256M"]),
        ("[vm]\nmemory = 0\n", ["'vm.memory'", "greater than zero"]),
        ('[vm]\ndisk = "1G"\n', ["'vm.disk'", "at least 2G"]),
        (
            '[vm]\nprovider = "vmware"\n',
            ["'vm.provider'", '"vmware"', '"auto", "qemu", "lima", "multipass", "wsl2", "ssh"'],
        ),
        ('[vm]\nname = "Bad Name"\n', ["'vm.name'", '"Bad Name"', "lowercase"]),
        ("[vm]\nboot_timeout = 0\n", ["'vm.boot_timeout'", "greater than 0 and at most 3600"]),
        ("[vm]\nboot_timeout = 7200\n", ["'vm.boot_timeout'", "7200"]),
        ("[sandbox]\ntasks_max = 8\n", ["'sandbox.tasks_max'", "at least 16"]),
        ('[sandbox]\ntimeout = "soon"\n', ["'sandbox.timeout'", "1h30m"]),
        ("[sandbox]\ncpus = nan\n", ["'sandbox.cpus'", "finite"]),
        ("[sandbox]\nscore_threshold = 11\n", ["'sandbox.score_threshold'", "from 0 to 10"]),
        (
            '[sandbox]\nallow_hosts = ["ok.example", "not a host"]\n',
            ["'sandbox.allow_hosts' entry 2", '"not a host"', "host names"],
        ),
        ('[sandbox]\nallow_hosts = "github.com"\n', ["'sandbox.allow_hosts'", "wrong type"]),
        ("[agent]\ncredential_command = []\n", ["'agent.credential_command'", "empty"]),
        ('[agent]\napi_upstream = "ftp://x"\n', ["'agent.api_upstream'", "http(s) URL"]),
        ('[agent]\nclaude_version = "1; rm -rf /"\n', ["'agent.claude_version'", "2.1.332"]),
        ('extra_host_paths = ["relative/dir"]\n', ["'extra_host_paths' entry 1", "absolute"]),
        ("[vm]\nmemory = { size = 1 }\n", ["'vm.memory'", "{size = 1}"]),
    ],
)
def test_bad_values_name_file_key_value_and_what_is_allowed(
    box: Sandbox, user_dir: Path, toml: str, fragments: list[str]
) -> None:
    message = str(box.error(user=toml))
    assert message.startswith(f"{box.user_file}: key ")
    for fragment in fragments:
        assert fragment in message


def test_bad_value_in_project_file_names_the_project_file(box: Sandbox) -> None:
    message = str(box.error(project='[vm]\nprovider = "vmware"\n'))
    assert message.startswith(f"{box.project_file}: key 'vm.provider'")


def test_bad_value_in_env_names_the_variable(box: Sandbox) -> None:
    message = str(box.error(env={"VMSBX_VM_MEMORY": "-1G"}))
    assert message.startswith("environment variable VMSBX_VM_MEMORY: key 'vm.memory' = \"-1G\"")


def test_bad_value_in_flag_names_the_flag(box: Sandbox) -> None:
    message = str(box.error(flags={"sandbox.network": "wide"}))
    assert message.startswith("flag sandbox.network: key 'sandbox.network' = \"wide\"")
    assert '"none", "api", "allowlist", "open"' in message


def test_unknown_flag_is_refused(box: Sandbox) -> None:
    message = str(box.error(flags={"vm.memroy": "1G"}))
    assert "vm.memroy" in message
    assert "vm.memory" in message


def test_unknown_vmsbx_variable_is_refused_with_the_valid_names(box: Sandbox) -> None:
    message = str(box.error(env={"VMSBX_VM_MEMROY": "8G"}))
    assert "VMSBX_VM_MEMROY" in message
    assert "did you mean 'VMSBX_VM_MEMORY'" in message
    for key in setting_fields():
        assert env_var_name(key) in message


def test_unsplittable_credential_command_variable(box: Sandbox) -> None:
    message = str(box.error(env={"VMSBX_AGENT_CREDENTIAL_COMMAND": "pass show 'open"}))
    assert "VMSBX_AGENT_CREDENTIAL_COMMAND" in message
    assert "No closing quotation" in message


def test_directory_in_place_of_the_project_file(box: Sandbox) -> None:
    box.project_file.mkdir()
    message = str(box.error())
    assert str(box.project_file) in message
    assert "is a directory" in message


def test_directory_in_place_of_the_user_config(box: Sandbox) -> None:
    box.user_file.mkdir(parents=True)
    message = str(box.error())
    assert str(box.user_file) in message
    assert "is a directory" in message


def test_invalid_toml(box: Sandbox) -> None:
    message = str(box.error(project="[vm\nname = 'x'\n"))
    assert str(box.project_file) in message
    assert "not valid TOML" in message
    assert "line 1" in message


def test_invalid_utf8(box: Sandbox) -> None:
    box.project_file.write_bytes(b'[vm]\nname = "\xff\xfe"\n')
    message = str(box.error())
    assert str(box.project_file) in message
    assert "UTF-8" in message


def test_utf8_byte_order_mark_is_accepted(box: Sandbox) -> None:
    box.project_file.write_bytes(b'\xef\xbb\xbf[vm]\nimage = "trixie"\n')
    assert box.load().vm.image == "trixie"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX-only")
def test_fifo_in_place_of_the_project_file_is_refused_without_hanging(box: Sandbox) -> None:
    os.mkfifo(box.project_file)
    message = str(box.error())
    assert str(box.project_file) in message
    assert "not a regular file" in message


def test_oversized_file_is_refused(box: Sandbox) -> None:
    box.project_file.write_bytes(b"#" * (MiB + 1))
    message = str(box.error())
    assert str(box.project_file) in message
    assert "larger than 1M" in message


def test_absent_files_are_fine(box: Sandbox) -> None:
    assert not box.user_file.exists()
    assert not box.project_file.exists()
    assert box.load() == Settings()


def test_hostile_text_is_escaped_in_messages(box: Sandbox) -> None:
    message = str(box.error(project='[vm]\nname = "\\u001b[2Jx"\n"\\u001b]0;" = 1\n'))
    assert "\x1b" not in message
    assert "\\u001b" in message


def test_only_the_first_problem_is_described(box: Sandbox, user_dir: Path) -> None:
    message = str(box.error(user="[vm]\ncpus = 0\ndisk = 1\n"))
    assert "1 more problem follows once this one is fixed" in message


# --- tighten-only project file ---------------------------------------------------------------


def _refused(box: Sandbox, project: str, key: str) -> str:
    message = str(box.error(project=project))
    assert message.startswith(f"{box.project_file}: key '{key}' = ")
    assert "The project file can only tighten settings" in message
    assert str(box.user_file) in message, "names the user config to use instead"
    assert env_var_name(key) in message
    return message


def test_project_file_may_lower_memory(box: Sandbox) -> None:
    settings = box.load(project='[vm]\nmemory = "2G"\n[sandbox]\nmemory_max = "512M"\n')
    assert settings.vm.memory == 2 * GiB
    assert settings.sandbox.memory_max == 512 * MiB


def test_project_file_may_not_raise_memory(box: Sandbox) -> None:
    message = _refused(box, '[sandbox]\nmemory_max = "8G"\n', "sandbox.memory_max")
    assert '"8G" would loosen isolation (the layers below say "4G")' in message


def test_project_file_may_lower_the_relay_concurrency(box: Sandbox) -> None:
    assert box.load().agent.max_concurrent_requests == 4
    assert box.load(project="[agent]\nmax_concurrent_requests = 1\n").agent.max_concurrent_requests == 1


def test_equal_values_in_other_units_are_not_a_loosening(box: Sandbox) -> None:
    settings = box.load(project='[vm]\nmemory = "4096M"\n[sandbox]\ntimeout = "120m"\n')
    assert settings.vm.memory == 4 * GiB
    assert settings.sandbox.timeout == 7200.0


def test_limits_compare_against_the_user_config(box: Sandbox, user_dir: Path) -> None:
    user = '[sandbox]\nmemory_max = "8G"\ntimeout = "4h"\n'
    settings = box.load(user=user, project='[sandbox]\nmemory_max = "6G"\ntimeout = "3h"\n')
    assert settings.sandbox.memory_max == 6 * GiB
    assert settings.sandbox.timeout == 3 * 3600.0
    message = _refused(box, '[sandbox]\ntimeout = "5h"\n', "sandbox.timeout")
    assert 'the layers below say "4h"' in message


@pytest.mark.parametrize(
    ("key", "higher"),
    [
        ("vm.cpus", "3"),
        ("vm.memory", '"5G"'),
        ("vm.disk", '"21G"'),
        ("vm.boot_timeout", "301"),
        ("sandbox.memory_max", '"5G"'),
        ("sandbox.cpus", "2.5"),
        ("sandbox.tasks_max", "513"),
        ("sandbox.timeout", '"2h1s"'),
        ("sandbox.workspace_size", '"11G"'),
        ("sandbox.tmp_size", '"1025M"'),
        ("sync.collect_max", '"1025M"'),
        ("sandbox.io_read_bps", '"513M"'),
        ("sandbox.io_write_bps", '"max"'),
        ("sandbox.io_read_iops", "10001"),
        ("sandbox.io_write_iops", '"max"'),
        ("agent.max_concurrent_requests", "5"),
    ],
)
def test_every_limit_may_only_go_down(box: Sandbox, key: str, higher: str) -> None:
    section, name = key.split(".")
    message = _refused(box, f"[{section}]\n{name} = {higher}\n", key)
    assert "would loosen isolation" in message


def test_collect_cap_is_set_by_the_user_and_only_lowered_by_the_project(box: Sandbox, user_dir: Path) -> None:
    assert box.load().sync.collect_max == 1 * GiB
    user = '[sync]\ncollect_max = "8G"\n'
    assert box.load(user=user).sync.collect_max == 8 * GiB
    assert box.load(user=user, project='[sync]\ncollect_max = "2G"\n').sync.collect_max == 2 * GiB
    message = _refused(box, '[sync]\ncollect_max = "9G"\n', "sync.collect_max")
    assert 'the layers below say "8G"' in message


def test_disk_io_caps_are_on_by_default_and_may_only_tighten(box: Sandbox, user_dir: Path) -> None:
    defaults = box.load().sandbox
    assert (defaults.io_read_bps, defaults.io_write_bps) == (512 * MiB, 256 * MiB)
    assert (defaults.io_read_iops, defaults.io_write_iops) == (10000, 5000)
    project = '[sandbox]\nio_write_bps = "2M"\nio_write_iops = 100\n'
    tightened = box.load(project=project).sandbox
    assert (tightened.io_write_bps, tightened.io_write_iops) == (2 * MiB, 100)
    # "max" (no cap) in the user config: the project file may still set one, never drop one.
    user = '[sandbox]\nio_write_bps = "max"\nio_read_iops = "max"\n'
    assert box.load(user=user, project="").sandbox.io_write_bps is None
    assert box.load(user=user, project='[sandbox]\nio_write_bps = "1M"\n').sandbox.io_write_bps == MiB
    assert box.load(user=user, project='[sandbox]\nio_read_iops = "max"\n').sandbox.io_read_iops is None
    message = _refused(box, '[sandbox]\nio_read_bps = "max"\n', "sandbox.io_read_bps")
    assert '"max" would loosen isolation (the layers below say "512M")' in message


def test_disk_io_caps_from_flags_and_env(box: Sandbox) -> None:
    settings = box.load(
        flags={"sandbox.io_write_bps": "2M", "sandbox.io_read_iops": "max"},
        env={"VMSBX_SANDBOX_IO_WRITE_IOPS": "64"},
    )
    assert settings.sandbox.io_write_bps == 2 * MiB
    assert settings.sandbox.io_read_iops is None
    assert settings.sandbox.io_write_iops == 64
    too_small = box.error(flags={"sandbox.io_write_bps": "1K"})
    assert "64K" in str(too_small) and "max" in str(too_small)


@pytest.mark.parametrize("network", ["none", "api"])
def test_project_file_may_narrow_the_network(box: Sandbox, user_dir: Path, network: str) -> None:
    user = '[sandbox]\nnetwork = "api"\n'
    assert box.load(user=user, project=f'[sandbox]\nnetwork = "{network}"\n').sandbox.network == network


@pytest.mark.parametrize("network", ["allowlist", "open"])
def test_project_file_may_not_widen_the_network(box: Sandbox, network: str) -> None:
    message = _refused(box, f'[sandbox]\nnetwork = "{network}"\n', "sandbox.network")
    assert f'"{network}" would loosen isolation (the layers below say "api")' in message


def test_network_order_is_relative_to_the_user_config(box: Sandbox, user_dir: Path) -> None:
    user = '[sandbox]\nnetwork = "open"\n'
    assert box.load(user=user, project='[sandbox]\nnetwork = "allowlist"\n').sandbox.network == ("allowlist")


@pytest.mark.parametrize(
    ("key", "toml"),
    [
        ("agent.api_upstream", '[agent]\napi_upstream = "https://collector.example"\n'),
        ("agent.api_upstream", '[agent]\napi_upstream = "https://api.anthropic.com"\n'),
        ("agent.credential_command", '[agent]\ncredential_command = ["sh", "-c", "id"]\n'),
        ("agent.claude_version", '[agent]\nclaude_version = "2.0.0"\n'),
        ("extra_host_paths", 'extra_host_paths = ["/home"]\n'),
        ("extra_host_paths", "extra_host_paths = []\n"),
        ("sandbox.score_threshold", "[sandbox]\nscore_threshold = 10\n"),
        ("sandbox.score_threshold", "[sandbox]\nscore_threshold = 0.5\n"),
        ("vm.provider", '[vm]\nprovider = "qemu"\n'),
        ("vm.provider", '[vm]\nprovider = "auto"\n'),
        ("vm.accel", '[vm]\naccel = "tcg"\n'),
        ("vm.guest_network", '[vm]\nguest_network = "nat"\n'),
        ("sandbox.mode", '[sandbox]\nmode = "nsjail"\n'),
        ("sandbox.allow_hosts", '[sandbox]\nallow_hosts = ["evil.example"]\n'),
    ],
)
def test_trusted_only_keys_are_refused_in_the_project_file(box: Sandbox, key: str, toml: str) -> None:
    message = _refused(box, toml, key)
    assert "not allowed in a project file" in message or "would loosen isolation" in message


@pytest.mark.parametrize(
    ("toml", "env", "flags"),
    [
        (
            'extra_host_paths = ["/srv/data"]\n'
            '[agent]\napi_upstream = "https://proxy.internal"\n'
            'credential_command = ["pass", "show", "anthropic"]\nclaude_version = "2.0.1"\n'
            '[vm]\nprovider = "qemu"\naccel = "tcg"\nguest_network = "nat"\n'
            '[sandbox]\nmode = "nsjail"\nnetwork = "open"\nscore_threshold = 5\n'
            'allow_hosts = ["github.com"]\nmemory_max = "16G"\n',
            {},
            {},
        ),
        (
            "",
            {
                "VMSBX_AGENT_API_UPSTREAM": "https://proxy.internal",
                "VMSBX_AGENT_CREDENTIAL_COMMAND": "pass show anthropic",
                "VMSBX_AGENT_CLAUDE_VERSION": "2.0.1",
                "VMSBX_VM_PROVIDER": "qemu",
                "VMSBX_VM_ACCEL": "tcg",
                "VMSBX_VM_GUEST_NETWORK": "nat",
                "VMSBX_SANDBOX_MODE": "nsjail",
                "VMSBX_SANDBOX_NETWORK": "open",
                "VMSBX_SANDBOX_SCORE_THRESHOLD": "5",
                "VMSBX_SANDBOX_ALLOW_HOSTS": "github.com",
                "VMSBX_SANDBOX_MEMORY_MAX": "16G",
                "VMSBX_EXTRA_HOST_PATHS": "/srv/data",
            },
            {},
        ),
        (
            "",
            {},
            {
                "agent.api_upstream": "https://proxy.internal",
                "agent.credential_command": "pass show anthropic",
                "agent.claude_version": "2.0.1",
                "vm.provider": "qemu",
                "vm.accel": "tcg",
                "vm.guest_network": "nat",
                "sandbox.mode": "nsjail",
                "sandbox.network": "open",
                "sandbox.score_threshold": "5",
                "sandbox.allow_hosts": "github.com",
                "sandbox.memory_max": "16G",
                "extra_host_paths": "/srv/data",
            },
        ),
    ],
    ids=["user-config", "env", "flags"],
)
def test_trusted_layers_may_set_what_the_project_file_may_not(
    box: Sandbox, user_dir: Path, toml: str, env: dict[str, str], flags: dict[str, object]
) -> None:
    settings = box.load(user=toml, env=env, flags=flags)
    assert settings.agent.api_upstream == "https://proxy.internal"
    assert settings.agent.credential_command == ("pass", "show", "anthropic")
    assert settings.agent.claude_version == "2.0.1"
    assert (settings.vm.provider, settings.vm.accel, settings.vm.guest_network) == (
        "qemu",
        "tcg",
        "nat",
    )
    assert (settings.sandbox.mode, settings.sandbox.network) == ("nsjail", "open")
    assert settings.sandbox.score_threshold == 5.0
    assert settings.sandbox.allow_hosts == ("github.com",)
    assert settings.sandbox.memory_max == 16 * GiB
    assert settings.extra_host_paths == ("/srv/data",)


def test_env_and_flags_may_loosen_over_a_tightening_project_file(box: Sandbox) -> None:
    settings = box.load(
        project='[sandbox]\nnetwork = "none"\nmemory_max = "1G"\n',
        env={"VMSBX_SANDBOX_NETWORK": "open"},
        flags={"sandbox.memory_max": "8G"},
    )
    assert settings.sandbox.network == "open"
    assert settings.sandbox.memory_max == 8 * GiB


def test_guest_network_restricted_is_allowed(box: Sandbox) -> None:
    assert box.load(project='[vm]\nguest_network = "restricted"\n').vm.guest_network == ("restricted")


def test_nat_is_refused_even_when_the_user_config_says_nat(box: Sandbox, user_dir: Path) -> None:
    box.user_file.write_text('[vm]\nguest_network = "nat"\n', encoding="utf-8")
    _refused(box, '[vm]\nguest_network = "nat"\n', "vm.guest_network")


def test_sandbox_mode_may_be_repeated_but_not_changed(box: Sandbox, user_dir: Path) -> None:
    assert box.load(project='[sandbox]\nmode = "systemd"\n').sandbox.mode == "systemd"
    box.user_file.write_text('[sandbox]\nmode = "nsjail"\n', encoding="utf-8")
    message = _refused(box, '[sandbox]\nmode = "systemd"\n', "sandbox.mode")
    assert 'the layers below say "nsjail"' in message


def test_allow_hosts_may_only_shrink(box: Sandbox, user_dir: Path) -> None:
    box.user_file.write_text('[sandbox]\nallow_hosts = ["GitHub.com", "pypi.org"]\n', encoding="utf-8")
    assert box.load(project='[sandbox]\nallow_hosts = ["github.com"]\n').sandbox.allow_hosts == (
        "github.com",
    )
    assert box.load(project="[sandbox]\nallow_hosts = []\n").sandbox.allow_hosts == ()
    message = _refused(box, '[sandbox]\nallow_hosts = ["pypi.org", "evil.example"]\n', "sandbox.allow_hosts")
    assert 'it adds "evil.example"' in message


def test_neutral_keys_are_free_in_the_project_file(box: Sandbox) -> None:
    # vm.name is not neutral: tests/host/test_project_vm.py pins what the project may name.
    assert box.load(project='[vm]\nimage = "trixie"\n').vm.image == "trixie"


def test_every_setting_has_a_deliberate_project_rule() -> None:
    # A new setting must be classified; until then the loader refuses it in the project file.
    assert project_rule_keys() == frozenset(setting_fields())


# --- sizes and durations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4G", 4 * GiB),
        ("4g", 4 * GiB),
        ("4GiB", 4 * GiB),
        ("4gib", 4 * GiB),
        ("4GB", 4 * GiB),
        ("512M", 512 * MiB),
        ("512 MiB", 512 * MiB),
        ("1K", 1024),
        ("1T", 1024 * GiB),
        ("1.5G", 1536 * MiB),
        ("100", 100),
        ("100B", 100),
        (" 2G ", 2 * GiB),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-4G", "negative"),
        (-1, "negative"),
        ("0", "greater than zero"),
        ("0G", "greater than zero"),
        (0, "greater than zero"),
        ("0.0001K", "greater than zero"),
        ("", "not a size"),
        ("G", "not a size"),
        ("4X", "not a size"),
        ("4 G B", "not a size"),
        ("4iB", "not a size"),
        ("1e9", "not a size"),
        ("9" * 5000, "not a size"),
        (True, "true/false"),
        (4.5, "float"),
        ([1], "list"),
    ],
)
def test_parse_size_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_size(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "text"),
    [(4 * GiB, "4G"), (1536 * MiB, "1536M"), (1024 * GiB, "1T"), (1000, "1000"), (2048, "2K")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("1H30M", 5400.0),
        ("1.5h", 5400.0),
        ("0.5s", 0.5),
        ("90", 90.0),
        ("2.5", 2.5),
        (90, 90.0),
        (1.5, 1.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-5m", "negative"),
        (-1, "negative"),
        ("0s", "greater than zero"),
        (0, "greater than zero"),
        ("", "not a duration"),
        ("h", "not a duration"),
        ("30m1h", "not a duration"),
        ("1d", "not a duration"),
        ("5 minutes", "not a duration"),
        (float("inf"), "finite"),
        (float("nan"), "finite"),
        (True, "true/false"),
    ],
)
def test_parse_duration_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"), [(7200.0, "2h"), (5400.0, "1h30m"), (90.0, "1m30s"), (2.5, "2.5s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


# --- the models themselves -------------------------------------------------------------------


def test_models_reject_unknown_fields_and_are_frozen() -> None:
    with pytest.raises(ValidationError):
        VMSettings(memroy="4G")  # type: ignore[call-arg]
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.vm.cpus = 4


def test_models_parse_sizes_and_durations_directly() -> None:
    sandbox = SandboxSettings(memory_max="2G", timeout="30m")  # type: ignore[arg-type]
    assert (sandbox.memory_max, sandbox.timeout) == (2 * GiB, 1800.0)


def test_every_field_is_described() -> None:
    for key, info in setting_fields().items():
        assert info.description, f"{key} has no description"
    for name, info in Settings.model_fields.items():
        assert info.description, f"{name} has no description"


def test_claude_profile_is_on_by_default_and_the_project_may_only_turn_it_off(
    box: Sandbox, user_dir: Path
) -> None:
    assert box.load().agent.claude_profile is True
    assert box.load(project="[agent]\nclaude_profile = false\n").agent.claude_profile is False
    box.project_file.unlink()
    box.user_file.write_text("[agent]\nclaude_profile = false\n", encoding="utf-8")
    assert box.load().agent.claude_profile is False
    message = _refused(box, "[agent]\nclaude_profile = true\n", "agent.claude_profile")
    assert "your own Claude settings" in message
    box.project_file.unlink()
    assert box.load(env={"VMSBX_AGENT_CLAUDE_PROFILE": "true"}).agent.claude_profile is True
    assert box.load(flags={"agent.claude_profile": False}).agent.claude_profile is False
