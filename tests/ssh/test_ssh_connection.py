"""`Connection` against a real sshd: commands, files, forwards, and the host-key pin."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from sshd_server import HOST_KEY_ALIAS, Sshd, free_port

from vmsbx.errors import ConfigError, HostKeyMismatch, TransportError
from vmsbx.sshinfo import SSHInfo
from vmsbx.transport import (
    CommandResult,
    Connection,
    SSHAuthFailed,
    SSHUnreachable,
    fingerprint,
    generate_keypair,
    read_pinned_key,
    write_known_hosts,
)

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(60)]


@pytest.fixture
def conn(ssh_info: SSHInfo) -> Iterator[Connection]:
    with Connection(ssh_info, vm_name="test-vm") as connection:
        yield connection


# -- the pinned client -----------------------------------------------------------------------


def test_client_rejects_unknown_hosts_and_holds_only_the_pin(conn: Connection, ssh_info: SSHInfo) -> None:
    client = conn.fabric.client
    assert isinstance(client._policy, paramiko.RejectPolicy)
    assert len(client._system_host_keys) == 0
    pinned = client.get_host_keys().lookup(f"[127.0.0.1]:{ssh_info.port}")
    assert pinned is not None
    assert list(pinned.values()) == [read_pinned_key(ssh_info.known_hosts, HOST_KEY_ALIAS)]
    assert conn.is_alive()


def test_open_is_idempotent_and_close_repeatable(ssh_info: SSHInfo) -> None:
    connection = Connection(ssh_info)
    connection.open()
    transport = connection.fabric.client.get_transport()
    connection.open()
    assert connection.fabric.client.get_transport() is transport
    connection.close()
    connection.close()
    assert not connection.is_alive()
    with pytest.raises(TransportError, match="not open"):
        connection.run(["true"])
    connection.open()
    assert connection.run(["true"]).exit_code == 0
    connection.close()


def test_host_key_mismatch_names_both_fingerprints(sshd: Sshd, ssh_info: SSHInfo, tmp_path: Path) -> None:
    impostor_line = generate_keypair(tmp_path / "impostor", "x")
    write_known_hosts(ssh_info.known_hosts, HOST_KEY_ALIAS, impostor_line)
    expected = fingerprint(read_pinned_key(ssh_info.known_hosts, HOST_KEY_ALIAS))
    write_known_hosts(tmp_path / "real", HOST_KEY_ALIAS, sshd.host_public_line)
    presented = fingerprint(read_pinned_key(tmp_path / "real", HOST_KEY_ALIAS))

    with pytest.raises(HostKeyMismatch) as caught:
        Connection(ssh_info, vm_name="vm-one").open(timeout=5)

    message = str(caught.value)
    assert expected in message
    assert presented in message
    assert expected != presented
    assert "vmsbx destroy vm-one" in message
    assert "impersonating" in message
    assert caught.value.exit_code == 7


def test_empty_known_hosts_is_refused(ssh_info: SSHInfo) -> None:
    ssh_info.known_hosts.write_text("")
    with pytest.raises(HostKeyMismatch, match="no host key is pinned"):
        Connection(ssh_info).open(timeout=5)


def test_pin_under_another_alias_is_refused(sshd: Sshd, ssh_info: SSHInfo) -> None:
    # The key is right but filed under the address, as TOFU would have done: still refused.
    write_known_hosts(ssh_info.known_hosts, "127.0.0.1", sshd.host_public_line)
    with pytest.raises(HostKeyMismatch):
        Connection(ssh_info).open(timeout=5)


def test_known_hosts_file_works_for_openssh_with_host_key_alias(
    sshd: Sshd, ssh_info: SSHInfo, ssh_binary: str
) -> None:
    result = subprocess.run(
        [
            ssh_binary,
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={ssh_info.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            f"HostKeyAlias={ssh_info.host_key_alias}",
            "-i",
            str(ssh_info.key_file),
            "-p",
            str(ssh_info.port),
            f"{ssh_info.user}@{ssh_info.host}",
            "echo",
            "pinned",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pinned\n"


def test_only_the_vm_key_is_offered_never_agent_or_home_keys(
    sshd: Sshd, ssh_info: SSHInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make the authorized key available every other way paramiko could find it: as a default
    # identity in ~/.ssh and through a running ssh-agent. The connection must still fail.
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    for name in ("id_ed25519", "id_ed25519.pub"):
        src = sshd.client_key.with_name(sshd.client_key.name + name.removeprefix("id_ed25519"))
        (home / ".ssh" / name).write_bytes(src.read_bytes())
        (home / ".ssh" / name).chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not agent_sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(agent_sock)}
        subprocess.run(["ssh-add", str(sshd.client_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(agent_sock))
        wrong_key = tmp_path / "not_authorized"
        generate_keypair(wrong_key, "x")
        info = ssh_info.model_copy(update={"key_file": wrong_key})

        with pytest.raises(SSHAuthFailed) as caught:
            Connection(info).open(timeout=5)
        assert caught.value.exit_code == 8
    finally:
        agent.terminate()
        agent.wait(timeout=5)


def test_user_ssh_config_is_ignored(
    ssh_info: SSHInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        "Host *\n  Port 1\n  User nobody\n  ProxyCommand false\n  ForwardAgent yes\n"
    )
    monkeypatch.setenv("HOME", str(home))
    with Connection(ssh_info) as connection:
        assert connection.run(["id", "-un"]).stdout == b"root\n"


def test_missing_client_key_names_the_fix(ssh_info: SSHInfo, tmp_path: Path) -> None:
    info = ssh_info.model_copy(update={"key_file": tmp_path / "gone"})
    with pytest.raises(TransportError, match="does not exist") as caught:
        Connection(info, vm_name="vm-one").open()
    assert "vmsbx destroy vm-one" in str(caught.value)


@pytest.mark.parametrize("host", ["root@127.0.0.1", "127.0.0.1:22"])
def test_host_with_shorthand_separators_is_rejected(ssh_info: SSHInfo, host: str) -> None:
    info = ssh_info.model_copy(update={"host": host})
    with pytest.raises(ConfigError):
        Connection(info).open()


def test_refused_port_is_unreachable(ssh_info: SSHInfo) -> None:
    info = ssh_info.model_copy(update={"port": free_port()})
    with pytest.raises(SSHUnreachable):
        Connection(info).open(timeout=2)


# -- run -------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, 127, 254, 255])
def test_run_returns_exit_codes_without_raising(conn: Connection, code: int) -> None:
    result = conn.run(["sh", "-c", f"exit {code}"])
    assert isinstance(result, CommandResult)
    assert result.exit_code == code
    assert result.ok is (code == 0)
    assert result.argv == ("sh", "-c", f"exit {code}")
    assert result.duration >= 0


def test_run_reports_missing_command_as_127(conn: Connection) -> None:
    result = conn.run(["definitely-not-a-command-vmsbx"])
    assert result.exit_code == 127
    assert b"not found" in result.stderr


def test_command_killed_by_signal_has_no_exit_status(conn: Connection) -> None:
    assert conn.run(["sh", "-c", "kill -9 $$"]).exit_code == -1


def test_run_keeps_stdout_and_stderr_bytes_exact(conn: Connection) -> None:
    result = conn.run(["sh", "-c", r"printf 'a\000b\377\r\n'; printf 'e\001rr' >&2; exit 4"])
    assert result.stdout == b"a\x00b\xff\r\n"
    assert result.stderr == b"e\x01rr"
    assert result.exit_code == 4


HOSTILE_ARGS = [
    "a; rm -rf /",
    "$(id)",
    "`id`",
    "${HOME}",
    "it's",
    '"double"',
    "back\\slash",
    "new\nline",
    "  spaces  ",
    "*",
    "",
    "-n",
    "|| true &",
    "ünïcödé",
]


def test_arguments_reach_remote_argv_literally(conn: Connection) -> None:
    result = conn.run(["printf", "%s\n", *HOSTILE_ARGS])
    assert result.exit_code == 0
    assert result.stdout.decode() == "".join(f"{arg}\n" for arg in HOSTILE_ARGS)


def test_arguments_count_is_preserved(conn: Connection) -> None:
    result = conn.run(["sh", "-c", 'echo "$#"', "sh", *HOSTILE_ARGS])
    assert result.stdout == f"{len(HOSTILE_ARGS)}\n".encode()


def test_run_delivers_stdin_and_closes_it(conn: Connection) -> None:
    payload = os.urandom(1 << 20)
    result = conn.run(["cat"], stdin=payload)
    assert result.exit_code == 0
    assert result.stdout == payload


def test_run_without_stdin_reads_eof(conn: Connection) -> None:
    result = conn.run(["cat"], timeout=10)
    assert result.exit_code == 0
    assert result.stdout == b""


def test_large_interleaved_output_does_not_deadlock(conn: Connection) -> None:
    script = "for i in 1 2 3 4; do head -c 1000000 /dev/zero; head -c 1000000 /dev/zero >&2; done"
    result = conn.run(["sh", "-c", script], timeout=30)
    assert len(result.stdout) == 4_000_000
    # Both streams were drained to the end (no deadlock); stderr keeps only its last MiB, the
    # cap `run` puts on what the guest may make the host hold.
    assert len(result.stderr) == 1 << 20


def test_run_timeout_names_the_command(conn: Connection) -> None:
    started = time.monotonic()
    with pytest.raises(TransportError, match="sleep 30") as caught:
        conn.run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 5
    assert "0.5s" in str(caught.value)
    # The connection survives a timed-out command.
    assert conn.run(["true"]).exit_code == 0


def test_connection_dropped_mid_command_is_a_transport_error(ssh_info: SSHInfo) -> None:
    with Connection(ssh_info) as connection:
        # $PPID of the command is the sshd process serving this connection: killing it is the
        # guest vanishing mid-command.
        with pytest.raises(TransportError, match="dropped while running"):
            connection.run(["sh", "-c", "kill -9 $PPID; sleep 10"], timeout=20)
        assert not connection.is_alive()


def test_run_rejects_a_string_instead_of_argv(conn: Connection) -> None:
    with pytest.raises(TypeError, match="list of arguments"):
        conn.run("ls -l")
    with pytest.raises(ValueError, match="empty"):
        conn.run([])
    with pytest.raises(ValueError, match="NUL"):
        conn.run(["echo", "a\0b"])


def test_parallel_runs_on_one_connection(conn: Connection) -> None:
    results: dict[int, CommandResult] = {}

    def work(n: int) -> None:
        results[n] = conn.run(["sh", "-c", f"sleep 0.2; echo {n}"])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {n: r.stdout for n, r in results.items()} == {n: f"{n}\n".encode() for n in range(8)}


# -- stream and open_channel ------------------------------------------------------------------


class _TimedSink(io.RawIOBase):
    """Records when each chunk arrived, to prove output is copied live."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, bytes]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.chunks.append((time.monotonic(), bytes(data)))
        return len(data)

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)


