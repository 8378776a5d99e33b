"""The CLI-to-agent endpoint over real sockets, both kinds: the Unix socket (Linux, macOS) and
loopback TCP with a mutual key proof (Windows, where CPython has no AF_UNIX; forced here with
VMSBX_TEST_AGENT_TRANSPORT=tcp, and chosen on its own when the socket module lacks AF_UNIX)."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsbx.agent import endpoint
from vmsbx.agent.protocol import recv_line, send_line
from vmsbx.errors import ConfigError


def _echo_agent(listener: endpoint.Listener, admitted: list[bool]) -> threading.Thread:
    """Serve one connection as the agent would: handshake, then echo one request line."""

    def serve() -> None:
        client, _ = listener.sock.accept()
        with client:
            ok = listener.admit(client)
            admitted.append(ok)
            if ok:
                request = recv_line(client)
                send_line(client, {"ok": True, "echo": request})

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.fixture(params=["unix", "tcp"])
def kind(request: pytest.FixtureRequest) -> Iterator[endpoint.Transport]:
    yield request.param


def test_a_request_crosses_either_endpoint(tmp_path: Path, kind: endpoint.Transport) -> None:
    listener = endpoint.listen(tmp_path, kind)
    admitted: list[bool] = []
    thread = _echo_agent(listener, admitted)
    with endpoint.connect(tmp_path, kind, timeout=5) as sock:
        send_line(sock, {"op": "ping"})
        assert recv_line(sock) == {"ok": True, "echo": {"op": "ping"}}
    thread.join(5)
    assert admitted == [True]
    published = tmp_path / ("agent.sock" if kind == "unix" else "agent.endpoint")
    assert stat.S_IMODE(published.stat().st_mode) == 0o600  # this user only
    listener.close()
    assert not published.exists()


def test_tcp_endpoint_is_loopback_only_and_the_key_never_crosses_the_socket(tmp_path: Path) -> None:
    listener = endpoint.listen(tmp_path, "tcp")
    published = json.loads((tmp_path / "agent.endpoint").read_text())
    assert listener.sock.getsockname() == ("127.0.0.1", published["port"])
    seen = bytearray()
    # A client that records everything the agent sends during the handshake.
    admitted: list[bool] = []
    thread = _echo_agent(listener, admitted)
    with socket.create_connection(("127.0.0.1", published["port"]), timeout=5) as raw:
        challenge = recv_line(raw)
        assert challenge is not None
        seen += json.dumps(challenge).encode()
        ours = "ab" * 16
        good = endpoint.proof(published["key"], "cli", challenge["nonce"], ours)
        raw.sendall(json.dumps({"nonce": ours, "proof": good}).encode() + b"\n")
        answer = recv_line(raw)
        assert answer is not None
        seen += json.dumps(answer).encode()
        assert answer["proof"] == endpoint.proof(published["key"], "agent", ours, challenge["nonce"])
        send_line(raw, {"op": "ping"})
        assert recv_line(raw) == {"ok": True, "echo": {"op": "ping"}}
    thread.join(5)
    assert published["key"].encode() not in seen
    listener.close()


def test_a_client_without_the_key_is_refused_before_any_request(tmp_path: Path) -> None:
    listener = endpoint.listen(tmp_path, "tcp")
    port = json.loads((tmp_path / "agent.endpoint").read_text())["port"]
    admitted: list[bool] = []
    thread = _echo_agent(listener, admitted)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        challenge = recv_line(raw)
        assert challenge is not None
        wrong = endpoint.proof("00" * 32, "cli", challenge["nonce"], "cd" * 16)
        raw.sendall(json.dumps({"nonce": "cd" * 16, "proof": wrong}).encode() + b"\n")
        assert raw.recv(100) == b""  # closed: no proof of the agent, no request served
    thread.join(5)
    assert admitted == [False]
    listener.close()


def test_a_stale_endpoint_whose_port_another_program_took_gets_no_request(tmp_path: Path) -> None:
    # The agent died; its endpoint file is left; another local program now listens on that
    # port and plays the agent's part without the key. The CLI must send it nothing.
    impostor = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    impostor.bind(("127.0.0.1", 0))
    impostor.listen(1)
    port = impostor.getsockname()[1]
    (tmp_path / "agent.endpoint").write_text(json.dumps({"port": port, "key": "11" * 32}))
    received = bytearray()

    def play_agent() -> None:
        client, _ = impostor.accept()
        with client:
            send_line(client, {"nonce": "ee" * 16})
            hello = recv_line(client)
            received.extend(json.dumps(hello).encode())
            send_line(client, {"proof": "00" * 32})
            client.settimeout(2)
            try:
                while chunk := client.recv(4096):
                    received.extend(chunk)
            except TimeoutError:
                pass

    thread = threading.Thread(target=play_agent, daemon=True)
    thread.start()
    with pytest.raises(endpoint.HandshakeFailed, match="did not prove"):
        endpoint.connect(tmp_path, "tcp", timeout=5)
    thread.join(5)
    impostor.close()
    assert b'"op"' not in received and b"11" * 32 not in received


def test_no_af_unix_means_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMSBX_TEST_AGENT_TRANSPORT", raising=False)
    assert endpoint.transport() == "unix"
    monkeypatch.delattr(socket, "AF_UNIX")  # as on Windows
    assert endpoint.transport() == "tcp"


def test_a_bad_transport_name_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSBX_TEST_AGENT_TRANSPORT", "pipes")
    with pytest.raises(ConfigError, match="pipes"):
        endpoint.transport()


def test_a_damaged_endpoint_file_reads_as_no_agent(tmp_path: Path) -> None:
    (tmp_path / "agent.endpoint").write_text("{not json")
    with pytest.raises(OSError, match="damaged"):
        endpoint.connect(tmp_path, "tcp", timeout=1)
