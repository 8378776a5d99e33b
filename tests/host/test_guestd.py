"""The resident guest agent (provision/guest/guestd.py), run here as the guest runs it: the
bundle `vmsbx up` pushes, in a flat folder, started with python3 -S as root, its socket in a
root-only directory. Requests are made as the host agent makes them (vmsbx.agent.guestd's
header, then stdin, then a half-close)."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmsbx import contract
from vmsbx.guestbundle import guest_bundle


@dataclass
class Guestd:
    process: subprocess.Popen[bytes]
    socket: Path
    lib: Path
    version: str


@pytest.fixture
def guestd(tmp_path: Path) -> Iterator[Guestd]:
    if os.geteuid() != 0:
        pytest.fail("the guest agent test runs as root (as the guest agent does)")
    lib, run = tmp_path / "lib", tmp_path / "run"
    lib.mkdir()
    run.mkdir(mode=0o700)
    version, files = guest_bundle()
    for name, data in files.items():
        (lib / name).write_bytes(data)
    (lib / "VERSION").write_text(version)
    sock = run / "socket"
    process = subprocess.Popen(
        [sys.executable, "-S", str(lib / "guestd.py"), "--socket", str(sock)], stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        assert time.monotonic() < deadline, "the guest agent did not listen within 30 s"
        time.sleep(0.05)
    try:
        yield Guestd(process, sock, lib, version)
    finally:
        process.kill()
        process.wait()


@dataclass
class Reply:
    header: dict[str, object]
    stdout: bytes
    stderr: bytes
    code: int | None  # None: no EXIT frame came


def call(path: Path, version: str, argv: list[str], stdin: bytes = b"") -> Reply:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(str(path))
        header = json.dumps({"version": version, "argv": argv}).encode()
        sock.sendall(contract.GUESTD_REQUEST_HEADER.pack(len(header)) + header + stdin)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    return parse(data)


def parse(data: bytes) -> Reply:
    (size,) = contract.GUESTD_REQUEST_HEADER.unpack(data[:4])
    header, rest = json.loads(data[4 : 4 + size]), data[4 + size :]
    out, err, code = b"", b"", None
    while rest:
        kind, length = contract.FRAME_HEADER.unpack(rest[: contract.FRAME_HEADER.size])
        payload = rest[contract.FRAME_HEADER.size : contract.FRAME_HEADER.size + length]
        rest = rest[contract.FRAME_HEADER.size + length :]
        if kind == contract.FRAME_STDOUT:
            out += payload
        elif kind == contract.FRAME_STDERR:
            err += payload
        elif kind == contract.FRAME_EXIT:
            code = json.loads(payload)["code"]
            assert not rest, "nothing may follow the EXIT frame"
    return Reply(header, out, err, code)


def test_a_verb_runs_with_its_stdout_stderr_and_exit_code(guestd: Guestd) -> None:
    done = call(guestd.socket, guestd.version, ["no-such-verb", "x"])
    assert done.header == {"accepted": True}
    assert done.code == contract.EXIT_USAGE
    assert b"bad arguments: ['no-such-verb', 'x']" in done.stderr
    assert done.stdout == b""


def test_stdin_reaches_the_verb(guestd: Guestd) -> None:
    # `launch` reads its request line from stdin and refuses one that breaks the contract.
    done = call(guestd.socket, guestd.version, ["launch"], stdin=b'{"surprise": 1}\n')
    assert done.code == contract.EXIT_BAD_REQUEST
    assert b"unknown field(s) 'surprise'" in done.stderr


def test_a_large_stdin_and_output_pass_whole(guestd: Guestd) -> None:
    # `score` reads a whole unit file from stdin (through the agent's pipe and its flow
    # control) and prints systemd-analyze's verdict on it, or its error, as stdout/stderr.
    unit = b"[Service]\nExecStart=/bin/true\n" + b"# padding\n" * 200_000  # ~2 MB
    done = call(guestd.socket, guestd.version, ["score"], stdin=unit)
    assert done.code is not None
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["exposure"] > 0


def test_another_bundle_is_refused_and_a_newer_one_on_disk_restarts_it(guestd: Guestd) -> None:
    done = call(guestd.socket, "0" * 32, ["score"])
    assert done.header["accepted"] is False
    assert done.header["code"] == contract.EXIT_STALE
    assert done.code is None and not done.stdout and not done.stderr  # nothing ran
    assert guestd.process.poll() is None, "the same bundle is on disk: it keeps running"
    (guestd.lib / "VERSION").write_text("1" * 32)  # `vmsbx up` pushed a new bundle
    call(guestd.socket, "1" * 32, ["score"])
    assert guestd.process.wait(timeout=10) != 0  # ended itself: systemd starts the new code


def test_a_header_that_breaks_the_protocol_runs_nothing(guestd: Guestd) -> None:
    for header in (b"[]", b'{"version": "x"}', b'{"version": "x", "argv": [], "more": 1}', b"{nope"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(guestd.socket))
            sock.sendall(contract.GUESTD_REQUEST_HEADER.pack(len(header)) + header)
            sock.shutdown(socket.SHUT_WR)
            data = b"".join(iter(lambda: sock.recv(1 << 16), b""))
        done = parse(data)
        assert done.header["accepted"] is False and done.header["code"] == contract.EXIT_USAGE, header
        assert done.code is None
    huge = contract.GUESTD_REQUEST_MAX + 1
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(guestd.socket))
        sock.sendall(contract.GUESTD_REQUEST_HEADER.pack(huge))
        assert parse(sock.recv(1 << 16)).header["accepted"] is False


def _connect_as_nobody_with_root_file_access(path: Path) -> bytes:
    """Connect as uid 65534 but keep root's capabilities (so the 0700 directory is no wall):
    only the agent's own peer check stands between this process and the launcher."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_securebits, secbit_no_setuid_fixup = 28, 1 << 2
            assert libc.prctl(pr_set_securebits, secbit_no_setuid_fixup, 0, 0, 0) == 0
            os.setresuid(65534, 65534, 0)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(20)
                sock.connect(str(path))
                os.write(write, b"connected:")
                header = json.dumps({"version": "v", "argv": ["score"]}).encode()
                try:
                    sock.sendall(contract.GUESTD_REQUEST_HEADER.pack(len(header)) + header)
                    data = b"".join(iter(lambda: sock.recv(1 << 16), b""))
                except (ConnectionResetError, BrokenPipeError):  # closed with our bytes unread
                    data = b""
            os.write(write, b"answered:" + data)
        except BaseException as exc:
            os.write(write, f"failed:{exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    return result


def test_only_root_is_answered(guestd: Guestd) -> None:
    # It got through to the socket, and was closed with nothing said.
    assert _connect_as_nobody_with_root_file_access(guestd.socket) == b"connected:answered:"
    # Control: the same connection as root is served.
    assert call(guestd.socket, guestd.version, ["x"]).header == {"accepted": True}


def test_it_refuses_a_socket_directory_others_can_enter(tmp_path: Path) -> None:
    _version, files = guest_bundle()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "open").mkdir(mode=0o755)
    done = subprocess.run(
        [sys.executable, "-S", str(tmp_path / "guestd.py"), "--socket", str(tmp_path / "open" / "s")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert b"must be a directory of root's alone (0700)" in done.stderr
    assert not (tmp_path / "open" / "s").exists()
