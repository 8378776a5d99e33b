#!/usr/bin/python3
"""vmsbx session holder: the main process of a run's unit, inside the sandbox.

It starts the run's command (on a pseudo-terminal it owns, or on pipes), copies everything the
command prints to the journal (its own stdout/stderr, one line per record, stderr at priority 3)
and to a transcript, and lets clients attach and detach over a Unix socket without the command
noticing. A dropped SSH link therefore never hangs the program up.

Runs with the run's dynamic user and no privileges. Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import pty
import selectors
import signal
import socket
import struct
import sys
import termios
import time

# The frames and the paths the launcher also uses (the host↔guest contract, beside this file).
from contract import EXIT_FAILED
from contract import FRAME_EXIT as EXIT
from contract import FRAME_HEADER as HEADER
from contract import FRAME_RESIZE as RESIZE
from contract import FRAME_STDERR as STDERR
from contract import FRAME_STDIN as STDIN
from contract import FRAME_STDIN_EOF as STDIN_EOF
from contract import FRAME_STDOUT as STDOUT
from contract import HOLDER_DIR_INSIDE as HOLDER_DIR
from contract import SPEC_INSIDE as SPEC

TRANSCRIPT_MAX = 256 * 1024 * 1024
LINE_MAX = 16 * 1024
LINGER_SECONDS = 2.0  # how long background children may keep the output open after the command
# The calls both units deny by name (vmsbx.sandbox.systemd.DENIED_SYSCALLS), each with harmless
# arguments the kernel would refuse (a NULL pointer, fd -1, an unknown operation); per arch its
# number. systemd silently skips a name its libseccomp does not know, so these are tried for
# real before the command starts.
DENIED_SYSCALLS: dict[str, tuple[tuple[int, ...], dict[str, int]]] = {
    "io_uring_setup": ((0, 0), {"x86_64": 425, "aarch64": 425}),
    "io_uring_enter": ((-1, 0, 0, 0, 0, 0), {"x86_64": 426, "aarch64": 426}),
    "io_uring_register": ((-1, 0, 0, 0), {"x86_64": 427, "aarch64": 427}),
    "keyctl": ((-1, 0, 0, 0, 0), {"x86_64": 250, "aarch64": 219}),
    "add_key": ((0, 0, 0, 0, 0), {"x86_64": 248, "aarch64": 217}),
    "request_key": ((0, 0, 0, 0), {"x86_64": 249, "aarch64": 218}),
}
# What a seccomp filter answers (systemd: EPERM; the nsjail policy: ENOSYS for io_uring).
FILTERED = (errno.EPERM, errno.ENOSYS)
REFUSED_CODE = EXIT_FAILED  # the command never started: vmsbx's own failure


class JournalWriter:
    """Line-buffers one stream to the journal with a fixed syslog priority prefix."""

    def __init__(self, fd: int, priority: int) -> None:
        self.fd = fd
        self.prefix = f"<{priority}>".encode()
        self.pending = b""

    def write(self, data: bytes) -> None:
        self.pending += data
        while True:
            cut = self.pending.find(b"\n")
            if cut < 0:
                if len(self.pending) >= LINE_MAX:
                    cut = LINE_MAX - 1
                else:
                    return
            line, self.pending = self.pending[: cut + 1], self.pending[cut + 1 :]
            if not line.endswith(b"\n"):
                line += b"\n"
            _write_all(self.fd, self.prefix + line)

    def flush(self) -> None:
        if self.pending:
            _write_all(self.fd, self.prefix + self.pending + b"\n")
            self.pending = b""


def _wait_listening(port: int, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue
        except OSError:
            return
        view = view[written:]


def unfiltered_syscalls() -> list[str]:
    """The denied calls that reach the kernel here (a filter that did not apply): empty when
    every one is answered as a filter answers. An unknown architecture counts as all reaching."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    arch = os.uname().machine  # platform.machine(), without importing platform
    reached = []
    for name, (args, numbers) in DENIED_SYSCALLS.items():
        if arch not in numbers:
            reached.append(f"{name} (no syscall number known for {arch})")
            continue
        ctypes.set_errno(0)
        result = libc.syscall(ctypes.c_long(numbers[arch]), *(ctypes.c_long(arg) for arg in args))
        if result >= 0 or ctypes.get_errno() not in FILTERED:
            reached.append(name)
    return reached


