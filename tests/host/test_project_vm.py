"""`vm.name` in the project file may pick only an existing VM no looser than the default VM.

The project folder is what the agent edits, so its vmsbx.toml is hostile: naming a VM the user
set up for something else (a real host behind the ssh provider, a guest with NAT) would route
the agent's runs there. Each test writes real VM records the way vmsbx's providers write them
(the ssh provider's own `create`, the qemu and lima record models), a real user config and
project file, and runs the real CLI (`python -m vmsbx run -- true`): a refusal is a config
error (exit 2) naming the key; an allowed choice gets past the settings to "VM … is not up".
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmsbx.config import resolve_settings
from vmsbx.config.loader import LayerKind
from vmsbx.config.models import VMSettings
from vmsbx.errors import ConfigError
from vmsbx.paths import ensure_private_dir, vm_dir
from vmsbx.providers import AVAILABLE, get_provider
from vmsbx.providers.lima import LimaVMRecord
from vmsbx.providers.qemu import QemuVMRecord
from vmsbx.providers.ssh import SSHHostProvider
from vmsbx.providers.walls import VMWall, recorded_wall
from vmsbx.sshkeys import generate_keypair

REPO = Path(__file__).resolve().parents[2]
CONFIG_ERROR = 2
AGENT_ERROR = 9  # "VM … is not up": the settings were accepted and vmsbx went for that VM


@dataclass
class World:
    home: Path
    user_config: Path
    project: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VMSBX_")}
        env.update(
            VMSBX_HOME=str(self.home),
            VMSBX_CONFIG=str(self.user_config),
            VMSBX_CACHE=str(self.home / "cache"),
            PYTHONPATH=str(REPO / "orchestrator"),
        )
        env.update(extra or {})
        return env

    def project_names(self, vm: str) -> None:
        (self.project / "vmsbx.toml").write_text(f'[vm]\nname = "{vm}"\n', encoding="utf-8")

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vmsbx", "run", *args, "--", "true"],
            cwd=self.project,
            env=self.env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    home = tmp_path / "home"
    monkeypatch.setenv("VMSBX_HOME", str(home))
    user_config = tmp_path / "config" / "config.toml"
    user_config.parent.mkdir()
    monkeypatch.setenv("VMSBX_CONFIG", str(user_config))
    project = tmp_path / "project"
    project.mkdir()
    return World(home=home, user_config=user_config, project=project)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def qemu_vm(name: str, network: str) -> None:
    """A qemu VM's record as QemuProvider.create writes it."""
    record = QemuVMRecord(
        name=name, image="bookworm", image_dir=Path("/nonexistent/build"), cpus=2, memory_mib=4096,
        disk_size="20G", accel="auto", network=network, created_at=_now(),  # type: ignore[arg-type]
    )  # fmt: skip
    directory = ensure_private_dir(vm_dir(name))
    (directory / "vm.json").write_text(record.model_dump_json(indent=2))


def lima_vm(name: str) -> None:
    """A lima VM's record as LimaProvider.create writes it."""
    record = LimaVMRecord(
        name=name, instance=f"vmsbx-{name}", cpus=2, memory_bytes=4 << 30, disk_bytes=20 << 30,
        created_at=_now(),
    )  # fmt: skip
    directory = ensure_private_dir(vm_dir(name))
    (directory / "vm.json").write_text(record.model_dump_json(indent=2))


def real_host(name: str, tmp_path: Path) -> None:
    """An ssh-provider host, recorded by the provider's own create (it records and pins only)."""
    key = tmp_path / f"{name}-client"
    generate_keypair(key, "client")
    host_key = generate_keypair(tmp_path / f"{name}-hostkey", "host")
    settings = VMSettings(
        provider="ssh", ssh_host="build-server.internal", ssh_key=str(key), ssh_host_key=host_key
    )
    SSHHostProvider(settings).create(name)
    assert (vm_dir(name) / "vm.json").is_file()


def assert_refused(result: subprocess.CompletedProcess[str], world: World, vm: str, says: str) -> None:
    assert result.returncode == CONFIG_ERROR, (result.returncode, result.stderr)
    message = " ".join(result.stderr.split())
    assert str(world.project / "vmsbx.toml") in message, message
    assert f"key 'vm.name' = \"{vm}\"" in message, message
    assert says in message, message
    assert f"--name {vm}" in message and "VMSBX_VM_NAME" in message, "the message names the fix"
    assert "Traceback" not in result.stderr


def assert_accepted(result: subprocess.CompletedProcess[str], vm: str) -> None:
    assert result.returncode == AGENT_ERROR, (result.returncode, result.stderr)
    assert f"VM '{vm}' is not up" in result.stderr, result.stderr


# --- refused -----------------------------------------------------------------------------------


def test_project_may_not_route_runs_to_a_real_host(world: World, tmp_path: Path) -> None:
    qemu_vm("default", "restricted")
    real_host("build-server", tmp_path)
    world.project_names("build-server")
    assert_refused(world.run(), world, "build-server", "a real host reached over SSH")


def test_project_may_not_pick_a_real_host_even_when_the_default_is_one(world: World, tmp_path: Path) -> None:
    real_host("default", tmp_path)
    real_host("production", tmp_path)
    world.project_names("production")
    assert_refused(world.run(), world, "production", "which only you may choose")


