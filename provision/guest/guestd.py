#!/usr/bin/python3
"""vmsbx guest agent: the launcher's verbs without a process start per call. Root, in the VM.

Every guest call used to be an SSH session, a shell, a Python start and the launcher's imports
(0.6-1.5 s each under TCG, four per run). This service has the launcher and the modules its
verbs import loaded once; the host opens a direct-streamlocal channel of its SSH connection to
GUESTD_SOCKET (sshd connects it in-process: no fork, no shell) and sends one request:

  request   a big-endian length, that much JSON {"version": BUNDLE, "argv": [VERB, ARG…]},
            then the verb's stdin until the host half-closes;
  reply     a length-prefixed JSON {"accepted": true} (or false with an "error" and a "code"),
            then the verb's stdout and stderr as frames, then one FRAME_EXIT {"code": N}.

Each request is served by a forked copy (the "handler") that forks the verb itself (the
"worker") with pipes for its stdin, stdout and stderr, exactly as sshd gives a command: the
verbs run unchanged, a verb's child that inherits stdout cannot write into the reply's
framing, and a worker that dies takes nothing else with it.

Who may ask: the socket's directory is root's alone (0700, made by systemd) and the service
answers only a peer whose SO_PEERCRED uid is 0 — sshd for vmsbx's root login. A run is never
root in the guest (a DynamicUser, or nsjail's outside uid), so even a run that could see the
path is refused. The service reads no path a run could write: the verbs open those as before.

Versioned by the bundle's hash (VERSION, written last at provisioning): a request for another
bundle is refused with EXIT_STALE, and if a newer bundle is on disk the service ends itself so
that systemd (Restart=always) starts it with the new code. The host then uses plain SSH for
that call.

  guestd.py [--socket PATH]     (the unit runs it without arguments)
"""

from __future__ import annotations

import contextlib
import ctypes  # noqa: F401 (the launcher's mount(2) calls)
import errno
import json
import os
import selectors
import shutil  # noqa: F401
import signal
import socket
import stat
import sys
import tempfile  # noqa: F401
import threading

# Loaded once here, so that no request pays for them: the launcher and what its verbs import
# lazily (each import is what a plain `guest.py` call would pay on every start).
import launcher
import nsjail_prep  # noqa: F401
import wsync  # noqa: F401
from contract import (
    EXIT_FAILED,
    EXIT_STALE,
    EXIT_USAGE,
    FRAME_EXIT,
    FRAME_HEADER,
    FRAME_STDERR,
    FRAME_STDOUT,
    GUESTD_REQUEST_HEADER,
    GUESTD_REQUEST_MAX,
    GUESTD_SOCKET,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ARGV_MAX = 64  # arguments of one verb; the longest today (`bundle ID BASE…`) has a few
ARG_MAX = 4096
HEADER_SECONDS = 30.0  # a peer that connects and says nothing is dropped
CHUNK = 1 << 16


class BadRequest(Exception):
    """A request that breaks the protocol: refused before anything runs."""


def bundle_version() -> str:
    """The hash of the bundle on disk (VERSION is written last when vmsbx provisions)."""
    try:
        with open(os.path.join(HERE, "VERSION"), "rb") as file:
            return file.read(128).decode("ascii", "replace").strip()
    except OSError:
        return ""


def notify_ready() -> None:
    """sd_notify(READY=1) by hand (Type=notify): `systemctl restart` returns only once the
    socket listens, so the host's next call never meets a missing socket."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(b"READY=1", address)


def listen(path: str) -> socket.socket:
    """Bind the socket in its directory, which must be root's alone (fail closed: a directory
    another user can write or enter would let them replace or reach the socket)."""
    parent = os.path.dirname(path)
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
        raise SystemExit(f"vmsbx-guestd: {parent} must be a directory of root's alone (0700)")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a socket left by a service that was killed
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(64)
    return server


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], sys.byteorder)


def serve(path: str) -> int:
    version = bundle_version()
    server_pid = os.getpid()
    server = listen(path)
    # Handlers are reaped by the kernel; each handler puts SIGCHLD back for its own worker.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    notify_ready()
    while True:
        try:
            conn, _ = server.accept()
        except InterruptedError:
            continue
        if peer_uid(conn) != 0:
            conn.close()  # not root: never sshd for vmsbx; nothing is read from it
            continue
        pid = os.fork()
        if pid == 0:
            code = EXIT_FAILED
            try:
                server.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                code = handle(conn, version, server_pid)
            except BaseException as exc:  # a handler never returns into the accept loop
                with contextlib.suppress(Exception):
                    sys.stderr.write(f"vmsbx-guestd: request failed: {exc!r}\n")
            finally:
                os._exit(code)
        conn.close()


def recv_exact(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise BadRequest("the request ended early")
        data += chunk
    return bytes(data)


def read_request(conn: socket.socket) -> tuple[str, list[str]]:
    """The request's header, strictly: exactly `version` and `argv`, a few bounded strings."""
    conn.settimeout(HEADER_SECONDS)
    (size,) = GUESTD_REQUEST_HEADER.unpack(recv_exact(conn, GUESTD_REQUEST_HEADER.size))
    if size > GUESTD_REQUEST_MAX:
        raise BadRequest(f"a request header of {size} bytes (at most {GUESTD_REQUEST_MAX})")
    try:
        header = json.loads(recv_exact(conn, size))
    except ValueError as exc:
        raise BadRequest(f"the request header is not JSON: {exc}") from None
    conn.settimeout(None)
    if not isinstance(header, dict) or set(header) != {"version", "argv"}:
        raise BadRequest("the request header must have exactly the fields version and argv")
    version, argv = header["version"], header["argv"]
    if not isinstance(version, str) or not isinstance(argv, list) or not 1 <= len(argv) <= ARGV_MAX:
        raise BadRequest("version must be a string and argv a list of 1 to 64 strings")
    for arg in argv:
        if not isinstance(arg, str) or len(arg) > ARG_MAX or "\0" in arg:
            raise BadRequest("each argument must be a string of at most 4096 characters, without NUL")
    return version, argv


