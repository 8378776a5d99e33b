"""The host agent process: `python -m vmsbx.agent --vm NAME`.

It connects to the guest once (pinned host key, the project's one retry policy), serves the CLI
on its endpoint (agent/endpoint.py: a Unix socket, or loopback TCP with a key), reconnects when
the link drops, and exits when the VM is gone or on request.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import select
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paramiko

from vmsbx.agent import endpoint
from vmsbx.agent.guestd import GuestAgentLink, launcher_verb
from vmsbx.agent.guestd import relay as relay_guest_call
from vmsbx.agent.protocol import (
    AgentStatus,
    ExecRequest,
    Frame,
    PutRequest,
    agent_build,
    recv_exact,
    recv_frame,
    recv_line,
    send_frame,
    send_line,
)
from vmsbx.agent.services import HostServices
from vmsbx.config.models import VMSettings
from vmsbx.contract import GUEST_ARGV
from vmsbx.errors import VmsbxError
from vmsbx.observe.sampler import Sampler
from vmsbx.paths import vm_dir
from vmsbx.providers import existing_provider_name, get_provider
from vmsbx.providers.base import Provider
from vmsbx.runs.record import runs_root
from vmsbx.transport import Connection, wait_for_ssh

log = logging.getLogger("vmsbx.agent")
BUILD = agent_build()
_RECONNECT_SECONDS = 60.0
_WATCH_SECONDS = 2.0


class HostAgent:
    def __init__(self, vm: str, provider: Provider, boot_timeout: float) -> None:
        self.vm = vm
        self.dir = vm_dir(vm)
        self.provider = provider
        self.boot_timeout = boot_timeout
        self._conn: Connection | None = None
        self._conn_lock = threading.Lock()
        self._stopping = threading.Event()
        self.services = HostServices(self.connection)
        self.guestd = GuestAgentLink()

    # -- status ------------------------------------------------------------------------------

    def write_status(self, phase: str, error: str | None = None, error_exit_code: int | None = None) -> None:
        status = AgentStatus(
            pid=os.getpid(),
            phase=phase,
            error=error,
            error_exit_code=error_exit_code,
            updated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        tmp = self.dir / "agent.json.tmp"
        tmp.write_text(status.model_dump_json())
        tmp.replace(self.dir / "agent.json")

    # -- connection --------------------------------------------------------------------------

    def connection(self, timeout: float = _RECONNECT_SECONDS) -> Connection:
        with self._conn_lock:
            if self._conn is not None and self._conn.is_alive():
                return self._conn
            if self._conn is not None:
                log.warning("SSH link to %s dropped; reconnecting", self.vm)
                with contextlib.suppress(Exception):
                    self._conn.close()
            info = self.provider.ssh_info(self.vm)
            started = time.monotonic()
            self._conn = wait_for_ssh(
                info,
                timeout=timeout,
                serial_tail=lambda: self.provider.serial_log_tail(self.vm),
                is_alive=self._vm_alive,
                vm_name=self.vm,
            )
            log.info("connected to %s:%s in %.1fs", info.host, info.port, time.monotonic() - started)
            conn = self._conn
        self.services.reforward(conn)
        return conn

    def _vm_alive(self) -> bool:
        try:
            self.provider.ssh_info(self.vm)
        except VmsbxError:
            return False
        return True

    # -- serving -----------------------------------------------------------------------------

    def serve(self) -> int:
        self.write_status("connecting")
        try:
            self.connection(timeout=self.boot_timeout)
        except VmsbxError as exc:
            log.error("cannot connect: %s", exc)
            self.write_status("failed", str(exc), exc.exit_code)
            return 1
        listener = endpoint.listen(self.dir, endpoint.transport())
        server = listener.sock
        server.settimeout(_WATCH_SECONDS)
        self.write_status("ready")
        log.info("serving on %s", server.getsockname())
        # Resource samples of live runs for `vmsbx top` and reports; idle while none is live.
        self.sampler = Sampler(self.vm, runs_root(), self._run_quietly)
        threading.Thread(target=self.sampler.run_forever, name="sampler", daemon=True).start()
        try:
            while not self._stopping.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    if not self._vm_alive():
                        log.info("VM %s is gone; agent exits", self.vm)
                        break
                    if self.services.active:
                        # Live runs reach their API through this link: restore it promptly.
                        with contextlib.suppress(VmsbxError):
                            self.connection()
                    continue
                threading.Thread(target=self._admit, args=(listener, client), daemon=True).start()
        finally:
            listener.close()
            self.write_status("stopped")
            self.services.close()
            if self._conn is not None:
                self._conn.close()
        self.sampler.stop()
        return 0

    def _run_quietly(self, argv: list[str], stdin: bytes) -> tuple[int, bytes]:
        result = self.connection().run(argv, stdin=stdin, timeout=10)
        return result.exit_code, result.stdout

    def _admit(self, listener: endpoint.Listener, client: socket.socket) -> None:
        if listener.admit(client):
            self._handle(client)
        else:
            log.warning("refused a connection that did not prove the agent key")
            client.close()

    def _handle(self, client: socket.socket) -> None:
        with client:
            try:
                request = recv_line(client)
                if request is None:
                    return
                op = request.get("op")
                if op == "ping":
                    send_line(client, {"ok": True, "pid": os.getpid(), "vm": self.vm, "build": BUILD})
                elif op == "shutdown":
                    send_line(client, {"ok": True})
                    self._stopping.set()
                elif op == "samples":
                    latest = self.sampler.latest()
                    send_line(client, {"ok": True, "samples": {k: v.model_dump() for k, v in latest.items()}})
                elif op == "exec":
                    self._exec(client, ExecRequest.model_validate(request))
                elif op == "exec_later":
                    self._exec_later(ExecRequest.model_validate({**request, "op": "exec"}))
                    send_line(client, {"ok": True})
                elif op == "put":
                    self._put(client, PutRequest.model_validate(request))
                elif op == "run_register":
                    send_line(client, {"ok": True, "ports": self.services.register_run(request)})
                elif op == "run_unregister":
                    self.services.unregister_run(str(request.get("run_id")))
                    send_line(client, {"ok": True})
                elif op == "run_usage":
                    send_line(client, {"ok": True, "usage": self.services.usage(str(request.get("run_id")))})
                else:
                    send_line(client, {"ok": False, "error": f"unknown op {op!r}"})
            except (OSError, ValueError) as exc:
                log.warning("client request failed: %s", exc)
            except VmsbxError as exc:
                with contextlib.suppress(OSError):
                    send_line(client, {"ok": False, "error": str(exc), "exit_code": exc.exit_code})

    def _put(self, client: socket.socket, request: PutRequest) -> None:
        """Receive `size` bytes from the CLI and write them to the guest over SFTP (atomic)."""
        data = recv_exact(client, request.size) if request.size else b""
        if data is None:
            return
        with tempfile.TemporaryDirectory(prefix="vmsbx-put-") as work:
            local = Path(work) / "payload"
            local.write_bytes(data)
            self.connection().put(local, request.remote, mode=request.mode)
        log.info("put %s (%d bytes)", request.remote, request.size)
        send_line(client, {"ok": True})

    def _exec_later(self, request: ExecRequest) -> None:
        """Run a launcher verb after the CLI has gone (an ended run's release): the CLI returns
        at once; the outcome is in the agent's log. Only launcher verbs: what a CLI may leave
        behind is what the launcher itself guards (the project's owner lock)."""
        if launcher_verb(request.argv, pty=request.pty) is None:
            raise VmsbxError("only a launcher verb can run after the CLI has gone")
        threading.Thread(target=self._drive_later, args=(request,), daemon=True).start()

    def _drive_later(self, request: ExecRequest) -> None:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            threading.Thread(target=self._exec_quietly, args=(theirs, request), daemon=True).start()
            try:
                recv_line(ours)
                send_frame(ours, Frame.STDIN_EOF)
                code, tail = None, b""
                while (frame := recv_frame(ours)) is not None:
                    kind, payload = frame
                    if kind is Frame.STDERR:
                        tail = (tail + payload)[-400:]
                    elif kind is Frame.EXIT:
                        code = json.loads(payload)["code"]
                        break
            except (OSError, ValueError, KeyError) as exc:
                code, tail = None, str(exc).encode()
        words = " ".join(request.argv[len(GUEST_ARGV) :][:2])
        if code == 0:
            log.info("later %s: done", words)
        else:
            log.warning("later %s: exit %s: %s", words, code, tail.decode(errors="replace").strip())

    def _exec_quietly(self, client: socket.socket, request: ExecRequest) -> None:
        try:
            self._exec(client, request)
        except (OSError, ValueError, VmsbxError) as exc:
            log.warning("a later call failed: %s", exc)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    def _exec(self, client: socket.socket, request: ExecRequest) -> None:
        verb = launcher_verb(request.argv, pty=request.pty)
        if verb is not None:
            guest_call = self.guestd.open(self.connection(), verb)
            if guest_call is not None:
                send_line(client, {"ok": True, "via": "guestd"})
                log.info("guestd %s", verb[0])
                relay_guest_call(guest_call, client, _client_to_channel)
                return
        channel = self.connection().open_channel(
            list(request.argv),
            pty=request.pty,
            term=request.term,
            size=(request.cols, request.rows),
        )
        send_line(client, {"ok": True, "via": "ssh"})
        log.info("exec %s", request.argv[0])
        pump = threading.Thread(target=_client_to_channel, args=(client, channel), daemon=True)
        pump.start()
        _channel_to_client(channel, client)
        # paramiko reports -1 when the channel closed without an exit status: the SSH link
        # dropped mid-command. Closing without an EXIT frame tells the CLI so (an EXIT would let
        # `attach` pass off a cut stream as the whole one; the command may well go on).
        code = channel.recv_exit_status() if channel.exit_status_ready() else -1
        if code == -1:
            log.warning("exec %s: the SSH link dropped before it ended", request.argv[0])
            channel.close()
            # The stdin pump still reads the CLI's socket: shut it, or the CLI waits forever.
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            return
        with contextlib.suppress(OSError):
            send_frame(client, Frame.EXIT, json.dumps({"code": code}).encode())
        channel.close()


def _client_to_channel(client: socket.socket, channel: paramiko.Channel) -> None:
    try:
        while True:
            frame = recv_frame(client)
            if frame is None:
                # The CLI went away: end the command rather than leave it orphaned.
                channel.close()
                return
            kind, payload = frame
            if kind is Frame.STDIN:
                channel.sendall(payload)
            elif kind is Frame.STDIN_EOF:
                channel.shutdown_write()
            elif kind is Frame.RESIZE:
                size: dict[str, Any] = json.loads(payload)
                channel.resize_pty(width=int(size["cols"]), height=int(size["rows"]))
    except (OSError, ValueError, EOFError):
        channel.close()


def _channel_to_client(channel: paramiko.Channel, client: socket.socket) -> None:
    while True:
        select.select([channel], [], [], 1.0)
        if channel.recv_stderr_ready():
            data = channel.recv_stderr(65536)
            if data:
                send_frame(client, Frame.STDERR, data)
        if channel.recv_ready():
            data = channel.recv(65536)
            if data:
                send_frame(client, Frame.STDOUT, data)
                continue
        if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
            return
        # A closed channel's pipe stays readable: test for data, not readability, or a link
        # that dropped mid-command would spin here forever.
        if channel.closed and not channel.recv_ready() and not channel.recv_stderr_ready():
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmsbx-agent")
    parser.add_argument("--vm", required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    # The agent writes only vmsbx's own state (status, pid, the runs' relay, network and sample
    # logs), never the user's files: private whatever umask the CLI that started it had.
    os.umask(0o077)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from vmsbx.logsetup import setup

    setup(0)
    provider_name = existing_provider_name(args.vm)
    if provider_name is None:
        log.error("VM %s does not exist", args.vm)
        return 1
    provider = get_provider(provider_name, VMSettings())
    pid_file = Path(vm_dir(args.vm)) / "agent.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        return HostAgent(args.vm, provider, args.timeout).serve()
    finally:
        pid_file.unlink(missing_ok=True)
