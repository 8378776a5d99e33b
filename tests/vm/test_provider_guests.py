"""Each provider's connection details lead to a real guest over real, pinned SSH.

One dedicated QEMU guest (the backend) stands behind the fakes of limactl, multipass and wsl.exe
(tests/fakes/, VMSBX_TEST_FAKE_BACKEND). What is real: the guest (vmsbx's Debian image, systemd,
sshd), the scripts vmsbx's templates carry, running in it as root, every SSH connection, vmsbx's
provisioning over it. What is emulated: Lima's boot (the fake runs the template's `mode: system`
provision script in the guest and writes Lima's ssh.config pointing at the guest's forwarded
port), cloud-init's ssh_keys/ssh_authorized_keys for multipass (and a relay from 127.0.0.2:22, the
`ipv4[0]:22` Multipass reports, to that port), and WSL's localhost relay (`ssh -L` to the sshd
vmsbx's WSL setup script starts in the guest on 127.0.0.1:<port>). The ssh provider needs no
fake: it is pointed straight at the guest.

The backend is a guest of its own, not the session's shared one: these tests replace its host
key and change its sshd setup.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmcli import Cli

from vmsbx.sshkeys import generate_keypair

pytestmark = pytest.mark.vm

FAKES = Path(__file__).resolve().parent.parent / "fakes"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Path]]:
    """A VMSBX_HOME with the backend guest up (qemu), and the fakes' environment around it."""
    root = tmp_path_factory.mktemp("prov")
    home = root / "home"
    env = dict(os.environ)
    env.pop("WSL_UTF8", None)
    env.update(
        VMSBX_HOME=str(home),
        VMSBX_CONFIG=str(root / "no-user-config.toml"),
        VMSBX_VM_GUEST_NETWORK="restricted",
        VMSBX_AGENT_INSTALL="none",  # this guest only proves the providers' connection paths
        PATH=f"{FAKES}{os.pathsep}{os.environ['PATH']}",
        VMSBX_TEST_FAKE_STATE=str(root / "fake"),
        LIMA_HOME=str(root / "lima"),
        VMSBX_TEST_FAKE_BACKEND=str(root / "backend.json"),
    )
    cli = Cli(env=env, cwd=root)
    try:
        summary = cli.json("up", "--provider", "qemu", "--name", "pbk")
        assert isinstance(summary, dict)
        vm = home / "vms" / "pbk"
        # The fakes keep their own copy of the pin: provisioning moves the guest to a new host key.
        known_hosts = root / "backend_known_hosts"
        known_hosts.write_text((vm / "known_hosts").read_text())
        backend = {
            "host": "127.0.0.1",
            "port": int(str(summary["ssh"]).rsplit(":", 1)[1]),
            "user": "root",
            "key_file": str(vm / "keys" / "client_ed25519"),
            "known_hosts": str(known_hosts),
            "alias": "vmsbx-pbk",
        }
        (root / "backend.json").write_text(json.dumps(backend))
        yield cli, root
    finally:
        relays = root / "fake" / "wsl" / "relays.json"
        if relays.is_file():
            for pid in json.loads(relays.read_text()).values():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGTERM)
        for name in ("sreal", "lreal", "lbad", "mreal", "wreal", "pbk"):
            cli.run("destroy", "-y", "--name", name, timeout=180)


