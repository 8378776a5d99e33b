"""One run's egress proxy: HTTP (CONNECT and absolute-URI forwarding) and SOCKS5 on one port.

It runs in the host agent, one listener per run on host loopback TCP, so that the run's path
(a Unix socket bound into the unit, a forwarder, the SSH reverse tunnel) ends in a plain
`127.0.0.1:port`. The first byte tells the protocols apart (SOCKS5 starts with 0x05, which no
HTTP method does), as in Anthropic's sandbox-runtime, so the sandbox needs one path, not two.

Every request is decided by `EgressRules`: the proxy resolves names itself (the sandbox has no
DNS), checks every address, and connects to exactly the address it checked, so a name that
resolves differently a moment later (DNS rebinding) changes nothing. Every request, allowed or
not, is reported once to `on_decision` when it ends, with its byte counts. Everything the client
sends is hostile: request heads are capped in size, header count and time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from vmsbx.agent.egress.rules import EgressRules, Verdict
from vmsbx.config.allow_hosts import IPAddress, normalise_host, parse_ip, split_host_port

log = logging.getLogger("vmsbx.agent.egress")

Resolver = Callable[[str, int], Sequence[IPAddress]]
"""Name and port -> the addresses to try, in order. Raises OSError when the name does not resolve."""

DecisionSink = Callable[[str, dict[str, object]], None]
"""Called as on_decision(run_id, record) once per request, from the proxy's threads."""

Decision = Literal["allow", "deny", "error"]

