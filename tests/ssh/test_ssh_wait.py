"""`wait_for_ssh`: what it retries, what it never retries, and what a timeout says."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd_server import HOST_KEY_ALIAS, Sshd, free_port

from vmsbx.errors import BootTimeout, HostKeyMismatch
from vmsbx.sshinfo import SSHInfo
from vmsbx.transport import (
    SERIAL_TAIL_LINES,
    SSHAuthFailed,
    generate_keypair,
    wait_for_ssh,
    write_known_hosts,
)

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(60)]


class _SlamServer:
    """Accepts TCP and closes at once, like QEMU's user-mode forward before the guest listens."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            client.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def slam() -> Iterator[_SlamServer]:
    server = _SlamServer()
    yield server
    server.close()


SERIAL = "\n".join(f"serial line {n:02d}" for n in range(1, 51)) + "\n"


def test_wait_for_ssh_connects_to_live_sshd(ssh_info: SSHInfo) -> None:
    connection = wait_for_ssh(ssh_info, timeout=10)
    try:
        assert connection.is_alive()
        assert connection.run(["echo", "up"]).stdout == b"up\n"
    finally:
        connection.close()


def test_accept_then_close_is_retried_until_boot_timeout(ssh_info: SSHInfo, slam: _SlamServer) -> None:
    info = ssh_info.model_copy(update={"port": slam.port})
    started = time.monotonic()
    with pytest.raises(BootTimeout) as caught:
        wait_for_ssh(info, timeout=2.0, serial_tail=lambda: SERIAL)
    elapsed = time.monotonic() - started

    assert 1.0 < elapsed < 6
    assert slam.accepted >= 3, "backoff starts at 0.25 s, so 2 s allows several attempts"
    message = str(caught.value)
    assert f"{slam.port}" in message
    assert "last error:" in message
    assert "serial line 50" in message
    assert f"serial line {50 - SERIAL_TAIL_LINES + 1:02d}" in message
    assert f"serial line {50 - SERIAL_TAIL_LINES:02d}" not in message
    assert caught.value.exit_code == 6


def test_refused_port_times_out_with_empty_serial_log(ssh_info: SSHInfo) -> None:
    info = ssh_info.model_copy(update={"port": free_port()})
    with pytest.raises(BootTimeout, match="refused") as caught:
        wait_for_ssh(info, timeout=1.0)
    assert "serial console printed nothing" in str(caught.value)


def test_guest_that_comes_up_late_is_reached(sshd: Sshd, ssh_info: SSHInfo) -> None:
    # A loopback relay that refuses for a while, then starts forwarding to the real sshd:
    # the shape of a guest whose sshd starts a second after the port forward exists.
    port = free_port()

    def relay_later() -> None:
        time.sleep(1.0)
        with socket.create_server(("127.0.0.1", port)) as server:
            client, _ = server.accept()
            upstream = socket.create_connection(("127.0.0.1", sshd.port))

            def pipe(src: socket.socket, dst: socket.socket) -> None:
                try:
                    while data := src.recv(65536):
                        dst.sendall(data)
                except OSError:
                    pass
                finally:
                    dst.close()

            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
            pipe(client, upstream)

    threading.Thread(target=relay_later, daemon=True).start()
    info = ssh_info.model_copy(update={"port": port})
    # The pin is by alias, so the changed port needs no new known_hosts entry.
    connection = wait_for_ssh(info, timeout=10)
    try:
        assert connection.run(["true"]).exit_code == 0
    finally:
        connection.close()


def test_dead_vm_stops_the_wait_at_once(ssh_info: SSHInfo, slam: _SlamServer) -> None:
    info = ssh_info.model_copy(update={"port": slam.port})
    started = time.monotonic()
    with pytest.raises(BootTimeout, match="stopped") as caught:
        wait_for_ssh(info, timeout=30, is_alive=lambda: False, serial_tail=lambda: "kernel panic")
    assert time.monotonic() - started < 1
    assert "kernel panic" in str(caught.value)
    assert slam.accepted == 0


def test_vm_dying_mid_wait_is_noticed_quickly(ssh_info: SSHInfo, slam: _SlamServer) -> None:
    info = ssh_info.model_copy(update={"port": slam.port})
    dies_at = time.monotonic() + 1.0
    with pytest.raises(BootTimeout, match="stopped"):
        wait_for_ssh(info, timeout=30, is_alive=lambda: time.monotonic() < dies_at)
    assert time.monotonic() - dies_at < 1.5


def test_host_key_mismatch_is_never_retried(ssh_info: SSHInfo, tmp_path: Path) -> None:
    write_known_hosts(ssh_info.known_hosts, HOST_KEY_ALIAS, generate_keypair(tmp_path / "i", "x"))
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch):
        wait_for_ssh(ssh_info, timeout=20)
    assert time.monotonic() - started < 3


def test_unpinned_host_is_never_retried(ssh_info: SSHInfo) -> None:
    ssh_info.known_hosts.write_text("")
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch):
        wait_for_ssh(ssh_info, timeout=20)
    assert time.monotonic() - started < 1


def test_auth_failure_is_retried_only_for_the_grace_period(ssh_info: SSHInfo, tmp_path: Path) -> None:
    wrong_key = tmp_path / "not_authorized"
    generate_keypair(wrong_key, "x")
    info = ssh_info.model_copy(update={"key_file": wrong_key})
    started = time.monotonic()
    with pytest.raises(SSHAuthFailed):
        wait_for_ssh(info, timeout=20, auth_grace=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 6


def test_auth_that_starts_working_within_grace_succeeds(
    sshd: Sshd, ssh_info: SSHInfo, tmp_path: Path
) -> None:
    # Begin with a key sshd does not accept, then install the right one, as cloud-init would.
    late_key = tmp_path / "late"
    generate_keypair(late_key, "x")
    info = ssh_info.model_copy(update={"key_file": late_key})

    def install_key() -> None:
        time.sleep(1.0)
        late_key.write_bytes(sshd.client_key.read_bytes())

    threading.Thread(target=install_key, daemon=True).start()
    connection = wait_for_ssh(info, timeout=15, auth_grace=8)
    try:
        assert connection.run(["true"]).exit_code == 0
    finally:
        connection.close()


def test_broken_serial_reader_does_not_hide_the_timeout(ssh_info: SSHInfo) -> None:
    def broken() -> str:
        raise OSError("serial.log vanished")

    info = ssh_info.model_copy(update={"port": free_port()})
    with pytest.raises(BootTimeout, match="could not read the serial log"):
        wait_for_ssh(info, timeout=0.5, serial_tail=broken)