def test_project_may_not_pick_a_nat_guest_over_a_restricted_default(world: World) -> None:
    qemu_vm("default", "restricted")
    qemu_vm("scratch", "nat")
    world.project_names("scratch")
    assert_refused(world.run(), world, "scratch", 'looser than the default VM "default"')


def test_a_lima_guest_counts_as_nat(world: World) -> None:
    qemu_vm("default", "restricted")
    lima_vm("mac-vm")
    world.project_names("mac-vm")
    assert_refused(world.run(), world, "mac-vm", "a guest with its own network (NAT)")


def test_default_is_the_vm_the_user_config_names(world: World) -> None:
    world.user_config.write_text('[vm]\nname = "strict"\n', encoding="utf-8")
    qemu_vm("strict", "restricted")
    qemu_vm("default", "nat")
    world.project_names("default")
    assert_refused(world.run(), world, "default", 'looser than the default VM "strict"')


def test_project_may_not_name_a_vm_that_does_not_exist(world: World) -> None:
    qemu_vm("default", "restricted")
    world.project_names("fresh")
    assert_refused(world.run(), world, "fresh", "names a VM that does not exist")
    assert not vm_dir("fresh").exists()


def test_a_default_vm_not_made_yet_counts_as_the_strictest(world: World) -> None:
    qemu_vm("scratch", "nat")
    world.project_names("scratch")
    assert_refused(world.run(), world, "scratch", "looser than the default VM")


def test_an_unreadable_record_counts_as_a_real_host(world: World) -> None:
    qemu_vm("default", "restricted")
    ensure_private_dir(vm_dir("odd"))
    (vm_dir("odd") / "vm.json").write_text('{"provider": "qemu", "network": "bridged"}')
    world.project_names("odd")
    assert_refused(world.run(), world, "odd", "a real host")


def test_every_verb_that_loads_settings_refuses(world: World, tmp_path: Path) -> None:
    qemu_vm("default", "restricted")
    real_host("build-server", tmp_path)
    world.project_names("build-server")
    for verb in (["up"], ["ssh", "--", "true"], ["verify"], ["stop"]):
        result = subprocess.run(
            [sys.executable, "-m", "vmsbx", *verb], cwd=world.project, env=world.env(),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == CONFIG_ERROR, (verb, result.stderr)
        assert "'vm.name'" in result.stderr, (verb, result.stderr)


# --- allowed -----------------------------------------------------------------------------------


def test_project_may_pick_another_restricted_guest(world: World) -> None:
    qemu_vm("default", "restricted")
    qemu_vm("work", "restricted")
    world.project_names("work")
    assert_accepted(world.run(), "work")


def test_project_may_pick_a_nat_guest_when_the_default_is_nat(world: World) -> None:
    qemu_vm("default", "nat")
    lima_vm("other")
    world.project_names("other")
    assert_accepted(world.run(), "other")


def test_project_may_repeat_the_vm_the_user_config_names(world: World, tmp_path: Path) -> None:
    world.user_config.write_text('[vm]\nname = "build-server"\n', encoding="utf-8")
    real_host("build-server", tmp_path)
    world.project_names("build-server")
    assert_accepted(world.run(), "build-server")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_vm_the_user_names_overrides_the_project_choice(world: World, tmp_path: Path, how: str) -> None:
    qemu_vm("default", "restricted")
    real_host("build-server", tmp_path)
    world.project_names("fresh")  # refused on its own (does not exist)
    if how == "flag":
        result = world.run("--name", "build-server")
    else:
        result = world.run(env={"VMSBX_VM_NAME": "build-server"})
    assert_accepted(result, "build-server")


def test_the_loader_reports_the_project_as_the_origin_of_an_allowed_choice(world: World) -> None:
    qemu_vm("default", "restricted")
    qemu_vm("work", "restricted")
    world.project_names("work")
    resolved = resolve_settings(project_dir=world.project, env=world.env())
    assert resolved.settings.vm.name == "work"
    assert resolved.origins["vm.name"].layer is LayerKind.PROJECT
    world.project_names("missing")
    with pytest.raises(ConfigError):
        resolve_settings(project_dir=world.project, env=world.env())


# --- the order ---------------------------------------------------------------------------------


def test_walls_agree_with_what_each_provider_declares(world: World, tmp_path: Path) -> None:
    """The explicit order matches the providers' declared features: a provider that cannot cut
    the guest off is at least NAT, and one that cannot create VMs is a real host."""
    qemu_vm("q-restricted", "restricted")
    qemu_vm("q-nat", "nat")
    assert recorded_wall("q-restricted") is VMWall.RESTRICTED_GUEST
    assert recorded_wall("q-nat") is VMWall.NAT_GUEST
    assert recorded_wall("nothing-here") is None
    for name in AVAILABLE:
        if name == "qemu":
            continue
        ensure_private_dir(vm_dir(f"p-{name}"))
        (vm_dir(f"p-{name}") / "vm.json").write_text(f'{{"name": "p-{name}", "provider": "{name}"}}')
        wall = recorded_wall(f"p-{name}")
        features = get_provider(name, VMSettings()).features
        assert wall is not None
        assert (wall >= VMWall.NAT_GUEST) == (not features.restricted_network), name
        assert (wall is VMWall.REAL_HOST) == (not features.create), name