_SOCKS_VERSION = 5
_CHUNK = 65536
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
# Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own; Transfer-Encoding stays because the
# body is passed through byte for byte and its framing must survive.
_HOP_BY_HOP = frozenset(
    {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te"}
    | {"trailer", "upgrade"}
)


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The host's resolver (getaddrinfo), addresses de-duplicated in the order it gives them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = parse_ip(str(sockaddr[0]))
        if address is None:
            # An address with a zone id (link-local): refuse it by mapping it to its bare form,
            # which the address gate turns down, rather than silently dropping it.
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """Bounds on what one client can make the proxy hold."""

    head_bytes: int = 16 * 1024
    """Largest request head (request line and headers, or a SOCKS handshake)."""
    head_headers: int = 100
    head_seconds: float = 10.0
    """Time for the whole request head to arrive (a slow client cannot hold a thread longer)."""
    connect_seconds: float = 10.0
    idle_seconds: float = 900.0
    """A tunnel with no byte in either direction for this long is closed."""
    max_connections: int = 256


class _Refused(Exception):
    """A request the proxy answers with an error (status for HTTP, reply code for SOCKS)."""

    def __init__(
        self, decision: Decision, rule: str, reason: str, status: int, socks_reply: int | None
    ) -> None:
        super().__init__(reason)
        self.decision: Decision = decision
        self.rule = rule
        self.reason = reason
        self.status = status
        self.socks_reply = socks_reply


def _policy_denied(verdict: Verdict) -> _Refused:
    return _Refused("deny", verdict.rule or "denied", verdict.reason, 403, 0x02)


@dataclass(slots=True)
class _Request:
    kind: str = "?"
    host: str | None = None
    port: int | None = None
    address: str | None = None
    decision: Decision = "error"
    rule: str | None = None
    reason: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    started: float = field(default_factory=time.monotonic)
    at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"))


class EgressProxy:
    """The egress proxy of one run. Threaded like the host agent's server: one thread per client.

    start() binds and returns the (host, port) to forward the run's path to; close() stops
    accepting and cuts every open tunnel (each still reports its decision with its byte counts).
    Both are idempotent. The rules are fixed for the proxy's life: nothing a client sends can
    change them, and the proxy has no other surface.
    """

    def __init__(
        self,
        run_id: str,
        rules: EgressRules,
        on_decision: DecisionSink,
        *,
        resolver: Resolver = system_resolver,
        limits: ProxyLimits | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        # `resolver` exists for tests (names of test servers -> loopback). It cannot weaken the
        # rules: whatever it returns goes through the same address gate, so a test must still
        # list its loopback server by IP, exactly as a user would.
        self.run_id = run_id
        self.rules = rules
        self._on_decision = on_decision
        self._resolver = resolver
        self.limits = limits or ProxyLimits()
        self._listen_host = listen_host
        self._server: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._closing = threading.Event()
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        self._sink_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._threads: set[threading.Thread] = set()

    @property
    def address(self) -> tuple[str, int]:
        """The listening (host, port); only after start()."""
        if self._address is None:
            raise RuntimeError("the egress proxy is not started")
        return self._address

    def start(self) -> tuple[str, int]:
        """Bind a fresh loopback port and accept in a background thread; no-op when started."""
        if self._server is not None:
            return self.address
        family = socket.AF_INET6 if ":" in self._listen_host else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self._listen_host, 0))
        server.listen(64)
        self._server = server
        host, port = server.getsockname()[:2]
        self._address = (str(host), int(port))
        threading.Thread(target=self._accept_loop, name=f"egress-{self.run_id}", daemon=True).start()
        log.info("egress proxy for run %s on %s:%d", self.run_id, host, port)
        return self._address

    def close(self, wait: float = 5.0) -> None:
        """Stop accepting, cut every open connection, wait up to `wait` s for their records."""
        self._closing.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._live_lock:
            live = list(self._live)
            threads = list(self._threads)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + wait
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> EgressProxy:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- accepting ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                self._report(
                    _Request(
                        kind="?",
                        decision="error",
                        rule="too-many-connections",
                        reason="the proxy already serves its maximum of connections",
                    )
                )
                with contextlib.suppress(OSError):
                    client.sendall(_http_response(503, "too many connections through the egress proxy"))
                client.close()
                continue
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            with self._live_lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        request = _Request()
        upstream: socket.socket | None = None
        reported = True
        self._track(client)
        try:
            reader = _HeadReader(client, self.limits)
            first = reader.peek_first()
            if first is None:
                reported = False  # connected and said nothing: no request to record
                return
            if first == _SOCKS_VERSION:
                upstream, pending = self._socks(reader, request)
            else:
                upstream, pending = self._http(reader, request)
            self._track(upstream)
            if pending:
                upstream.sendall(pending)
                request.bytes_up += len(pending)
            self._splice(client, upstream, request)
        except _Refused as refused:
            request.decision, request.rule, request.reason = refused.decision, refused.rule, refused.reason
            with contextlib.suppress(OSError):
                if request.kind.startswith("SOCKS"):
                    if refused.socks_reply is not None:
                        client.sendall(_socks_reply(refused.socks_reply))
                else:
                    client.sendall(_http_response(refused.status, refused.reason))
        except OSError as error:
            if request.decision == "allow" and not request.reason:
                request.reason = f"connection ended: {error.strerror or error}"
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._untrack(sock)
                    sock.close()
            if reported:
                self._report(request)
            self._slots.release()
            with self._live_lock:
                self._threads.discard(threading.current_thread())

    def _track(self, sock: socket.socket) -> None:
        with self._live_lock:
            self._live.add(sock)
        if self._closing.is_set():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _untrack(self, sock: socket.socket) -> None:
        with self._live_lock:
            self._live.discard(sock)

    def _report(self, request: _Request) -> None:
        record: dict[str, object] = {
            "time": request.at,
            "run": self.run_id,
            "kind": request.kind,
            "host": request.host,
            "port": request.port,
            "address": request.address,
            "decision": request.decision,
            "rule": request.rule,
            "reason": request.reason,
            "bytes_up": request.bytes_up,
            "bytes_down": request.bytes_down,
            "duration": round(time.monotonic() - request.started, 3),
        }
        try:
            with self._sink_lock:
                self._on_decision(self.run_id, record)
        except Exception:  # the log writer failing must not take the proxy down
            log.exception("recording an egress decision failed")

    # -- deciding and connecting -------------------------------------------------------------

    def _connect(self, request: _Request, host_text: str, port: int) -> socket.socket:
        """Decide, resolve, check every address, and connect to one of exactly those."""
        literal = parse_ip(host_text)
        if literal is not None:
            request.host = str(literal)
            verdict = self.rules.check_literal(literal, port)
            if not verdict.allowed:
                raise _policy_denied(verdict)
            candidates: Sequence[IPAddress] = [literal]
        else:
            try:
                name = normalise_host(host_text)
            except ValueError as error:
                raise _Refused("deny", "bad-name", f"{_printable(host_text)!r}: {error}", 400, 0x02) from None
            request.host = name
            verdict = self.rules.check_name(name, port)
            if not verdict.allowed:
                raise _policy_denied(verdict)
            try:
                candidates = [_canonical(address) for address in self._resolver(name, port)]
            except OSError as error:
                raise _Refused(
                    "error", "resolve-failed", f"{name} does not resolve ({error})", 502, 0x04
                ) from None
            if not candidates:
                raise _Refused("error", "resolve-failed", f"{name} has no address", 502, 0x04)
            for address in candidates:
                # One bad address refuses the name: a mix of public and private answers is the
                # shape of a rebinding attack, not of a real service.
                address_verdict = self.rules.check_resolved(address, port)
                if not address_verdict.allowed:
                    raise _policy_denied(address_verdict)
        request.decision, request.rule, request.reason = "allow", verdict.rule, verdict.reason
        last_error: OSError | None = None
        for address in candidates:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            upstream = socket.socket(family, socket.SOCK_STREAM)
            upstream.settimeout(self.limits.connect_seconds)
            try:
                upstream.connect((str(address), port))
            except OSError as error:
                upstream.close()
                last_error = error
                continue
            upstream.settimeout(None)
            request.address = str(address)
            return upstream
        shown = f"{request.host}:{port}"
        raise _Refused("error", "connect-failed", f"cannot connect to {shown}: {last_error}", 502, 0x05)

    # -- HTTP --------------------------------------------------------------------------------

    def _http(self, reader: _HeadReader, request: _Request) -> tuple[socket.socket, bytes]:
        request.kind = "HTTP"
        head, rest = reader.read_http_head()
        method, target, version, headers = _parse_http_head(head, self.limits.head_headers)
        request.kind = method
        if method == "CONNECT":
            host_text, port = _authority(target, None)
            request.host, request.port = host_text, port
            upstream = self._connect(request, host_text, port)
            reader.client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            return upstream, rest
        scheme, _, after = target.partition("://")
        if scheme.lower() != "http" or not after:
            raise _Refused(
                "error",
                "not-a-proxy-request",
                "the egress proxy forwards absolute http:// URLs and CONNECT tunnels only "
                "(https goes through CONNECT; set HTTPS_PROXY)",
                400,
                0x01,
            )
        cut = min((i for i in (after.find("/"), after.find("?")) if i >= 0), default=len(after))
        authority, path = after[:cut], after[cut:] or "/"
        if path.startswith("?"):
            path = "/" + path
        if "@" in authority or "#" in path:
            raise _Refused("error", "bad-request", "user info and fragments are not allowed", 400, 0x01)
        host_text, port = _authority(authority, 80)
        request.host, request.port = host_text, port
        _check_host_header(headers, host_text, port)
        upstream = self._connect(request, host_text, port)
        forwarded = _forwarded_head(method, path, version, headers, authority)
        upstream.sendall(forwarded)
        request.bytes_up += len(forwarded)
        return upstream, rest

    # -- SOCKS5 ------------------------------------------------------------------------------

    def _socks(self, reader: _HeadReader, request: _Request) -> tuple[socket.socket, bytes]:
        request.kind = "SOCKS"
        _version, count = reader.read_exact(2)
        methods = reader.read_exact(count)
        if 0x00 not in methods:
            reader.client.sendall(bytes([_SOCKS_VERSION, 0xFF]))
            raise _Refused(
                "error", "socks-auth", "the client offered no 'no authentication' method", 400, None
            )
        reader.client.sendall(bytes([_SOCKS_VERSION, 0x00]))
        version, command, _reserved, address_type = reader.read_exact(4)
        if version != _SOCKS_VERSION:
            raise _Refused("error", "bad-request", "not a SOCKS5 request", 400, 0x01)
        if address_type == 0x01:
            host_text = str(ipaddress.IPv4Address(reader.read_exact(4)))
        elif address_type == 0x04:
            host_text = str(ipaddress.IPv6Address(reader.read_exact(16)))
        elif address_type == 0x03:
            raw = reader.read_exact(reader.read_exact(1)[0])
            host_text = raw.decode("ascii", errors="replace")
        else:
            raise _Refused("error", "bad-request", "unknown SOCKS address type", 400, 0x08)
        port = int.from_bytes(reader.read_exact(2), "big")
        request.host, request.port = host_text, port
        if command != 0x01:
            name = {0x02: "BIND", 0x03: "UDP ASSOCIATE"}.get(command, f"command {command}")
            request.kind = f"SOCKS-{name.split()[0]}"
            raise _Refused(
                "deny", "socks-command", f"SOCKS {name} is not supported: only CONNECT (TCP)", 403, 0x07
            )
        if port == 0:
            raise _Refused("deny", "bad-port", "port 0 is not a destination", 403, 0x02)
        upstream = self._connect(request, host_text, port)
        reader.client.sendall(_socks_reply(0x00))
        return upstream, reader.leftover()

    # -- tunnelling --------------------------------------------------------------------------

    def _splice(self, client: socket.socket, upstream: socket.socket, request: _Request) -> None:
        """Copy both ways until both sides are done; half-closes are passed on (socat, git)."""
        peer = {client: upstream, upstream: client}
        # A selector, not select(): the agent may hold more than 1024 descriptors.
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                # Bounds sendall too: a peer that stops reading cannot hold the thread forever.
                sock.settimeout(self.limits.idle_seconds)
                selector.register(sock, selectors.EVENT_READ)
            while selector.get_map():
                events = selector.select(self.limits.idle_seconds)
                if not events:
                    request.reason += " (closed: idle)"
                    return
                for key, _mask in events:
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    data = source.recv(_CHUNK)
                    target = peer[source]
                    if not data:
                        selector.unregister(source)
                        with contextlib.suppress(OSError):
                            target.shutdown(socket.SHUT_WR)
                        continue
                    target.sendall(data)
                    if source is client:
                        request.bytes_up += len(data)
                    else:
                        request.bytes_down += len(data)


