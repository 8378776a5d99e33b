"""One pinned SSH connection to a guest: run commands, copy files, forward a port.

Host-key checking is never off. Fabric's `Connection` builds its `SSHClient` with
`AutoAddPolicy` (trust on first use); we swap in a client that knows exactly the key pinned for
this VM, loads no system known_hosts, and rejects everything else. Authentication uses only the
VM's own key file: no ssh-agent, no ~/.ssh keys, no ~/.ssh/config.

Commands are argv lists; the remote command line is `shlex.join(argv)` and nothing else, so an
argument reaches the guest's argv byte for byte whatever quotes, `;` or `$()` it holds.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, NoReturn, Self, cast

import paramiko
from pydantic import BaseModel, ConfigDict, Field

from vmsbx.bounded import BoundedBuffer, MiB, TailBuffer
from vmsbx.errors import ConfigError, HostKeyMismatch, TransportError
from vmsbx.sshinfo import SSHInfo
from vmsbx.sshkeys import fingerprint, read_pinned_keys
from vmsbx.transport.streamlocal import open_streamlocal

__all__ = [
    "CommandResult",
    "Connection",
    "RemoteForward",
    "SSHAuthFailed",
    "SSHUnreachable",
]

_log = logging.getLogger(__name__)

_CHUNK = 65536
RUN_OUTPUT_MAX = 16 * MiB  # what `run` holds of a command's stdout
_TMP_SUFFIX = ".vmsbx-tmp"
# NAT in front of the guest (QEMU user networking, WSL, cloud firewalls) drops idle flows;
# a keepalive well under the usual 5-minute NAT timeout keeps long agent sessions up.
_KEEPALIVE_SECONDS = 30
# A guest whose sshd answers no request for this long is taken as frozen and the link is closed:
# without it, a hung guest kept every command waiting ~10 minutes (until TCP gave up), since
# paramiko's own keepalive asks for no reply. Minutes, not seconds: a guest under a memory or
# fork-bomb wall test is slow, not dead.
_DEAD_AFTER_SECONDS = 180.0
# A busy guest under software emulation can take tens of seconds to fork a session (measured
# at load 13 on 2 cores): slow, not dead. A dropped link fails faster, through the transport.
_CHANNEL_OPEN_TIMEOUT = 90.0
_LOCAL_CONNECT_TIMEOUT = 10.0


class SSHUnreachable(TransportError):
    """Nothing usable answered: TCP refused/reset/timed out or the SSH handshake broke off.
    Expected while a guest boots, so `wait_for_ssh` retries it."""


class SSHAuthFailed(TransportError):
    """The guest's sshd rejected the VM's client key. `wait_for_ssh` retries it briefly, because
    sshd can start before cloud-init has installed the key."""


class CommandResult(BaseModel):
    """What one remote command did. A non-zero exit is a result, not an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    argv: tuple[str, ...] = Field(description="The command as run; remote line is shlex.join(argv).")
    exit_code: int = Field(
        description="Remote exit status; -1 when the command ended without one (killed by signal)."
    )
    stdout: bytes = Field(description="Everything the command wrote to stdout, unmodified.")
    stderr: bytes = Field(description="Everything the command wrote to stderr, unmodified.")
    duration: float = Field(ge=0, description="Wall-clock seconds from exec to exit status.")

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0


class _RefuseUnpinned(paramiko.RejectPolicy):
    """RejectPolicy that keeps the key the server presented, for an error message that names it.

    paramiko only consults the policy when no key is pinned under the name it looks up, which our
    pre-flight check makes impossible; this is the belt to that pair of braces.
    """

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        raise _UnpinnedHostKey(hostname, key)


class _UnpinnedHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"no host key pinned for {hostname}")
        self.hostname = hostname
        self.key = key


