"""Connection.open_socket (transport/streamlocal.py) against the real sshd: a stream to a Unix
socket on the far side, connected by sshd itself, as the host agent reaches the guest agent."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsbx.errors import TransportError
from vmsbx.sshinfo import SSHInfo
from vmsbx.transport import Connection

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(60)]


@pytest.fixture
def conn(ssh_info: SSHInfo) -> Iterator[Connection]:
    with Connection(ssh_info, vm_name="test-vm") as connection:
        yield connection


class _UnixEcho:
    """Answers each connection with what it read, upper-cased, then the peer's uid."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with client:
                data = b"".join(iter(lambda: client.recv(65536), b""))  # noqa: B023
                creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                uid = int.from_bytes(creds[4:8], "little")
                client.sendall(data.upper() + f"|uid={uid}".encode())


def test_a_stream_reaches_the_far_sides_unix_socket(conn: Connection, tmp_path: Path) -> None:
    echo = _UnixEcho(tmp_path / "echo.sock")
    try:
        channel = conn.open_socket(str(tmp_path / "echo.sock"))
        payload = b"hello guest agent " * 20_000  # more than one window: the flow control holds
        sender = threading.Thread(target=lambda: (channel.sendall(payload), channel.shutdown_write()))
        sender.start()
        reply = b"".join(iter(lambda: channel.recv(65536), b""))
        sender.join()
        channel.close()
    finally:
        echo.server.close()
    assert reply == payload.upper() + b"|uid=0"  # sshd connected it as the login user, root
    # The connection goes on: commands still run after the stream.
    assert conn.run(["true"]).exit_code == 0


def test_a_missing_socket_is_a_transport_error_and_the_link_stays(conn: Connection, tmp_path: Path) -> None:
    with pytest.raises(TransportError, match=r"cannot connect to .*missing\.sock"):
        conn.open_socket(str(tmp_path / "missing.sock"))
    assert conn.run(["echo", "still"]).stdout == b"still\n"