def test_stream_copies_output_live(conn: Connection) -> None:
    out, err = _TimedSink(), _TimedSink()
    code = conn.stream(
        ["sh", "-c", "echo first; echo oops >&2; sleep 1; echo second; exit 5"],
        stdout=out,
        stderr=err,
    )
    finished = time.monotonic()
    assert code == 5
    assert out.data == b"first\nsecond\n"
    assert err.data == b"oops\n"
    first_arrival = out.chunks[0][0]
    assert finished - first_arrival > 0.7, "stdout was buffered until the command exited"


def test_stream_pumps_stdin(conn: Connection) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    code = conn.stream(
        ["sh", "-c", "tr a-z A-Z; echo done >&2"],
        stdout=out,
        stderr=err,
        stdin=io.BytesIO(b"hello\nworld\n"),
    )
    assert code == 0
    assert out.getvalue() == b"HELLO\nWORLD\n"
    assert err.getvalue() == b"done\n"


def _drain(chan: paramiko.Channel) -> bytes:
    data = b""
    while chunk := chan.recv(65536):
        data += chunk
    return data


def test_open_channel_with_pty_and_size(conn: Connection) -> None:
    chan = conn.open_channel(["sh", "-c", "tty; stty size; echo $TERM"], pty=True, size=(100, 40))
    try:
        lines = _drain(chan).decode().split("\r\n")
        assert chan.recv_exit_status() == 0
    finally:
        chan.close()
    assert lines[0].startswith("/dev/pts/")
    assert lines[1] == "40 100"
    assert lines[2] == "xterm-256color"