def send_reply(conn: socket.socket, reply: dict[str, object]) -> None:
    data = json.dumps(reply).encode()
    conn.sendall(GUESTD_REQUEST_HEADER.pack(len(data)) + data)


def frame(kind: int, payload: bytes) -> bytes:
    return FRAME_HEADER.pack(kind, len(payload)) + payload


def handle(conn: socket.socket, version: str, server: int) -> int:
    """One request, in a handler forked by the service `server` (its pid)."""
    try:
        wanted, argv = read_request(conn)
    except (BadRequest, OSError) as exc:
        with contextlib.suppress(Exception):
            send_reply(conn, {"accepted": False, "code": EXIT_USAGE, "error": str(exc)[:400]})
        return EXIT_USAGE
    if wanted != version:
        error = f"guestd runs bundle {version!r}, not {wanted!r}"
        send_reply(conn, {"accepted": False, "code": EXIT_STALE, "error": error})
        # Newer code on disk: end the service, systemd starts it anew. Only the service that
        # forked this handler: after a restart, an orphaned handler's parent is someone else.
        if bundle_version() != version and os.getppid() == server:
            os.kill(server, signal.SIGTERM)
        return EXIT_STALE
    send_reply(conn, {"accepted": True})
    return Handler(conn, argv).run()


class Handler:
    """One verb in a worker process, its stdio carried over the connection."""

    def __init__(self, conn: socket.socket, argv: list[str]) -> None:
        self.conn = conn
        self.argv = argv

    def run(self) -> int:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        worker = os.fork()
        if worker == 0:
            _worker(self.argv, in_r, out_w, err_w)
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        pidfd = os.pidfd_open(worker)
        # The host's bytes go to the worker's stdin in a thread of their own (blocking both
        # ways: the pipe's and the channel's windows are the flow control).
        threading.Thread(target=_feed, args=(self.conn, in_w), daemon=True).start()
        try:
            self._relay(out_r, err_r, pidfd)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
            # The host went away: close the pipes, so the worker meets EPIPE as under sshd.
            os.close(out_r)
            os.close(err_r)
            os.waitpid(worker, 0)
            return EXIT_FAILED
        code = _exit_code(os.waitpid(worker, 0)[1])
        self.conn.sendall(frame(FRAME_EXIT, json.dumps({"code": code}).encode()))
        return 0

    def _relay(self, out_r: int, err_r: int, pidfd: int) -> None:
        """The worker's output as frames until it has ended."""
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        sel = selectors.DefaultSelector()
        sel.register(out_r, selectors.EVENT_READ, FRAME_STDOUT)
        sel.register(err_r, selectors.EVENT_READ, FRAME_STDERR)
        sel.register(pidfd, selectors.EVENT_READ, None)
        while True:
            for key, _events in sel.select():
                if key.data is None:
                    # Ended: its own output is all in the pipes now; a process it left behind
                    # that still holds them does not keep the reply open.
                    for fd, kind in ((out_r, FRAME_STDOUT), (err_r, FRAME_STDERR)):
                        if fd in sel.get_map():
                            while chunk := _read(fd):
                                self.conn.sendall(frame(kind, chunk))
                    return
                chunk = _read(key.fd)
                if chunk == b"":
                    sel.unregister(key.fd)
                elif chunk is not None:
                    self.conn.sendall(frame(key.data, chunk))


def _feed(conn: socket.socket, in_w: int) -> None:
    """The host's stdin to the worker until the host half-closes (or the worker stops reading)."""
    try:
        while chunk := conn.recv(CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(in_w, view) :]
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            os.close(in_w)


def _read(fd: int) -> bytes | None:
    """One chunk of a non-blocking pipe: b'' at its end, None when nothing is there now."""
    try:
        return os.read(fd, CHUNK)
    except (BlockingIOError, InterruptedError):
        return None


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it


def _worker(argv: list[str], stdin: int, stdout: int, stderr: int) -> None:
    """The verb, in a process of its own with stdio as sshd would give it. Never returns."""
    code = EXIT_FAILED
    try:
        os.setsid()
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the connection and the other pipes
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = launcher.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
    except BaseException as exc:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"vmsbx-guest: {exc!r}\n")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> int:
    path = GUESTD_SOCKET
    if len(argv) == 2 and argv[0] == "--socket":
        path = argv[1]
    elif argv:
        sys.stderr.write("usage: guestd.py [--socket PATH]\n")
        return EXIT_USAGE
    return serve(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