def _command_line(argv: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Validate argv and quote it once, here, at the edge."""
    # A str is a Sequence[str]: run("ls -l") would otherwise quietly run `l s ' ' - l`.
    if isinstance(argv, str | bytes):
        raise TypeError(f"argv must be a list of arguments, not a single string: {argv!r}")
    args = tuple(argv)
    if not args:
        raise ValueError("argv is empty")
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"argv items must be str, got {type(arg).__name__}: {arg!r}")
        if "\0" in arg:
            raise ValueError(f"argument contains a NUL byte, which no remote argv can hold: {arg!r}")
    return args, shlex.join(args)


def _host_key_lookup_name(host: str, port: int) -> str:
    """The name paramiko's SSHClient.connect looks the server key up under."""
    return host if port == 22 else f"[{host}]:{port}"


class Connection:
    """A pinned SSH connection to one guest, built from its `SSHInfo`.

    `open()` MUST be a no-op when already connected; `close()` MUST be safe to call repeatedly.
    Use as a context manager to open on entry and close on exit.
    """

    def __init__(
        self,
        info: SSHInfo,
        *,
        vm_name: str | None = None,
        probe_every: float = _KEEPALIVE_SECONDS,
        dead_after: float = _DEAD_AFTER_SECONDS,
    ) -> None:
        self.info = info
        self.vm_name = vm_name
        self._probe_every = probe_every
        self._dead_after = dead_after
        # paramiko keeps one pending reply slot per transport: requests that wait for a reply
        # (liveness probes, forward requests and cancels) must not overlap.
        self._global_lock = threading.Lock()
        # fabric is untyped (mypy override ignores it): its Connection is Any here.
        self._fabric: Any = None
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._forwards: dict[int, RemoteForward] = {}
        self._forwards_lock = threading.Lock()
        self._sftp_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def target(self) -> str:
        """`user@host:port`, for messages."""
        return f"{self.info.user}@{self.info.host}:{self.info.port}"

    @property
    def fabric(self) -> Any:
        """The underlying `fabric.Connection` (its `.client` is our pinned SSHClient).

        Raises `TransportError` when not open."""
        self._active_transport()
        return self._fabric

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self, timeout: float = 10) -> None:
        """Connect and authenticate, checking the host key against the pinned one.

        No-op when already connected. Raises `HostKeyMismatch` (wrong or no pinned key),
        `SSHAuthFailed`, `SSHUnreachable`, or `TransportError`."""
        if self.is_alive():
            return
        self.close()
        host = self.info.host
        # fabric reads "user@host:port" shorthand out of the host string; a host holding either
        # separator would be silently split into something else.
        if "@" in host or host.count(":") == 1:
            raise ConfigError(
                f"SSH host {host!r} is not a plain hostname or address",
                hint="the provider must report the host and port separately",
            )
        pinned = read_pinned_keys(self.info.known_hosts, self.info.host_key_alias)
        client_key = self._load_client_key()

        # Imported here: fabric pulls in invoke, and `vmsbx --help` must not pay for it.
        from fabric import Config as FabricConfig
        from fabric import Connection as FabricConnection

        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_RefuseUnpinned())
        lookup_name = _host_key_lookup_name(self.info.host, self.info.port)
        for key in pinned:
            client.get_host_keys().add(lookup_name, key.get_name(), key)

        # lazy=True skips /etc/fabric.yml and ~/.fabric.yml; an explicit empty SSHConfig skips
        # ~/.ssh/config. Either could otherwise add a ProxyCommand, agent forwarding or identities.
        config = FabricConfig(lazy=True, ssh_config=paramiko.SSHConfig())
        fabric_conn = FabricConnection(
            self.info.host,
            user=self.info.user,
            port=self.info.port,
            config=config,
            forward_agent=False,
            connect_kwargs={
                "pkey": client_key,
                "allow_agent": False,
                "look_for_keys": False,
                "timeout": timeout,
                "banner_timeout": timeout,
                "auth_timeout": timeout,
            },
        )
        fabric_conn.client = client
        try:
            fabric_conn.open()
        except Exception as exc:
            client.close()
            mapped = self._map_connect_error(exc, timeout)
            if mapped is exc:
                raise
            raise mapped from exc
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            client.close()
            raise SSHUnreachable(f"{self.target}: the SSH session closed right after login")
        self._fabric = fabric_conn
        self._transport = transport
        threading.Thread(
            target=self._watch_liveness, args=(transport,), name=f"ssh-liveness {self.target}", daemon=True
        ).start()

    def global_request(self, kind: str, data: tuple[object, ...] | None = None) -> paramiko.Message | None:
        """A global request that waits for its reply, never overlapping another one."""
        transport = self._active_transport()
        with self._global_lock:
            return transport.global_request(kind, data, wait=True)

    def _probe(self, transport: paramiko.Transport, answered: threading.Event) -> None:
        with contextlib.suppress(paramiko.SSHException, OSError, EOFError), self._global_lock:
            transport.global_request("keepalive@openssh.com", wait=True)
        answered.set()

    def _watch_liveness(self, transport: paramiko.Transport) -> None:
        """Ask the guest's sshd for a reply every `probe_every` seconds (also the keepalive
        traffic); close the link when none comes within `dead_after`."""
        while transport.is_active():
            time.sleep(self._probe_every)
            if not transport.is_active():
                return
            answered = threading.Event()
            threading.Thread(
                target=self._probe, args=(transport, answered), name=f"ssh-probe {self.target}", daemon=True
            ).start()
            if not answered.wait(self._dead_after) and transport.is_active():
                _log.warning(
                    "%s answered nothing for %.0f s: the guest looks frozen; closing the link",
                    self.target, self._dead_after,
                )  # fmt: skip
                transport.close()
                return

    def close(self) -> None:
        """Cancel forwards and close the SFTP session and the connection. Safe to repeat."""
        with self._forwards_lock:
            forwards = list(self._forwards.values())
        for forward in forwards:
            forward.close()
        if self._sftp is not None:
            try:
                self._sftp.close()
            except (OSError, EOFError, paramiko.SSHException):
                _log.debug("closing SFTP session of %s failed", self.target, exc_info=True)
            self._sftp = None
        if self._fabric is not None:
            self._fabric.client.close()
            self._fabric = None
        self._transport = None

    def is_alive(self) -> bool:
        """True while the SSH transport is connected and active."""
        return self._transport is not None and self._transport.is_active()

    def _load_client_key(self) -> paramiko.PKey:
        path = self.info.key_file
        try:
            return paramiko.PKey.from_path(path)
        except FileNotFoundError as exc:
            raise TransportError(
                f"client key {path} does not exist",
                hint="vmsbx generates it when creating the VM; run `vmsbx destroy "
                f"{self._vm_label()}` and create the VM again",
            ) from exc
        except paramiko.PasswordRequiredException as exc:
            raise TransportError(
                f"client key {path} is encrypted",
                hint="vmsbx uses only the unencrypted key it generated for this VM; "
                "do not point key_file at a personal key",
            ) from exc
        except (OSError, ValueError, paramiko.SSHException) as exc:
            raise TransportError(
                f"cannot load client key {path}: {exc}",
                hint="the key file is damaged; recreate the VM",
            ) from exc

    def _vm_label(self) -> str:
        return self.vm_name or "NAME"

    def _map_connect_error(self, exc: Exception, timeout: float) -> Exception:
        target = self.target
        if isinstance(exc, paramiko.BadHostKeyException):
            return self._host_key_mismatch(exc.expected_key, exc.key)
        if isinstance(exc, _UnpinnedHostKey):
            return HostKeyMismatch(
                f"refusing to connect to {target}: it presented host key {fingerprint(exc.key)} "
                f"but nothing is pinned under the name paramiko looked up ({exc.hostname})",
                hint=self._mismatch_hint(),
            )
        if isinstance(exc, paramiko.AuthenticationException):
            return SSHAuthFailed(
                f"{target} rejected the client key {self.info.key_file}: {exc}",
                hint="if the VM is still booting, wait; otherwise its authorized_keys lost the "
                f"vmsbx key: run `vmsbx destroy {self._vm_label()}` and create it again",
            )
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            return SSHUnreachable(
                f"nothing listens on {self.info.host}:{self.info.port} (connection refused)",
                hint="check the VM is running: `vmsbx status`",
            )
        if isinstance(exc, socket.gaierror):
            return TransportError(
                f"cannot resolve host {self.info.host!r}: {exc}",
                hint="fix the host in the provider's SSH settings",
            )
        if isinstance(exc, TimeoutError):
            return SSHUnreachable(
                f"{target} did not answer within {timeout:g}s",
                hint="check the VM is running: `vmsbx status`",
            )
        if isinstance(exc, ConnectionError | EOFError):
            return SSHUnreachable(
                f"{target} closed the connection during the SSH handshake ({exc!r})",
                hint="sshd in the guest is not up yet, or crashed; see the serial log",
            )
        if isinstance(exc, paramiko.ssh_exception.IncompatiblePeer):
            return TransportError(
                f"{target} and vmsbx share no SSH algorithms: {exc}",
                hint="update OpenSSH in the guest image",
            )
        if isinstance(exc, paramiko.SSHException):
            # "Error reading SSH protocol banner" lands here: QEMU's user-mode port forward accepts
            # TCP before the guest listens, then drops it.
            return SSHUnreachable(
                f"SSH handshake with {target} failed: {exc}",
                hint="sshd in the guest is not up yet, or crashed; see the serial log",
            )
        if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return SSHUnreachable(
                f"no route to {self.info.host}: {exc}",
                hint="check the VM is running and its network is up",
            )
        if isinstance(exc, OSError):
            return TransportError(f"cannot connect to {target}: {exc}")
        return exc

    def _mismatch_hint(self) -> str:
        return (
            f"if you rebuilt the VM, run `vmsbx destroy {self._vm_label()}` and create it again "
            "so vmsbx pins the new key; otherwise something is impersonating the guest: "
            "do not connect, find out what answers on that port"
        )

    def _host_key_mismatch(self, expected: paramiko.PKey, presented: paramiko.PKey) -> HostKeyMismatch:
        return HostKeyMismatch(
            f"host key of {self.target} does not match the pinned key for "
            f"{self.info.host_key_alias!r} ({self.info.known_hosts}): "
            f"expected {expected.get_name()} {fingerprint(expected)}, "
            f"presented {presented.get_name()} {fingerprint(presented)}",
            hint=self._mismatch_hint(),
        )

    def _active_transport(self) -> paramiko.Transport:
        transport = self._transport
        if transport is None or not transport.is_active():
            raise TransportError(
                f"the SSH connection to {self.target} is not open (closed or dropped)",
                hint="open a new connection; if it keeps dropping, check the VM: `vmsbx status`",
            )
        return transport

    def _open_session(self, command: str) -> paramiko.Channel:
        transport = self._active_transport()
        try:
            return transport.open_session(timeout=_CHANNEL_OPEN_TIMEOUT)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(
                f"cannot open an SSH session on {self.target} to run `{_short(command)}`: {exc}",
                hint="the guest's sshd may be overloaded (MaxSessions) or the connection dropped",
            ) from exc

    def open_socket(self, path: str) -> paramiko.Channel:
        """A stream to the Unix socket `path` in the guest, connected by its sshd (no session, no
        process): how the host agent reaches the resident guest agent."""
        transport = self._active_transport()
        try:
            return open_streamlocal(transport, path, timeout=_CHANNEL_OPEN_TIMEOUT)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"cannot connect to {path} on {self.target}: {exc}") from exc

    # -- commands ----------------------------------------------------------------------------

    def open_channel(
        self,
        argv: Sequence[str],
        *,
        pty: bool = False,
        term: str = "xterm-256color",
        size: tuple[int, int] | None = None,
    ) -> paramiko.Channel:
        """Start `argv` on a fresh session channel and hand the channel over; the caller pumps its
        stdin/stdout/stderr and reads the exit status. `size` is (columns, rows) of the pty."""
        _, command = _command_line(argv)
        chan = self._open_session(command)
        try:
            if pty:
                columns, rows = size or (80, 24)
                chan.get_pty(term=term, width=columns, height=rows)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            chan.close()
            raise TransportError(f"cannot start `{command}` on {self.target}: {exc}") from exc
        return chan

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run `argv` remotely and collect its output. A non-zero exit is returned, not raised.

        `stdin` is sent then closed; without it the command reads EOF at once. Raises
        `TransportError` when `timeout` seconds pass first or the connection drops."""
        args, command = _command_line(argv)
        started = time.monotonic()
        chan = self.open_channel(args)
        # The guest decides how much it prints: `run` is for short commands, so both are capped.
        stdout, stderr = BoundedBuffer(RUN_OUTPUT_MAX, f"output from {args[0]!r}"), TailBuffer(1 << 20)
        source = io.BytesIO(stdin) if stdin is not None else None
        exit_code = self._pump(
            chan=chan,
            command=command,
            stdout=cast(IO[bytes], stdout),
            stderr=cast(IO[bytes], stderr),
            stdin=source,
            timeout=timeout,
        )
        return CommandResult(
            argv=args,
            exit_code=exit_code,
            stdout=stdout.getvalue(),
            stderr=stderr.getvalue(),
            duration=time.monotonic() - started,
        )

    def stream(
        self,
        argv: Sequence[str],
        *,
        stdout: BinaryIO,
        stderr: BinaryIO,
        stdin: BinaryIO | None = None,
        timeout: float | None = None,
    ) -> int:
        """Run `argv`, copying its output to `stdout`/`stderr` as it arrives (flushed per chunk)
        and `stdin` to it until EOF. Returns the exit code (-1 if killed by a signal)."""
        _, command = _command_line(argv)
        chan = self.open_channel(argv)
        return self._pump(
            chan=chan, command=command, stdout=stdout, stderr=stderr, stdin=stdin, timeout=timeout
        )

    def _pump(
        self,
        *,
        chan: paramiko.Channel,
        command: str,
        stdout: IO[bytes],
        stderr: IO[bytes],
        stdin: IO[bytes] | None,
        timeout: float | None,
    ) -> int:
        """Copy both output streams in their own threads so neither can fill paramiko's window
        and stall the other (the classic exec deadlock), feed stdin, then wait for the status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failures: list[BaseException] = []

        def drain(recv: Callable[[int], bytes], sink: IO[bytes]) -> None:
            try:
                while data := recv(_CHUNK):
                    sink.write(data)
                    sink.flush()
            except BaseException as exc:  # reported to the caller below, never swallowed
                failures.append(exc)
                chan.close()

        readers = [
            threading.Thread(target=drain, args=(chan.recv, stdout), daemon=True),
            threading.Thread(target=drain, args=(chan.recv_stderr, stderr), daemon=True),
        ]
        for reader in readers:
            reader.start()
        if stdin is None:
            chan.shutdown_write()
        else:
            # Daemon: a caller's stdin may never reach EOF (a terminal); the command's exit is
            # what ends the call, not the end of input.
            threading.Thread(target=_feed_stdin, args=(chan, stdin), daemon=True).start()

        try:
            for reader in readers:
                reader.join(_remaining(deadline))
                if reader.is_alive():
                    raise self._timed_out(command, timeout)
            if not chan.status_event.wait(_remaining(deadline)):
                raise self._timed_out(command, timeout)
            if failures:
                raise failures[0]
            exit_code = chan.exit_status
            if exit_code == -1 and not self.is_alive():
                raise TransportError(
                    f"the SSH connection to {self.target} dropped while running `{command}`",
                    hint="check the VM is still running: `vmsbx status`",
                )
            return exit_code
        finally:
            # On timeout this closes the session; sshd then closes the command's pipes. A command
            # that never writes may outlive us: paramiko cannot send it a signal.
            chan.close()

    def _timed_out(self, command: str, timeout: float | None) -> TransportError:
        return TransportError(
            f"`{command}` did not finish within {timeout:g}s on {self.target}",
            hint="raise the timeout, or check whether the command waits for input or hangs",
        )

    # -- files -------------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        self._active_transport()
        with self._sftp_lock:
            sftp = self._sftp
            if sftp is None:
                try:
                    sftp = self._fabric.sftp()
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    raise TransportError(
                        f"cannot start SFTP on {self.target}: {exc}",
                        hint="the guest's sshd needs `Subsystem sftp internal-sftp` "
                        "(or the sftp-server path) in sshd_config",
                    ) from exc
                self._sftp = sftp
            return sftp

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        """Copy `local` to `remote` atomically: the remote path holds either the old file or the
        complete new one (written to `remote + ".vmsbx-tmp"`, then posix-renamed). `mode` is set
        before any content is written, so a secret is never readable with looser permissions."""
        if not local.is_file():
            raise TransportError(f"cannot upload {local}: not a file", hint="check the local path")
        sftp = self._sftp_client()
        tmp = remote + _TMP_SUFFIX
        try:
            with local.open("rb") as source, sftp.open(tmp, "wb") as sink:
                if mode is not None:
                    sink.chmod(mode)
                sink.set_pipelined(True)
                while data := source.read(_CHUNK):
                    sink.write(data)
            sftp.posix_rename(tmp, remote)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            try:
                sftp.remove(tmp)
            except (OSError, EOFError, paramiko.SSHException):
                _log.debug("removing %s on %s failed", tmp, self.target, exc_info=True)
            raise TransportError(
                f"copying {local} to {self.target}:{remote} failed: {exc}",
                hint="check the remote directory exists and is writable by "
                f"{self.info.user!r}, and the disk is not full",
            ) from exc

    def get(self, remote: str, local: Path) -> None:
        """Copy `remote` to `local`, replacing it atomically only once the copy is complete."""
        sftp = self._sftp_client()
        tmp = local.with_name(f".{local.name}{_TMP_SUFFIX}")
        try:
            sftp.get(remote, str(tmp))
            tmp.replace(local)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            tmp.unlink(missing_ok=True)
            raise TransportError(
                f"copying {self.target}:{remote} to {local} failed: {exc}",
                hint="check the remote file exists and is readable, and the local directory is writable",
            ) from exc

    # -- port forwarding ---------------------------------------------------------------------

    def forward_remote(
        self,
        remote_host: str,
        remote_port: int,
        local_host: str,
        local_port: int,
    ) -> RemoteForward:
        """Make the guest listen on `remote_host:remote_port` and tunnel each connection to
        `local_host:local_port` on this machine (like `ssh -R`). `remote_port=0` lets the guest
        pick; the returned forward's `remote_port` is the port actually bound."""
        transport = self._active_transport()
        try:
            with self._global_lock:
                bound = transport.request_port_forward(
                    remote_host, remote_port, handler=self._on_forwarded_channel
                )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(
                f"{self.target} refused to listen on {remote_host}:{remote_port}: {exc}",
                hint="the port may be taken in the guest, or its sshd has AllowTcpForwarding no",
            ) from exc
        forward = RemoteForward(
            connection=self,
            transport=transport,
            remote_host=remote_host,
            remote_port=bound,
            local_host=local_host,
            local_port=local_port,
        )
        with self._forwards_lock:
            self._forwards[bound] = forward
        return forward

    def _on_forwarded_channel(
        self,
        channel: paramiko.Channel,
        origin: tuple[str, int],
        server: tuple[str, int],
    ) -> None:
        # Called on paramiko's transport thread, which must never block: hand off at once.
        threading.Thread(target=self._serve_forwarded_channel, args=(channel, server[1]), daemon=True).start()

    def _serve_forwarded_channel(self, channel: paramiko.Channel, server_port: int) -> None:
        with self._forwards_lock:
            forward = self._forwards.get(server_port)
        if forward is None:
            _log.warning("closing a forwarded connection for unknown port %d", server_port)
            channel.close()
            return
        forward._serve(channel)

    def _forget_forward(self, forward: RemoteForward) -> None:
        with self._forwards_lock:
            if self._forwards.get(forward.remote_port) is forward:
                del self._forwards[forward.remote_port]