def test_open_channel_without_pty_is_plain_exec(conn: Connection) -> None:
    chan = conn.open_channel(["sh", "-c", "tty; cat"])
    try:
        chan.sendall(b"ping")
        chan.shutdown_write()
        output = _drain(chan)
        assert chan.recv_exit_status() == 0
    finally:
        chan.close()
    assert output == b"not a tty\nping"


# -- files -----------------------------------------------------------------------------------


def test_put_get_round_trip_with_mode(conn: Connection, tmp_path: Path) -> None:
    remote_dir = conn.run(["mktemp", "-d"]).stdout.decode().strip()
    local = tmp_path / "payload.bin"
    payload = os.urandom(300_000)
    local.write_bytes(payload)
    remote = f"{remote_dir}/with space's.bin"
    try:
        conn.put(local, remote, mode=0o640)
        assert conn.run(["stat", "-c", "%a", remote]).stdout == b"640\n"
        assert conn.run(["ls", "-A", remote_dir]).stdout == b"with space's.bin\n"

        back = tmp_path / "back.bin"
        conn.get(remote, back)
        assert back.read_bytes() == payload

        # Overwrite in place: the new content replaces the old whole.
        local.write_bytes(b"second")
        conn.put(local, remote, mode=0o600)
        conn.get(remote, back)
        assert back.read_bytes() == b"second"
        assert conn.run(["stat", "-c", "%a", remote]).stdout == b"600\n"
        assert not list(tmp_path.glob(".*vmsbx-tmp"))
    finally:
        conn.run(["rm", "-rf", remote_dir])


