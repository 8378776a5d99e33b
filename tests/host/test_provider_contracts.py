"""The lima, multipass and wsl2 providers driven through the real CLI (`vmsbx up/status/stop/
destroy --provider …`) against the fakes in tests/fakes/, including the injected failures.

No guest stands behind the fakes here, so `vmsbx up` gets as far as waiting for SSH and then
fails with exit 6 after a short boot timeout: everything before that (create, start, the state
words, the errors) is the provider's contract. tests/vm/test_provider_guests.py puts a real
guest behind the same fakes.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FAKES = Path(__file__).resolve().parent.parent / "fakes"
BOOT_TIMEOUT = "3"


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "fake"
        self.home = root / "home"
        self.lima_home = root / "lima"
        self.vars = dict(
            os.environ,
            PATH=f"{FAKES}{os.pathsep}{os.environ['PATH']}",
            VMSBX_HOME=str(self.home),
            VMSBX_CONFIG=str(root / "no-user-config.toml"),
            VMSBX_TEST_FAKE_STATE=str(self.state),
            LIMA_HOME=str(self.lima_home),
            VMSBX_VM_BOOT_TIMEOUT=BOOT_TIMEOUT,
        )
        self.vars.pop("WSL_UTF8", None)
        self.vars.pop("VMSBX_TEST_FAKE_FAIL", None)
        # No image build here: a folder shaped like `vmsbx image lima` output (the fake limactl
        # boots nothing without VMSBX_TEST_FAKE_LIMA_BOOT). tests/vm/test_lima_image.py boots the real one.
        self.lima_image = stub_lima_image(root / "lima-image")
        self.vars["VMSBX_VM_LIMA_IMAGE"] = str(self.lima_image)

    def vmsbx(self, *args: str, fail: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
        env = dict(self.vars, VMSBX_TEST_FAKE_FAIL=fail, **extra)
        return subprocess.run(
            [sys.executable, "-m", "vmsbx", *args], capture_output=True, text=True, env=env,
            cwd=self.root, timeout=120, check=False,
        )  # fmt: skip

    def status(self) -> dict[str, dict[str, object]]:
        done = self.vmsbx("status", "--json")
        assert done.returncode == 0, done.stderr
        return {row["name"]: row for row in json.loads(done.stdout)}

    def calls(self, tool: str) -> list[list[str]]:
        path = self.state / tool / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def stub_lima_image(folder: Path, name: str = "bookworm-lima") -> Path:
    from vmsbx.providers.image import ImageInfo, load_recipe

    folder.mkdir()
    for filename, content in (("disk.qcow2", b"QFI\xfb disk"), ("vmlinuz", b"kernel"), ("initrd", b"initrd")):
        (folder / filename).write_bytes(content)
    info = ImageInfo(
        name=name, recipe_hash="0" * 16, built_at="2026-11-27T00:00:00+00:00",
        recipe=load_recipe("bookworm-lima"), kernel_release="6.1.0-1-amd64", directory=folder,
    )  # fmt: skip
    (folder / "image.json").write_text(info.model_dump_json())
    return folder


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def _waited_for_ssh(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 6, (done.returncode, done.stderr)
    assert "waiting for SSH" in done.stderr


# -- lima ------------------------------------------------------------------------------------------


def test_lima_lifecycle_through_the_cli(env: Env) -> None:
    _waited_for_ssh(env.vmsbx("up", "--provider", "lima", "--name", "l1"))
    verbs = [call[1:3] for call in env.calls("limactl")]
    assert ["create", "--name=vmsbx-l1"] in verbs
    # created explicitly from vmsbx's template before any start
    create = next(c for c in env.calls("limactl") if "create" in c)
    assert create[-1] == str(env.home / "vms" / "l1" / "lima.yaml")
    assert verbs.index(["create", "--name=vmsbx-l1"]) < verbs.index(["start", "--timeout=3s"])
    instance_yaml = (env.lima_home / "vmsbx-l1" / "lima.yaml").read_text()
    assert "plain: true" in instance_yaml and "mounts: []" in instance_yaml
    row = env.status()["l1"]
    ssh_config = (env.lima_home / "vmsbx-l1" / "ssh.config").read_text()
    port = next(line.split()[1] for line in ssh_config.splitlines() if line.strip().startswith("Port"))
    assert (row["provider"], row["state"], row["ssh"]) == ("lima", "running", f"root@127.0.0.1:{port}")
    assert env.vmsbx("stop", "--name", "l1").returncode == 0
    assert env.status()["l1"]["state"] == "stopped"
    assert env.vmsbx("stop", "--name", "l1").returncode == 0  # a no-op when stopped
    _waited_for_ssh(env.vmsbx("up", "--name", "l1"))  # starts the existing instance, no second create
    assert sum(1 for c in env.calls("limactl") if "create" in c) == 1
    assert env.vmsbx("destroy", "-y", "--name", "l1").returncode == 0
    assert not (env.lima_home / "vmsbx-l1").exists() and env.status() == {}
    assert env.vmsbx("destroy", "-y", "--name", "l1").returncode == 0  # already gone: fine


def test_lima_instance_file_boots_the_configured_vmsbx_image_pinned_by_sha256(env: Env) -> None:
    import hashlib

    import yaml

    _waited_for_ssh(env.vmsbx("up", "--provider", "lima", "--name", "li"))
    config = yaml.safe_load((env.lima_home / "vmsbx-li" / "lima.yaml").read_text())
    (image,) = config["images"]
    for entry, filename in ((image, "disk.qcow2"), (image["kernel"], "vmlinuz"), (image["initrd"], "initrd")):
        path = env.lima_image / filename
        assert entry["location"] == str(path) and entry["arch"] == config["arch"] == "x86_64"
        assert entry["digest"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert config["mounts"] == [] and config["plain"] is True


def test_an_image_changed_after_create_is_refused_by_its_pinned_digest(env: Env) -> None:
    _waited_for_ssh(env.vmsbx("up", "--provider", "lima", "--name", "ld"))  # created, digests pinned
    assert env.vmsbx("stop", "--name", "ld").returncode == 0
    (env.lima_image / "vmlinuz").chmod(0o644)
    (env.lima_image / "vmlinuz").write_bytes(b"another kernel")
    # The fake now does what Lima's host agent does on a first boot: fetch each file, check its digest.
    done = env.vmsbx("up", "--name", "ld", VMSBX_TEST_FAKE_LIMA_BOOT="qemu")
    assert done.returncode == 4, done.stderr
    assert "limactl start failed: expected digest" in done.stderr
    assert not (env.lima_home / "vmsbx-ld" / "kernel").exists()


@pytest.mark.parametrize("damage", ["missing-file", "not-lima", "no-record"])
def test_lima_refuses_a_bad_image_folder_before_creating_anything(env: Env, damage: str) -> None:
    folder = stub_lima_image(env.root / "bad", name="bookworm" if damage == "not-lima" else "bookworm-lima")
    if damage == "missing-file":
        (folder / "initrd").unlink()
    if damage == "no-record":
        (folder / "image.json").unlink()
    done = env.vmsbx("up", "--provider", "lima", "--name", "lb", VMSBX_VM_LIMA_IMAGE=str(folder))
    assert done.returncode == 4 and "vm.lima_image" in done.stderr and "vmsbx image lima" in done.stderr
    expected = {"missing-file": "missing", "not-lima": "no cloud-init", "no-record": "cannot read"}[damage]
    assert expected in done.stderr
    assert not any("create" in call for call in env.calls("limactl"))


def test_a_project_cannot_choose_the_lima_image(env: Env) -> None:
    (env.root / "vmsbx.toml").write_text(f'[vm]\nlima_image = "{env.root}"\n')
    done = env.vmsbx("up", "--provider", "lima", "--name", "lp")
    assert done.returncode == 2 and "vm.lima_image" in done.stderr
    assert env.calls("limactl") == []


def test_lima_refusing_root_is_said_plainly(env: Env) -> None:
    done = env.vmsbx("up", "--provider", "lima", "--name", "l2", fail="root")
    assert done.returncode == 4
    assert "Lima refuses to run as root" in done.stderr and "run vmsbx as your own user" in done.stderr


def test_lima_too_old_names_the_upgrade(env: Env) -> None:
    done = env.vmsbx("up", "--provider", "lima", "--name", "l3", fail="old")
    assert done.returncode == 3
    assert "Lima 1.1.1 is too old" in done.stderr and "brew upgrade lima" in done.stderr
    assert not any("create" in call for call in env.calls("limactl"))


def test_lima_start_timeout_leaves_it_booting_and_vmsbx_waits(env: Env) -> None:
    done = env.vmsbx("up", "--provider", "lima", "--name", "l4", fail="start-timeout")
    _waited_for_ssh(done)  # not a provider failure: the VM is still coming up
    assert "still booting" in done.stderr


def test_lima_broken_and_failed_create(env: Env) -> None:
    failed = env.vmsbx("up", "--provider", "lima", "--name", "l5", fail="create-fails")
    assert failed.returncode == 4 and "failed to download the image" in failed.stderr
    _waited_for_ssh(env.vmsbx("up", "--provider", "lima", "--name", "l6"))
    broken = env.vmsbx("up", "--name", "l6", fail="broken")
    assert broken.returncode == 4 and "is broken" in broken.stderr and "vmsbx destroy" in broken.stderr


# -- multipass -------------------------------------------------------------------------------------


def test_multipass_lifecycle_through_the_cli(env: Env) -> None:
    _waited_for_ssh(env.vmsbx("up", "--provider", "multipass", "--name", "m1"))
    launch = next(c for c in env.calls("multipass") if c[0] == "launch")
    assert launch[launch.index("--name") + 1] == "vmsbx-m1" and "--cloud-init" in launch
    instances = json.loads((env.state / "multipass" / "instances.json").read_text())
    user_data = instances["vmsbx-m1"]["user_data"]
    assert user_data.startswith("#cloud-config\n") and "ssh_keys" in user_data  # came through stdin
    pinned = (env.home / "vms" / "m1" / "keys" / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert pinned in user_data
    row = env.status()["m1"]
    assert (row["provider"], row["state"]) == ("multipass", "running")
    assert row["ssh"] == f"root@{instances['vmsbx-m1']['ipv4'][0]}:22"
    assert env.vmsbx("stop", "--name", "m1").returncode == 0
    assert env.status()["m1"]["state"] == "stopped"
    assert env.vmsbx("destroy", "-y", "--name", "m1").returncode == 0
    assert json.loads((env.state / "multipass" / "instances.json").read_text()) == {}  # purged
    assert ["delete", "--purge", "vmsbx-m1"] in env.calls("multipass")


def test_multipass_launch_timeout_is_polled_not_reported(env: Env) -> None:
    done = env.vmsbx("up", "--provider", "multipass", "--name", "m2", fail="launch-timeout")
    _waited_for_ssh(done)
    assert "still initialising" in done.stderr
    calls = [c[0] for c in env.calls("multipass")]
    launched = calls.index("launch")
    assert calls[launched + 1 :].count("info") >= 2  # polled until Running


def test_multipass_daemon_down_and_old_client(env: Env) -> None:
    down = env.vmsbx("up", "--provider", "multipass", "--name", "m3", fail="daemon-down")
    assert down.returncode == 4 and "daemon" in down.stderr and "fix:" in down.stderr
    old = env.vmsbx("up", "--provider", "multipass", "--name", "m4", fail="old")
    assert old.returncode == 3 and "multipass >= 1.7.0" in old.stderr


# -- wsl2 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fail", ["", "utf16"])
def test_wsl2_lifecycle_through_the_cli(env: Env, fail: str) -> None:
    missing = env.vmsbx("up", "--provider", "wsl2", "--name", "w1", fail=fail)
    assert missing.returncode == 2 and "vm.wsl_rootfs" in missing.stderr
    rootfs = env.root / "bookworm-rootfs.tar"
    rootfs.write_bytes(b"not really a tar")
    env.vars["VMSBX_VM_WSL_ROOTFS"] = str(rootfs)
    _waited_for_ssh(env.vmsbx("up", "--provider", "wsl2", "--name", "w1", fail=fail))
    calls = env.calls("wsl")
    imported = next(c for c in calls if c[0] == "--import")
    assert (
        imported[1:2] == ["vmsbx-w1"] and imported[-2:] == ["--version", "2"] and imported[3] == str(rootfs)
    )
    commands = [json.loads(line) for line in (env.state / "wsl" / "commands.jsonl").read_text().splitlines()]
    setup = next(c for c in commands if c["argv"] == ["sh", "-s"])
    wsl_conf = configparser.ConfigParser()
    wsl_conf.read_string(setup["stdin"].split("<<'VMSBX_EOF'\n", 1)[1].split("\nVMSBX_EOF\n", 1)[0])
    assert wsl_conf["automount"]["enabled"] == "false" and wsl_conf["interop"]["enabled"] == "false"
    assert wsl_conf["boot"]["systemd"] == "true"
    # wsl.conf applies only after a restart: terminate comes after the setup script
    assert calls.index(["--terminate", "vmsbx-w1"]) > calls.index(next(c for c in calls if "sh" in c))
    assert any(c["argv"][:1] == ["sleep"] for c in commands)  # the keep-alive
    row = env.status()["w1"]
    record = json.loads((env.home / "vms" / "w1" / "vm.json").read_text())
    assert (row["provider"], row["state"], row["ssh"]) == (
        "wsl2",
        "running",
        f"root@127.0.0.1:{record['ssh_port']}",
    )
    assert f"ListenAddress 127.0.0.1:{record['ssh_port']}" in setup["stdin"]
    assert env.vmsbx("stop", "--name", "w1", fail=fail).returncode == 0
    assert env.status()["w1"]["state"] == "stopped"
    assert env.vmsbx("destroy", "-y", "--name", "w1", fail=fail).returncode == 0
    assert json.loads((env.state / "wsl" / "distros.json").read_text()) == {}
    assert env.vmsbx("destroy", "-y", "--name", "w1", fail=fail).returncode == 0


def test_wsl2_not_installed(env: Env) -> None:
    env.vars["VMSBX_VM_WSL_ROOTFS"] = str(env.root / "x.tar")
    done = env.vmsbx("up", "--provider", "wsl2", "--name", "w2", fail="no-wsl")
    assert (done.returncode == 3 and "wsl.exe --update" in done.stderr) or "wsl.exe --install" in done.stderr


# -- ssh -------------------------------------------------------------------------------------------


def test_ssh_provider_needs_host_key_and_never_trusts_on_first_use(env: Env) -> None:
    done = env.vmsbx("up", "--provider", "ssh", "--name", "s1", VMSBX_VM_SSH_HOST="127.0.0.1")
    assert done.returncode == 2 and "vm.ssh_host_key" in done.stderr
    project = env.root / "vmsbx.toml"
    project.write_text('[vm]\nssh_host = "evil.example"\n')
    refused = env.vmsbx("up", "--name", "s1")
    assert refused.returncode == 2 and "not allowed in a project file" in refused.stderr
    project.unlink()


def test_doctor_reports_every_provider(env: Env) -> None:
    done = env.vmsbx("doctor", "--json")
    rows = {row["check"]: row for row in json.loads(done.stdout)}
    for name in ("qemu", "lima", "multipass", "wsl2", "ssh"):
        assert f"provider {name}" in rows
    assert rows["provider lima"]["provider"]["version"] == "2.2.0" and rows["provider lima"]["ok"]
    # The image prerequisite: which folder a new Lima VM would boot (on a Mac, the one copied over).
    assert rows["provider lima"]["provider"]["notes"] == [
        f"image bookworm-lima built 2026-11-27T00:00:00+00:00 (x86_64) from {env.lima_image}"
    ]
    unset = env.vmsbx("doctor", "--json", VMSBX_VM_LIMA_IMAGE=str(env.root / "nowhere"))
    notes = {row["check"]: row for row in json.loads(unset.stdout)}["provider lima"]["provider"]["notes"]
    assert "not a folder written by `vmsbx image lima`" in notes[0]
    assert rows["provider multipass"]["provider"]["version"] == "1.16.3"
    assert rows["provider wsl2"]["provider"]["version"] == "2.5.7"
    assert rows["provider qemu"]["optional"] is False  # what auto picks on Linux decides the exit code
    bare = env.vmsbx("doctor", "--json", PATH="/usr/bin:/bin")
    lima = {row["check"]: row for row in json.loads(bare.stdout)}["provider lima"]
    assert lima["ok"] is False and lima["fix"] and lima["provider"]["missing"] == ["limactl"]