def _pidfd(pid: int) -> int | None:
    """A pidfd of the command (readable once it has exited), or None where the kernel has
    none (before 5.3): the holder then looks every 0.2 s."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.greeted = False


class Holder:
    def __init__(self, spec: dict[str, object]) -> None:
        self.spec = spec
        self.sel = selectors.DefaultSelector()
        self.clients: list[Client] = []
        os.makedirs(HOLDER_DIR, mode=0o700, exist_ok=True)
        # Read back (for a client's backlog) through this same fd, never by name: the command
        # shares this uid and can swap the name for a FIFO or a link to confuse its own holder.
        self.transcript = open(os.path.join(HOLDER_DIR, "transcript"), "a+b")  # noqa: SIM115
        self.transcript_size = 0
        self.journal = {STDOUT: JournalWriter(1, 6), STDERR: JournalWriter(2, 3)}
        self.child_stdin: int | None = None
        self.outputs: dict[int, int] = {}
        self.master: int | None = None
        self.bridge_pids: list[int] = []

    # -- child ---------------------------------------------------------------------------

    def start_bridges(self) -> None:
        """The run's side of each host service it may reach: a loopback port in the run's own
        network namespace, forwarded to the bridge socket the launcher made on /tmp."""
        bridges = dict(self.spec.get("bridges") or {})  # type: ignore[call-overload]
        for name, port in sorted(bridges.items()):
            sock = f"/tmp/.vmsbx-{name}.sock"
            argv = ["socat", f"TCP-LISTEN:{int(port)},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{sock}"]
            pid = os.fork()
            if pid == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.setsid()
                try:
                    os.execvp(argv[0], argv)
                finally:
                    os._exit(127)
            self.bridge_pids.append(pid)

    def wait_bridges(self) -> None:
        """Each bridge's port listens before the command starts (they start up together)."""
        deadline = time.monotonic() + 5.0
        for port in sorted(dict(self.spec.get("bridges") or {}).values()):  # type: ignore[call-overload]
            _wait_listening(int(port), max(0.0, deadline - time.monotonic()))

    def seed_home(self, home: str) -> None:
        """Files the host seeds a fresh HOME with (settings; never credentials)."""
        files = dict(self.spec.get("home_files") or {})  # type: ignore[call-overload]
        for rel, content in sorted(files.items()):
            parts = str(rel).split("/")
            if not rel or str(rel).startswith("/") or any(part in ("", ".", "..") for part in parts):
                continue
            path = os.path.join(home, *parts)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(str(content))

    def start_child(self) -> int:
        argv = [str(a) for a in self.spec["argv"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in dict(self.spec.get("env") or {}).items()}  # type: ignore[call-overload]
        home = str(self.spec.get("home", "/tmp/.vmsbx-home"))
        os.makedirs(home, mode=0o700, exist_ok=True)
        self.seed_home(home)
        self.wait_bridges()  # started in run(), before the syscall probe: their start-up overlaps it
        base = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "USER": "agent",
            "LOGNAME": "agent",
            "SHELL": "/bin/bash",
        }
        if self.spec.get("tty"):
            base["TERM"] = str(self.spec.get("term") or "xterm-256color")
        base.update(env)
        cwd = str(self.spec.get("cwd") or os.getcwd())
        if self.spec.get("tty"):
            pid, master = pty.fork()
            if pid == 0:
                self._exec(argv, base, cwd)
            self.master = master
            self._resize(int(str(self.spec.get("cols") or 80)), int(str(self.spec.get("rows") or 24)))
            self.child_stdin = master
            self.outputs = {master: STDOUT}
            return pid
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            self._exec(argv, base, cwd)
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        self.child_stdin = in_w
        self.outputs = {out_r: STDOUT, err_r: STDERR}
        return pid

    @staticmethod
    def _exec(argv: list[str], env: dict[str, str], cwd: str) -> None:
        try:
            os.chdir(cwd)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            os.execvpe(argv[0], argv, env)
        except FileNotFoundError:
            os.write(2, f"vmsbx: {argv[0]}: command not found\n".encode())
            os._exit(127)
        except PermissionError:
            os.write(2, f"vmsbx: {argv[0]}: permission denied\n".encode())
            os._exit(126)
        except OSError as exc:
            os.write(2, f"vmsbx: {argv[0]}: {exc.strerror}\n".encode())
            os._exit(126)

    def _resize(self, cols: int, rows: int) -> None:
        if self.master is not None:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # -- output ----------------------------------------------------------------------------

    def emit(self, kind: int, data: bytes) -> None:
        self.journal[kind].write(data)
        record = frame(kind, data)
        if self.transcript_size < TRANSCRIPT_MAX:
            self.transcript.write(record)
            self.transcript.flush()
            self.transcript_size += len(record)
        for client in list(self.clients):
            if client.greeted:
                self._send(client, record)

    def _send(self, client: Client, data: bytes) -> None:
        try:
            client.sock.setblocking(True)
            client.sock.sendall(data)
            client.sock.setblocking(False)
        except OSError:
            self._drop(client)

    def _drop(self, client: Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(client.sock)
            client.sock.close()

    # -- clients ---------------------------------------------------------------------------

    def accept(self, server: socket.socket) -> None:
        sock, _ = server.accept()
        sock.setblocking(False)
        client = Client(sock)
        self.clients.append(client)
        self.sel.register(sock, selectors.EVENT_READ, ("client", client))

    def client_input(self, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.inbuf += data
        if not client.greeted:
            cut = client.inbuf.find(b"\n")
            if cut < 0:
                return
            client.inbuf = client.inbuf[cut + 1 :]
            client.greeted = True
            self._send_backlog(client)
        while len(client.inbuf) >= HEADER.size:
            kind, length = HEADER.unpack(client.inbuf[: HEADER.size])
            if len(client.inbuf) < HEADER.size + length:
                return
            payload = client.inbuf[HEADER.size : HEADER.size + length]
            client.inbuf = client.inbuf[HEADER.size + length :]
            if kind == STDIN and self.child_stdin is not None:
                _write_all(self.child_stdin, payload)
            elif kind == STDIN_EOF and self.child_stdin is not None:
                if self.master is not None:
                    _write_all(self.master, b"\x04")
                else:
                    os.close(self.child_stdin)
                    self.child_stdin = None
            elif kind == RESIZE:
                size = json.loads(payload)
                self._resize(int(size["cols"]), int(size["rows"]))

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> int:
        sock_path = os.path.join(HOLDER_DIR, "holder.sock")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(sock_path)
        os.chmod(sock_path, 0o600)
        server.listen(8)
        server.setblocking(False)
        self.sel.register(server, selectors.EVENT_READ, ("server", None))
        self.start_bridges()
        reached = unfiltered_syscalls()
        if reached:
            self.emit(
                STDERR,
                f"vmsbx: refusing to run: the sandbox's syscall filter lets {', '.join(reached)} through "
                "(the guest's systemd or libseccomp does not know them); use a guest with a newer "
                "systemd and libseccomp (2.5 or later)\n".encode(),
            )
            return self.finish(REFUSED_CODE << 8)
        pid = self.start_child()
        for fd in self.outputs:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, ("output", fd))
        # The command's end as an event (readable pidfd), not found by polling every 0.2 s:
        # the run's unit stops (and the host gets its verdict) as soon as it exits.
        pidfd = _pidfd(pid)
        if pidfd is not None:
            self.sel.register(pidfd, selectors.EVENT_READ, ("child", None))
        status: int | None = None
        exited_at = 0.0
        while True:
            if status is None:
                done, wait_status = os.waitpid(pid, os.WNOHANG)
                if done:
                    status, exited_at = wait_status, time.monotonic()
                    if pidfd is not None:  # readable from now on: it would wake every select
                        self.sel.unregister(pidfd)
                        os.close(pidfd)
                        pidfd = None
            # Background children may keep the output open; give them a moment, then go
            # (the unit's KillMode=control-group ends them with us).
            if status is not None and not self.outputs:
                break
            lingered = time.monotonic() - exited_at
            if status is not None and lingered > LINGER_SECONDS:
                self._drain_ready_output()
                break
            if status is not None:
                timeout: float | None = LINGER_SECONDS - lingered + 0.01
            else:
                timeout = None if pidfd is not None else 0.2
            for key, _ in self.sel.select(timeout=timeout):
                role, obj = key.data
                if role == "child":
                    continue  # reaped at the top of the loop
                if role == "server":
                    self.accept(server)
                elif role == "client":
                    self.client_input(obj)
                else:
                    self.read_output(obj)
        return self.finish(status)

    def finish(self, status: int | None) -> int:
        """The command's end (a wait status): to the journal, the transcript and every client."""
        for writer in self.journal.values():
            writer.flush()
        code = os.waitstatus_to_exitcode(status) if status is not None else 1
        exit_code = 128 - code if code < 0 else code
        record = frame(EXIT, json.dumps({"code": exit_code}).encode())
        self.transcript.write(record)
        for client in list(self.clients):
            if client.greeted:
                self._send(client, record)
            else:
                # Connected but not yet served: it has seen nothing, so it gets everything.
                self._send_backlog(client)
            self._drop(client)
        self.transcript.close()
        return exit_code

    def _send_backlog(self, client: Client) -> None:
        """Everything the transcript holds so far, read through the holder's own fd."""
        self.transcript.flush()
        fd, offset = self.transcript.fileno(), 0
        while chunk := os.pread(fd, 65536, offset):
            self._send(client, chunk)
            offset += len(chunk)

    def _drain_ready_output(self) -> None:
        """Read what is already buffered on every output (what the command wrote before it
        exited is there, however slow this holder was to get to it)."""
        for fd in list(self.outputs):
            for _ in range(4096):
                if fd not in self.outputs:
                    break
                before = self.transcript_size
                self.read_output(fd)
                if self.transcript_size == before and fd in self.outputs:
                    break

    def read_output(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the pty's other side is closed
            data = b""
        if not data:
            self.sel.unregister(fd)
            self.outputs.pop(fd)
            if fd != self.master:
                os.close(fd)
            return
        self.emit(self.outputs[fd], data)


def main() -> int:
    with open(SPEC, "rb") as handle:
        spec = json.load(handle)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return Holder(spec).run()


if __name__ == "__main__":
    sys.exit(main())
