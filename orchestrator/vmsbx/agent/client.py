"""The CLI's side of the host agent: find it, start it, talk to it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from vmsbx.agent import endpoint
from vmsbx.agent.protocol import (
    AgentStatus,
    ExecRequest,
    Frame,
    FrameWriter,
    PutRequest,
    agent_build,
    recv_frame,
    recv_line,
    send_line,
)
from vmsbx.bounded import BoundedBuffer, MiB, TailBuffer
from vmsbx.errors import AgentError, BootTimeout, HostKeyMismatch, TransportError
from vmsbx.paths import vm_dir

RUN_OUTPUT_MAX = 16 * MiB  # `run` is for short commands; longer output streams through `exec`
PING_SECONDS = 10.0


class ByteSink(Protocol):
    """Where a guest command's output goes: a binary file, or a view such as StreamView."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class AgentClient:
    """Talks to the agent of one VM over its endpoint (agent.endpoint explains which)."""

    def __init__(self, vm: str) -> None:
        self.vm = vm
        self.dir = vm_dir(vm)
        self.transport = endpoint.transport()
        self.last_via = ""  # how the last exec was carried in the guest (see exec)

    def _connect(self, timeout: float | None = 5.0) -> socket.socket:
        try:
            return endpoint.connect(self.dir, self.transport, timeout)
        except endpoint.HandshakeFailed as exc:
            raise AgentError(
                f"something other than the host agent of VM {self.vm!r} answers on its port ({exc})",
                hint=f"`vmsbx up --name {self.vm}` starts a new agent on a new port",
            ) from exc
        except OSError as exc:
            raise AgentError(
                f"the host agent of VM {self.vm!r} is not running ({exc.strerror or exc})",
                hint=f"`vmsbx up --name {self.vm}` starts it",
            ) from exc

    def ping(self) -> bool:
        """True if a live agent of this VM answers and runs the same code as this CLI."""
        return self.build() == agent_build()

    def build(self) -> str | None:
        """The code build the live agent of this VM runs, or None if none answers."""
        try:
            # A dead agent refuses at once; this bounds only a hung one. 2 s was too short on a
            # loaded machine: right after a reconnect (paramiko's handshake is CPU-bound) a live
            # agent answered late, the run was refused as "not up", and `up` replaced the agent.
            with self._connect(timeout=PING_SECONDS) as sock:
                send_line(sock, {"op": "ping"})
                reply = recv_line(sock)
        except (AgentError, OSError, ValueError):
            return None
        if not (reply and reply.get("ok")):
            return None
        return str(reply.get("build"))

    def shutdown(self, *, wait: float = 10.0) -> None:
        """Ask the agent to exit and wait until it has; kill it if it does not. No-op if absent."""
        pid = self.pid()
        with (
            contextlib.suppress(AgentError, OSError, ValueError),
            self._connect(timeout=2.0) as sock,
        ):
            send_line(sock, {"op": "shutdown"})
            recv_line(sock)
        if pid is None:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                # Windows has no SIGKILL; its os.kill with SIGTERM is TerminateProcess.
                os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))

    def pid(self) -> int | None:
        try:
            return int((self.dir / "agent.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def status(self) -> AgentStatus | None:
        try:
            return AgentStatus.model_validate_json((self.dir / "agent.json").read_text())
        except (OSError, ValueError):
            return None

    def samples(self) -> dict[str, dict[str, object]]:
        """The sampler's newest sample per run id (as `Sample` dicts); raises if the agent is down."""
        with self._connect(timeout=5.0) as sock:
            send_line(sock, {"op": "samples"})
            reply = recv_line(sock, limit=1 << 22)
        if not reply or not reply.get("ok") or not isinstance(reply.get("samples"), dict):
            raise AgentError(
                f"the host agent of VM {self.vm!r} gave no samples", hint="`vmsbx up` restarts it"
            )
        samples: dict[str, dict[str, object]] = reply["samples"]
        return samples

    def put(self, remote: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write `data` to `remote` in the guest (SFTP through the agent, atomic rename)."""
        request = PutRequest(remote=remote, mode=mode, size=len(data))
        with self._connect(timeout=60) as sock:
            send_line(sock, request.model_dump())
            sock.sendall(data)
            reply = recv_line(sock)
        if not reply or not reply.get("ok"):
            raise TransportError(f"could not write {remote} in the guest: {reply}", hint="run `vmsbx up`")

    def call(self, request: dict[str, Any], *, timeout: float = 60) -> dict[str, Any]:
        """One request/reply op (run_register, run_unregister, run_usage)."""
        with self._connect(timeout=timeout) as sock:
            send_line(sock, request)
            reply = recv_line(sock)
        if not reply or not reply.get("ok"):
            error = reply.get("error") if reply else "no answer"
            raise AgentError(f"the host agent refused {request.get('op')!r}: {error}", hint="run `vmsbx up`")
        return reply

    def exec_later(self, argv: list[str]) -> None:
        """Have the agent run a launcher call after this process has gone (no output, no wait)."""
        self.call(ExecRequest(argv=tuple(argv)).model_dump() | {"op": "exec_later"})

    def run(
        self, argv: list[str], *, stdin: bytes = b"", max_output: int = RUN_OUTPUT_MAX
    ) -> tuple[int, bytes, bytes]:
        """Run argv in the guest and collect its output (for short commands): stdout of at most
        `max_output` bytes (TransportError past it), the last 1 MiB of stderr."""
        out, err = BoundedBuffer(max_output, f"output from {argv[0]!r}"), TailBuffer(1 << 20)
        code = self.exec(argv, stdin=stdin, stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def exec(
        self,
        argv: list[str],
        *,
        stdin: BinaryIO | bytes | None,
        stdout: ByteSink,
        stderr: ByteSink,
        pty: bool = False,
        size: tuple[int, int] = (80, 24),
        on_open: Callable[[FrameWriter], None] | None = None,
    ) -> int:
        """Run argv in the guest through the agent; stream output; return the exit code."""
        request = ExecRequest(argv=tuple(argv), pty=pty, cols=size[0], rows=size[1])
        sock = self._connect(timeout=None)
        with sock:
            send_line(sock, request.model_dump())
            reply = recv_line(sock)
            if reply is None:
                raise AgentError("the host agent closed the connection", hint="run `vmsbx up` again")
            if not reply.get("ok"):
                raise TransportError(str(reply.get("error")), hint="run `vmsbx up` to reconnect")
            # "guestd": the resident guest agent took it; "ssh": an SSH session in the guest.
            self.last_via = str(reply.get("via", "ssh"))
            writer = FrameWriter(sock)
            if isinstance(stdin, bytes):
                for start in range(0, len(stdin), 1 << 16):
                    writer.send(Frame.STDIN, stdin[start : start + (1 << 16)])
                writer.send(Frame.STDIN_EOF)
            elif stdin is not None:
                threading.Thread(target=_pump_stdin, args=(stdin, writer), daemon=True).start()
            else:
                writer.send(Frame.STDIN_EOF)
            if on_open is not None:
                on_open(writer)
            while True:
                frame = recv_frame(sock)
                if frame is None:
                    raise TransportError(
                        "the connection to the guest dropped before the command finished",
                        hint="check `vmsbx status`",
                    )
                kind, payload = frame
                if kind is Frame.STDOUT:
                    stdout.write(payload)
                    stdout.flush()
                elif kind is Frame.STDERR:
                    stderr.write(payload)
                    stderr.flush()
                elif kind is Frame.EXIT:
                    code: int = json.loads(payload)["code"]
                    return code


def send_resize(writer: FrameWriter, cols: int, rows: int) -> None:
    """Tell the agent the terminal changed size (for --tty sessions)."""
    writer.send(Frame.RESIZE, json.dumps({"cols": cols, "rows": rows}).encode())


def _pump_stdin(stdin: BinaryIO, writer: FrameWriter) -> None:
    fd = stdin.fileno()
    with contextlib.suppress(OSError):
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                writer.send(Frame.STDIN_EOF)
                return
            writer.send(Frame.STDIN, chunk)


def _alive(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether process `pid` still runs, on Linux, macOS (no /proc) and Windows."""
    if sys.platform == "win32":
        return _alive_windows(pid)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return True  # no /proc here (macOS): kill(0) found it
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has exited


if sys.platform == "win32":

    def _alive_windows(pid: int) -> bool:
        # os.kill(pid, 0) on Windows would send CTRL_C_EVENT (0) to the process: ask the kernel.
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
        finally:  # 259: STILL_ACTIVE
            kernel32.CloseHandle(handle)


def ensure_agent(
    vm: str,
    *,
    boot_timeout: float,
    progress: Callable[[str], None] = lambda _m: None,
) -> AgentClient:
    """Return a client of a live agent for `vm`, starting one (and waiting for SSH) if needed."""
    client = AgentClient(vm)
    if client.ping():
        return client
    client.shutdown(wait=2.0)  # a hung or half-dead agent from before
    (client.dir / "agent.json").unlink(missing_ok=True)
    progress("waiting for SSH")
    log = (client.dir / "agent.log").open("ab")
    with log:
        subprocess.Popen(
            [sys.executable, "-m", "vmsbx.agent", "--vm", vm, "--timeout", str(boot_timeout)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this CLI and its terminal
            close_fds=True,
        )
    deadline = time.monotonic() + boot_timeout + 30
    while time.monotonic() < deadline:
        status = client.status()
        if status is not None and status.phase == "failed":
            if status.error_exit_code == HostKeyMismatch.exit_code:
                raise HostKeyMismatch(status.error or "the guest presented another host key")
            raise BootTimeout(status.error or "the guest did not answer SSH")
        if status is not None and status.phase == "ready":
            running = client.build()
            if running == agent_build():
                return client
            if running is not None:  # not worth a wait to the deadline: it will not change
                raise AgentError(
                    f"the host agent of VM {vm!r} runs other vmsbx code than this command "
                    "(vmsbx changed while it started)",
                    hint="run `vmsbx up` again: it replaces the agent",
                )
        time.sleep(0.2)
    raise BootTimeout(
        f"the host agent of VM {vm!r} did not become ready in {boot_timeout:.0f} s",
        hint=f"see {client.dir / 'agent.log'}",
    )