class RemoteForward:
    """A live `ssh -R`-style forward. `close()` stops listening in the guest and cuts the tunnels;
    it MUST be safe to call repeatedly."""

    def __init__(
        self,
        *,
        connection: Connection,
        transport: paramiko.Transport,
        remote_host: str,
        remote_port: int,
        local_host: str,
        local_port: int,
    ) -> None:
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.local_host = local_host
        self.local_port = local_port
        self._connection = connection
        self._transport = transport
        self._closed = False
        self._lock = threading.Lock()
        self._tunnels: set[tuple[paramiko.Channel, socket.socket]] = set()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RemoteForward(guest {self.remote_host}:{self.remote_port} -> "
            f"{self.local_host}:{self.local_port}, closed={self._closed})"
        )

    def close(self) -> None:
        """Cancel the forward in the guest and close every open tunnel."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            tunnels = list(self._tunnels)
        self._connection._forget_forward(self)
        if self._transport.is_active():
            # Not transport.cancel_port_forward(): that also drops paramiko's one shared handler,
            # silently killing every other forward on this connection.
            try:
                self._connection.global_request("cancel-tcpip-forward", (self.remote_host, self.remote_port))
            except (paramiko.SSHException, OSError, EOFError, TransportError):
                _log.debug("cancelling forward %r failed", self, exc_info=True)
        for channel, sock in tunnels:
            channel.close()
            sock.close()

    def _serve(self, channel: paramiko.Channel) -> None:
        """Connect one forwarded channel to the local target and copy bytes both ways."""
        try:
            sock = socket.create_connection(
                (self.local_host, self.local_port), timeout=_LOCAL_CONNECT_TIMEOUT
            )
        except OSError as exc:
            _log.warning(
                "forward %s:%d: cannot reach %s:%d: %s",
                self.remote_host,
                self.remote_port,
                self.local_host,
                self.local_port,
                exc,
            )
            channel.close()
            return
        sock.settimeout(None)
        tunnel = (channel, sock)
        with self._lock:
            if self._closed:
                channel.close()
                sock.close()
                return
            self._tunnels.add(tunnel)

        def to_guest() -> None:
            try:
                while data := sock.recv(_CHUNK):
                    channel.sendall(data)
            except (OSError, EOFError, paramiko.SSHException):
                pass  # either side went away; the other direction notices and closes
            finally:
                _quietly(channel.shutdown_write)

        def to_local() -> None:
            try:
                while data := channel.recv(_CHUNK):
                    sock.sendall(data)
            except (OSError, EOFError, paramiko.SSHException):
                pass
            finally:
                _quietly(lambda: sock.shutdown(socket.SHUT_WR))

        upstream = threading.Thread(target=to_guest, daemon=True)
        upstream.start()
        to_local()
        upstream.join()
        channel.close()
        sock.close()
        with self._lock:
            self._tunnels.discard(tunnel)


def _short(command: str, width: int = 80) -> str:
    flat = " ".join(command.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _quietly(action: Callable[[], object]) -> None:
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        action()


def _feed_stdin(chan: paramiko.Channel, source: IO[bytes]) -> None:
    # read1 returns what is available instead of waiting for a full chunk, so interactive
    # input reaches the command as it is typed.
    read: Callable[[int], bytes] = getattr(source, "read1", source.read)
    try:
        while data := read(_CHUNK):
            chan.sendall(data)
    except (OSError, EOFError, paramiko.SSHException, ValueError):
        pass  # the command exited or the caller closed stdin; the exit status says the rest
    finally:
        _quietly(chan.shutdown_write)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