def test_put_without_mode_uses_remote_default(conn: Connection, tmp_path: Path) -> None:
    local = tmp_path / "f"
    local.write_text("x")
    remote = conn.run(["mktemp", "-u"]).stdout.decode().strip()
    try:
        conn.put(local, remote)
        mode = int(conn.run(["stat", "-c", "%a", remote]).stdout, 8)
        assert stat.S_IMODE(mode) & 0o600 == 0o600
    finally:
        conn.run(["rm", "-f", remote])


def test_put_into_missing_directory_fails_clearly(conn: Connection, tmp_path: Path) -> None:
    local = tmp_path / "f"
    local.write_text("x")
    with pytest.raises(TransportError, match="/nonexistent-vmsbx/dir/f"):
        conn.put(local, "/nonexistent-vmsbx/dir/f")


def test_put_missing_local_file_fails_clearly(conn: Connection, tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="not a file"):
        conn.put(tmp_path / "absent", "/tmp/absent")


def test_get_missing_remote_file_leaves_nothing_behind(conn: Connection, tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with pytest.raises(TransportError, match="/nonexistent-vmsbx-file"):
        conn.get("/nonexistent-vmsbx-file", downloads / "out")
    assert list(downloads.iterdir()) == []


# -- remote forwarding -----------------------------------------------------------------------


class _EchoServer:
    """A loopback TCP echo server on its own thread; counts connections."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(client,), daemon=True).start()

    def _echo(self, client: socket.socket) -> None:
        with client:
            while data := client.recv(65536):
                client.sendall(self.prefix + data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer(b"")
    yield server
    server.close()


def _round_trip(port: int, message: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(65536):
            received += data
        return received


def test_remote_forward_reaches_local_echo_server(conn: Connection, echo: _EchoServer) -> None:
    with conn.forward_remote("127.0.0.1", 0, "127.0.0.1", echo.port) as forward:
        assert forward.remote_port > 0
        assert forward.remote_port != echo.port
        payload = os.urandom(200_000)
        assert _round_trip(forward.remote_port, payload) == payload
        # And from a process in the "guest", through its own loopback.
        result = conn.run(
            [
                "python3",
                "-c",
                "import socket,sys;s=socket.create_connection(('127.0.0.1',int(sys.argv[1])));"
                "s.sendall(b'from guest');s.shutdown(1);print(s.recv(100).decode())",
                str(forward.remote_port),
            ],
            timeout=20,
        )
        assert result.stdout == b"from guest\n", result.stderr
    assert echo.connections == 2


def test_closing_one_forward_keeps_the_other(conn: Connection) -> None:
    first, second = _EchoServer(b"1:"), _EchoServer(b"2:")
    try:
        forward_one = conn.forward_remote("127.0.0.1", 0, "127.0.0.1", first.port)
        forward_two = conn.forward_remote("127.0.0.1", 0, "127.0.0.1", second.port)
        assert _round_trip(forward_one.remote_port, b"a") == b"1:a"
        assert _round_trip(forward_two.remote_port, b"b") == b"2:b"

        forward_one.close()
        forward_one.close()
        with pytest.raises(OSError):
            _round_trip(forward_one.remote_port, b"a")
        assert _round_trip(forward_two.remote_port, b"c") == b"2:c"
        forward_two.close()
    finally:
        first.close()
        second.close()


def test_forward_to_a_dead_local_port_drops_only_that_connection(conn: Connection, echo: _EchoServer) -> None:
    with conn.forward_remote("127.0.0.1", 0, "127.0.0.1", free_port()) as dead:
        assert _round_trip(dead.remote_port, b"x") == b""
    assert conn.run(["true"]).exit_code == 0


def test_forward_on_a_taken_port_is_refused(conn: Connection, sshd: Sshd) -> None:
    with pytest.raises(TransportError, match="refused to listen"):
        conn.forward_remote("127.0.0.1", sshd.port, "127.0.0.1", 9)


def test_close_cancels_forwards(ssh_info: SSHInfo, echo: _EchoServer) -> None:
    connection = Connection(ssh_info)
    connection.open()
    forward = connection.forward_remote("127.0.0.1", 0, "127.0.0.1", echo.port)
    assert _round_trip(forward.remote_port, b"z") == b"z"
    connection.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            _round_trip(forward.remote_port, b"z")
        except OSError:
            return
        time.sleep(0.1)
    pytest.fail("the guest still listens after close()")


def test_a_frozen_guest_is_detected_and_the_link_closed(ssh_info: SSHInfo) -> None:
    import signal

    with Connection(ssh_info, probe_every=0.2, dead_after=2.0) as connection:
        time.sleep(1.0)
        assert connection.is_alive()  # probes asked and answered
        # $PPID of a command is the sshd process serving this connection: stopping it is the
        # guest freezing (its TCP stack still holds the connection open; nothing answers).
        pid = int(connection.run(["sh", "-c", "echo $PPID"]).stdout)
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(TransportError):
                connection.run(["true"], timeout=60)
            assert time.monotonic() - started < 15  # not the minutes until TCP gives up
            assert not connection.is_alive()
        finally:
            os.kill(pid, signal.SIGCONT)


def test_probes_and_forward_requests_never_take_each_others_replies(ssh_info: SSHInfo) -> None:
    # paramiko keeps one pending-reply slot per transport; probes every few ms make overlaps with
    # the forwards' own requests certain if they were not serialized.
    with Connection(ssh_info, probe_every=0.002, dead_after=30.0) as connection:
        for _ in range(25):
            forward = connection.forward_remote("127.0.0.1", 0, "127.0.0.1", 9)
            assert forward.remote_port > 0
            forward.close()
        assert connection.is_alive()