class _HeadReader:
    """Reads a request head from a hostile client within the size and time limits."""

    def __init__(self, client: socket.socket, limits: ProxyLimits) -> None:
        self.client = client
        self.limits = limits
        self._buffer = b""
        self._deadline = time.monotonic() + limits.head_seconds
        self._received = 0

    def _fill(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise _Refused("error", "head-timeout", "the request head did not arrive in time", 408, 0x01)
        self.client.settimeout(remaining)
        try:
            data = self.client.recv(4096)
        except TimeoutError:
            raise _Refused(
                "error", "head-timeout", "the request head did not arrive in time", 408, 0x01
            ) from None
        if not data:
            raise _Refused(
                "error", "bad-request", "the client closed before its request was complete", 400, 0x01
            )
        self._received += len(data)
        self._buffer += data

    def peek_first(self) -> int | None:
        try:
            self._fill()
        except _Refused:
            return None
        return self._buffer[0]

    def read_exact(self, count: int) -> bytes:
        while len(self._buffer) < count:
            if self._received > self.limits.head_bytes:
                raise _Refused("error", "head-too-large", "the handshake is too large", 431, 0x01)
            self._fill()
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        self.client.settimeout(None)
        return data

    def leftover(self) -> bytes:
        data, self._buffer = self._buffer, b""
        self.client.settimeout(None)
        return data

    def read_http_head(self) -> tuple[bytes, bytes]:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > self.limits.head_bytes:
                    break
                head, rest = self._buffer[:end], self._buffer[end + 4 :]
                self._buffer = b""
                self.client.settimeout(None)
                return head, rest
            if len(self._buffer) > self.limits.head_bytes:
                break
            self._fill()
        raise _Refused(
            "error",
            "head-too-large",
            f"the request head is larger than {self.limits.head_bytes} bytes",
            431,
            0x01,
        )


def _parse_http_head(head: bytes, max_headers: int) -> tuple[str, str, str, list[tuple[str, str]]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _Refused("error", "bad-request", "undecodable request", 400, 0x01) from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise _Refused("error", "bad-request", "malformed request line", 400, 0x01)
    method, target, version = parts
    if len(lines) - 1 > max_headers:
        raise _Refused("error", "head-too-large", f"more than {max_headers} header fields", 431, 0x01)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\x00"):
            # Also refuses obsolete line folding (a line starting with a space has no token name).
            raise _Refused("error", "bad-request", "malformed header field", 400, 0x01)
        headers.append((name, value.strip(" \t")))
    names = [name.lower() for name, _ in headers]
    if "transfer-encoding" in names and "content-length" in names:
        raise _Refused("error", "bad-request", "both Transfer-Encoding and Content-Length", 400, 0x01)
    if len({value for name, value in headers if name.lower() == "content-length"}) > 1:
        raise _Refused("error", "bad-request", "conflicting Content-Length fields", 400, 0x01)
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in target) or not target:
        raise _Refused("error", "bad-request", "malformed request target", 400, 0x01)
    return method, target, version, headers


def _authority(text: str, default_port: int | None) -> tuple[str, int]:
    try:
        host, port = split_host_port(text, default_port)
    except ValueError as error:
        raise _Refused("error", "bad-request", f"bad destination: {error}", 400, 0x01) from None
    if port is None:
        raise _Refused("error", "bad-request", "CONNECT needs host:port", 400, 0x01)
    if not host:
        raise _Refused("error", "bad-request", "the destination has no host", 400, 0x01)
    return host, port


def _same_destination(a_host: str, a_port: int, b_host: str, b_port: int) -> bool:
    def canon(host: str) -> str:
        address = parse_ip(host)
        if address is not None:
            return str(address)
        try:
            return normalise_host(host)
        except ValueError:
            return "\x00invalid"

    return a_port == b_port and canon(a_host) == canon(b_host) != "\x00invalid"


def _check_host_header(headers: list[tuple[str, str]], host: str, port: int) -> None:
    hosts = [value for name, value in headers if name.lower() == "host"]
    if len(hosts) > 1:
        raise _Refused("error", "bad-request", "more than one Host header", 400, 0x01)
    if not hosts:
        return
    try:
        header_host, header_port = split_host_port(hosts[0], 80)
    except ValueError:
        raise _Refused("error", "host-mismatch", "malformed Host header", 400, 0x01) from None
    if header_port is None or not _same_destination(header_host, header_port, host, port):
        raise _Refused(
            "deny",
            "host-mismatch",
            "the Host header names another destination than the request URL",
            400,
            0x01,
        )


def _forwarded_head(
    method: str, path: str, version: str, headers: list[tuple[str, str]], authority: str
) -> bytes:
    connection_named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    lines = [f"{method} {path} {version}"]
    if not any(name.lower() == "host" for name, _ in headers):
        lines.append(f"Host: {authority}")
    for name, value in headers:
        lowered = name.lower()
        if lowered in _HOP_BY_HOP or lowered in connection_named:
            continue
        lines.append(f"{name}: {value}")
    # One request per client connection: the next one might name another host.
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _canonical(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() and ord(c) < 0x7F else "?" for c in text)[:100]


_STATUS_TEXT = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _http_response(status: int, reason: str) -> bytes:
    body = f"vmsbx egress proxy: {_printable_reason(reason)}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Vmsbx-Egress: refused\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _printable_reason(reason: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in reason)


def _socks_reply(code: int) -> bytes:
    return bytes([_SOCKS_VERSION, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