def backend(root: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((root / "backend.json").read_text())
    return data


def _ssh_ok(cli: Cli, name: str, *argv: str) -> str:
    return cli.ok("ssh", "--name", name, "--", *argv).stdout.decode()


def test_ssh_provider_uses_an_existing_host_with_the_given_pin(world: tuple[Cli, Path]) -> None:
    cli, root = world
    target = backend(root)
    host_key = Path(str(target["known_hosts"])).read_text().split(maxsplit=1)[1].strip()
    settings = {
        "VMSBX_VM_SSH_HOST": "127.0.0.1",
        "VMSBX_VM_SSH_PORT": str(target["port"]),
        "VMSBX_VM_SSH_KEY": str(target["key_file"]),
        "VMSBX_VM_SSH_HOST_KEY": host_key,
    }
    summary = json.loads(
        cli.ok("up", "--provider", "ssh", "--name", "sreal", "--json", extra_env=settings).stdout
    )
    assert summary["provider"] == "ssh" and summary["ssh"] == f"root@127.0.0.1:{target['port']}"
    assert _ssh_ok(cli, "sreal", "sh", "-c", "ps -p 1 -o comm=; id -u").split() == ["systemd", "0"]
    cli.ok("stop", "--name", "sreal")  # ends the host agent, never shuts down a host vmsbx does not own
    cli.ok("up", "--name", "sreal")
    assert _ssh_ok(cli, "sreal", "cat", "/proc/uptime")
    cli.ok("destroy", "-y", "--name", "sreal")
    # The wrong pin: refused, never learned.
    impostor = generate_keypair(root / "impostor_key", "impostor")
    refused = cli.run(
        "up", "--provider", "ssh", "--name", "sbad", extra_env={**settings, "VMSBX_VM_SSH_HOST_KEY": impostor}
    )
    cli.run("destroy", "-y", "--name", "sbad")
    assert refused.returncode == 7, refused.stderr  # HostKeyMismatch
    assert b"host key" in refused.stderr.lower()


def test_lima_config_format_leads_to_the_real_guest_with_the_pinned_key(world: tuple[Cli, Path]) -> None:
    cli, root = world
    summary = json.loads(cli.ok("up", "--provider", "lima", "--name", "lreal", "--json").stdout)
    assert summary["provider"] == "lima" and summary["systemd"]
    # The connection used Lima's ssh.config for the endpoint and vmsbx's pin for the key.
    ssh_config = (root / "lima" / "vmsbx-lreal" / "ssh.config").read_text()
    assert "StrictHostKeyChecking no" in ssh_config  # Lima's file says so; vmsbx did not listen
    assert f"Port {backend(root)['port']}" in ssh_config
    pinned = (cli.home / "vms" / "lreal" / "keys" / "ssh_host_ed25519_key.pub").read_text().split()[1]
    out = _ssh_ok(cli, "lreal", "sh", "-c", "cat /etc/ssh/ssh_host_ed25519_key.pub; id -u; ls /etc/ssh")
    assert pinned in out and "\n0\n" in out
    assert "ssh_host_rsa_key" not in out  # only the pinned key type is offered
    # A guest whose provisioning did not put vmsbx's key in place is refused (it presents another key).
    bad = cli.run(
        "up", "--provider", "lima", "--name", "lbad", extra_env={"VMSBX_TEST_FAKE_FAIL": "no-provision"}
    )
    assert bad.returncode == 7 and b"host key" in bad.stderr.lower(), bad.stderr
    cli.ok("destroy", "-y", "--name", "lbad")
    cli.ok("destroy", "-y", "--name", "lreal")
    assert not (root / "lima" / "vmsbx-lreal").exists()


class _Relay:
    """TCP relay from `listen` to `target`: stands for the Multipass bridge between the host and
    the instance's ipv4[0]."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.server = socket.create_server(listen)
        self.target = target
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()


def test_multipass_ipv4_port_22_leads_to_the_real_guest(world: tuple[Cli, Path]) -> None:
    cli, root = world
    relay = _Relay(("127.0.0.2", 22), ("127.0.0.1", int(str(backend(root)["port"]))))
    try:
        extra = {"VMSBX_TEST_FAKE_MULTIPASS_IPV4": "127.0.0.2", "VMSBX_TEST_FAKE_FAIL": "launch-timeout"}
        up = cli.run("up", "--provider", "multipass", "--name", "mreal", "--json", extra_env=extra)
        assert up.returncode == 0, up.stderr.decode()
        summary = json.loads(up.stdout)
        assert summary["ssh"] == "root@127.0.0.2:22"
        pinned = (cli.home / "vms" / "mreal" / "keys" / "ssh_host_ed25519_key.pub").read_text().split()[1]
        assert pinned in _ssh_ok(cli, "mreal", "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
        cli.ok("destroy", "-y", "--name", "mreal")
    finally:
        relay.close()


def test_wsl2_setup_script_gives_the_real_guest_vmsbx_sshd_on_loopback(world: tuple[Cli, Path]) -> None:
    cli, root = world
    rootfs = root / "rootfs.tar"
    rootfs.write_bytes(b"")
    up = cli.run(
        "up",
        "--provider",
        "wsl2",
        "--name",
        "wreal",
        "--json",
        extra_env={"VMSBX_VM_WSL_ROOTFS": str(rootfs)},
    )
    assert up.returncode == 0, up.stderr.decode()
    record = json.loads((cli.home / "vms" / "wreal" / "vm.json").read_text())
    assert json.loads(up.stdout)["ssh"] == f"root@127.0.0.1:{record['ssh_port']}"
    out = _ssh_ok(cli, "wreal", "sh", "-c", "cat /etc/wsl.conf; ss -Hltn; systemctl is-active vmsbx-sshd")
    assert "[interop]" in out and "appendWindowsPath=false" in out
    assert f"127.0.0.1:{record['ssh_port']}" in out and out.strip().endswith("active")
    assert f"0.0.0.0:{record['ssh_port']}" not in out  # vmsbx's sshd listens on loopback only
    cli.ok("destroy", "-y", "--name", "wreal")
