"""The API relay: the only way a sandboxed agent reaches the model API, and the only holder of
the user's credential.

It listens on host loopback (the host agent points an SSH reverse forward from the guest at it).
A request passes only if it carries a live run's per-run token; then only Claude Code's API
routes go through, every auth-ish header from the sandbox is replaced by the real credential,
and the request goes upstream over verified TLS. Responses stream back chunk by chunk (server-sent
events are never buffered) while the relay reads each response's token usage to enforce the
run's budget. Redirects from upstream are never followed.

Contract:
- `start()` binds 127.0.0.1 on a free port and returns (host, port); `stop()` closes it and every
  open connection. Both are idempotent.
- `register_run(run_id, token, credential, budget, max_concurrent=)` makes `token` valid until
  `unregister_run(run_id)`, which returns the run's final usage; `usage(run_id)` reads it live.
- At most `max_concurrent` requests of a run go upstream at once; more wait for a slot (up to
  `slot_wait` seconds, then 429), and meet the budget as it stands when their turn comes.
- A response the relay did not pass on to its end is settled at the most its request could cost
  (its max_tokens), never at the partial usage seen before the cut.
- `on_event(run_id, event)` receives one event per request that named a live run ("api_request"
  with path, status and tokens, "api_refused" with the reason) and one "budget_exhausted" when
  the cap is reached. Events and log lines never hold headers, bodies, tokens or the credential.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import secrets
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vmsbx.agent.budget import Budget, RequestFacts, Usage, read_request
from vmsbx.agent.credential import Credential
from vmsbx.agent.relay_rules import (
    METERED_PATHS,
    NO_RETRY,
    REFUSALS,
    Upstream,
    error_body,
    match_run,
    parse_upstream,
    presented_tokens,
    response_headers,
    route_allowed,
    upstream_headers,
)
from vmsbx.agent.usage_meter import UsageMeter
from vmsbx.config.models import DEFAULT_MAX_CONCURRENT
from vmsbx.errors import ConfigError

log = logging.getLogger("vmsbx.agent.relay")

EventSink = Callable[[str, dict[str, Any]], None]

# The Messages API accepts requests up to 32 MB.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
_MIN_TOKEN_LENGTH = 32
_CHUNK = 64 * 1024
# Claude Code tells the API it waits up to 600 s (x-stainless-timeout); a stream may idle as long.
_TIMEOUT_SECONDS = 600.0
# How long a request waits for one of its run's slots before it is answered 429. Claude Code
# retries a 429 after `retry-after`; waiting first spares it the retries in a short burst.
_SLOT_WAIT_SECONDS = 120.0


@dataclass
class _Run:
    token: str
    credential: Credential
    budget: Budget | None
    max_concurrent: int
    slots: threading.BoundedSemaphore
    usage: Usage = field(default_factory=Usage)
    exhausted_reported: bool = False


class Relay:
    """The host agent's API relay (see the module docstring for its contract)."""

    def __init__(
        self,
        upstream: str,
        *,
        ca_file: Path | None = None,
        on_event: EventSink | None = None,
        timeout: float = _TIMEOUT_SECONDS,
        slot_wait: float = _SLOT_WAIT_SECONDS,
    ) -> None:
        self.upstream: Upstream = parse_upstream(upstream)
        self._tls = ssl.create_default_context()
        if ca_file is not None:
            try:
                self._tls.load_verify_locations(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as error:
                raise ConfigError(
                    f"agent.api_ca_file {ca_file}: cannot load it as a CA certificate ({error})",
                    hint="point it at a PEM file holding the CA that signs the upstream's certificate",
                ) from None
        self._on_event = on_event
        self.timeout = timeout
        self.slot_wait = slot_wait
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._server: _RelayServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Listen on 127.0.0.1 (a free port) in a background thread; return (host, port)."""
        if self._server is None:
            self._server = _RelayServer(("127.0.0.1", 0), self)
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.1,), name="vmsbx-relay", daemon=True
            )
            self._thread.start()
            log.info("API relay on %s:%d -> %s", *self.address, self.upstream.host_header)
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the relay is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop listening and cut every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- runs --------------------------------------------------------------------------------

    def register_run(
        self,
        run_id: str,
        token: str,
        credential: Credential,
        budget: Budget | None = None,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    ) -> None:
        """Accept `token` for `run_id` from now on (replacing an earlier registration of the run,
        whose usage and requests in flight carry over)."""
        if len(token) < _MIN_TOKEN_LENGTH:
            raise ValueError("a run token must be at least 32 characters (use agentrun.new_token())")
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be a whole number of at least 1, not {max_concurrent!r}")
        with self._lock:
            for other_id, other in self._runs.items():
                if other_id != run_id and secrets.compare_digest(other.token, token):
                    raise ValueError(f"run {other_id} already holds this token")
            previous = self._runs.get(run_id)
            same_cap = previous is not None and previous.max_concurrent == max_concurrent
            self._runs[run_id] = _Run(
                token=token,
                credential=credential,
                budget=budget,
                max_concurrent=max_concurrent,
                slots=previous.slots if previous and same_cap else threading.BoundedSemaphore(max_concurrent),
                usage=previous.usage if previous else Usage(),
            )

    def unregister_run(self, run_id: str) -> Usage | None:
        """Refuse the run's token from now on; return its final usage (None if unknown)."""
        with self._lock:
            run = self._runs.pop(run_id, None)
        return run.usage if run else None

    def usage(self, run_id: str) -> Usage:
        """What the run has used so far (zero for an unknown run)."""
        with self._lock:
            run = self._runs.get(run_id)
            return run.usage if run else Usage()

    # -- used by the handler -----------------------------------------------------------------

    def _lookup(self, presented: list[str]) -> tuple[str, _Run] | None:
        with self._lock:
            run_id = match_run(presented, {rid: run.token for rid, run in self._runs.items()})
            return (run_id, self._runs[run_id]) if run_id is not None else None

    def _is_live(self, run_id: str, run: _Run) -> bool:
        """Whether the run still holds the token its request was admitted with."""
        with self._lock:
            current = self._runs.get(run_id)
            return current is not None and secrets.compare_digest(current.token, run.token)

    def _budget_left(self, run_id: str) -> bool:
        with self._lock:
            run = self._runs.get(run_id)
            return run is None or run.budget is None or not run.budget.exhausted_by(run.usage)

    def _account(self, run_id: str, used: Usage) -> tuple[Usage, dict[str, Any] | None]:
        """Add one response's usage; returns the run total and a budget_exhausted event, once."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return used, None
            run.usage = run.usage.plus(used)
            if run.budget is None or run.exhausted_reported or not run.budget.exhausted_by(run.usage):
                return run.usage, None
            run.exhausted_reported = True
            return run.usage, {
                "event": "budget_exhausted",
                "budget": run.budget.describe(),
                "budget_tokens": run.budget.tokens,
                "budget_usd": run.budget.usd,
                "usage": run.usage.as_dict(),
            }

    def _budget_message(self, run_id: str) -> str:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.budget is None:
                return "vmsbx budget exhausted"
            used = run.usage
            return (
                f"vmsbx budget exhausted: this run has used {used.total_tokens} tokens "
                f"(${used.cost_usd:.2f}) of its --budget {run.budget.describe()}; no further API "
                "requests are relayed"
            )

    def _emit(self, run_id: str, event: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(run_id, event)
        except Exception:
            # A failing sink must not break the agent's API access; the trace names no secret.
            log.exception("relay event sink failed")


class _RelayServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], relay: Relay) -> None:
        self.relay = relay
        self._open: set[socket.socket] = set()
        self._upstreams: set[http.client.HTTPConnection] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _RelayHandler)

    @contextlib.contextmanager
    def upstream_connection(self, connection: http.client.HTTPConnection) -> Iterator[None]:
        """Track an upstream connection so that close_all() cuts it too; close it at the end."""
        with self._open_lock:
            self._upstreams.add(connection)
        try:
            yield
        finally:
            with self._open_lock:
                self._upstreams.discard(connection)
            connection.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self._open_lock:
            sockets = [*self._open, *(c.sock for c in self._upstreams if c.sock is not None)]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Never print the default traceback: locals are not shown, but be terse and sure.
        log.warning("relay connection from %s ended with an error", client_address[0])


class _RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RelayServer
    server_version = "vmsbx-relay"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.relay.timeout)

    def log_message(self, format: str, *args: Any) -> None:
        # The default access log would print the request line; the relay logs its own lines.
        pass

    def do_POST(self) -> None:
        self._relay()

    def do_GET(self) -> None:
        self._relay()

    def do_PUT(self) -> None:
        self._relay()

    def do_DELETE(self) -> None:
        self._relay()

    def do_PATCH(self) -> None:
        self._relay()

    def do_HEAD(self) -> None:
        self._relay()

    def do_OPTIONS(self) -> None:
        self._relay()

    # -- the one flow ------------------------------------------------------------------------

    def _relay(self) -> None:
        relay = self.server.relay
        started = time.monotonic()
        parts = urlsplit(self.path)
        path, query = parts.path, parts.query
        shown_path = path[:200]
        found = relay._lookup(presented_tokens(self.headers.items()))
        if found is None or not self.path.startswith("/"):
            log.warning(
                "refused %s %r from %s: no live run token", self.command, shown_path, self.client_address[0]
            )
            self._refuse("unauthenticated", "vmsbx relay: this request carries no live run token", close=True)
            return
        run_id, run = found

        def refused(reason: str, message: str, *, close: bool = False) -> None:
            # Recorded before the answer goes out, so a client that sees it finds it recorded.
            status = REFUSALS[reason][0]
            log.info("run %s: refused %s %r (%s)", run_id, self.command, shown_path, reason)
            relay._emit(
                run_id,
                {
                    "event": "api_refused",
                    "reason": reason,
                    "method": self.command,
                    "path": shown_path,
                    "status": status,
                },
            )
            self._refuse(reason, message, close=close)

        if not route_allowed(self.command, path, query):
            refused(
                "route",
                f"vmsbx relay: {self.command} {shown_path} is not an API route the agent may use",
                close=True,
            )
            return
        if "transfer-encoding" in self.headers or len(self.headers.get_all("content-length") or []) > 1:
            refused(
                "bad_request",
                "vmsbx relay: a request body needs exactly one Content-Length (no chunked bodies)",
                close=True,
            )
            return
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST_BYTES:
            refused(
                "too_large", "vmsbx relay: request body missing a valid length or above 32 MB", close=True
            )
            return
        # The slot is taken before the body is read: waiting requests hold no body in memory.
        if not run.slots.acquire(timeout=relay.slot_wait):
            refused(
                "busy",
                f"vmsbx relay: this run may have at most {run.max_concurrent} API request(s) in flight "
                "at once (agent.max_concurrent_requests) and has that many; retry when one is done",
                close=True,
            )
            return
        try:
            body = self.rfile.read(length) if length else b""
            if len(body) != length or self._client_gone():
                # A client that left while it waited: nothing of it goes upstream.
                self.close_connection = True
                return
            if not relay._is_live(run_id, run):
                self._refuse("unauthenticated", "vmsbx relay: this run has ended", close=True)
                return
            if not relay._budget_left(run_id):
                refused("budget", relay._budget_message(run_id))
                return
            self._forward(run_id, run.credential, path, query, body, started)
        finally:
            run.slots.release()

    def _client_gone(self) -> bool:
        """Whether the client has closed its end (readable with nothing to read: end of file).
        A client that pipelines its next request is still there."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _forward(
        self, run_id: str, credential: Credential, path: str, query: str, body: bytes, started: float
    ) -> None:
        relay = self.server.relay
        upstream = relay.upstream
        target = upstream.prefix + path + (f"?{query}" if query else "")
        connection: http.client.HTTPConnection
        if upstream.scheme == "https":
            connection = http.client.HTTPSConnection(
                upstream.host, upstream.port, timeout=relay.timeout, context=relay._tls
            )
        else:
            connection = http.client.HTTPConnection(upstream.host, upstream.port, timeout=relay.timeout)
        event: dict[str, Any] = {"event": "api_request", "method": self.command, "path": path}
        with self.server.upstream_connection(connection):
            try:
                headers = upstream_headers(self.headers.items(), credential, upstream, len(body))
                connection.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    connection.putheader(name, value)
            except ValueError:
                # http.client refuses header values with line breaks; its message would quote one.
                relay._emit(run_id, {**event, "status": 400, "error": "malformed header"})
                self._refuse("bad_request", "vmsbx relay: a request header is malformed", close=True)
                return
            try:
                connection.endheaders(body)
                response = connection.getresponse()
            except ssl.SSLCertVerificationError as error:
                message = (
                    "vmsbx relay: the upstream API's TLS certificate failed verification "
                    f"({error.verify_message})"
                )
                log.error("run %s: %s", run_id, message)
                relay._emit(run_id, {**event, "status": 502, "error": "upstream TLS verification failed"})
                self._refuse("upstream", message, extra=(NO_RETRY,))
                return
            except (OSError, http.client.HTTPException) as error:
                message = f"vmsbx relay: cannot reach the upstream API ({type(error).__name__})"
                log.error("run %s: %s", run_id, message)
                relay._emit(run_id, {**event, "status": 502, "error": type(error).__name__})
                self._refuse("upstream", message)
                return
            if 300 <= response.status < 400:
                message = (
                    f"vmsbx relay: the upstream API answered with a redirect ({response.status}); "
                    "vmsbx does not follow it"
                )
                log.error("run %s: %s", run_id, message)
                relay._emit(run_id, {**event, "status": 502, "error": f"upstream redirect {response.status}"})
                self._refuse("upstream", message, extra=(NO_RETRY,))
                return
            status = response.status

            def settle(used: Usage, cut_off: bool) -> None:
                total, exhausted = relay._account(run_id, used)
                log.info(
                    "run %s: %s %s -> %d (%d in, %d out tokens%s; run total %d)",
                    run_id,
                    self.command,
                    path,
                    status,
                    used.input_tokens + used.cache_creation_input_tokens + used.cache_read_input_tokens,
                    used.output_tokens,
                    ", cut off: settled at the request's max_tokens" if cut_off else "",
                    total.total_tokens,
                )
                relay._emit(
                    run_id,
                    {
                        **event,
                        "status": status,
                        "duration_ms": round((time.monotonic() - started) * 1000),
                        **{key: value for key, value in used.as_dict().items() if key != "requests"},
                        "run_total_tokens": total.total_tokens,
                        "run_cost_usd": round(total.cost_usd, 6),
                        **({"cut_off": True} if cut_off else {}),
                    },
                )
                if exhausted is not None:
                    log.warning("run %s: budget exhausted (%s)", run_id, exhausted["budget"])
                    relay._emit(run_id, exhausted)

            self._stream_back(response, path, read_request(body), settle)

    def _stream_back(
        self,
        response: http.client.HTTPResponse,
        path: str,
        request: RequestFacts,
        settle: Callable[[Usage, bool], None],
    ) -> None:
        """Pass the response on chunk by chunk, metering usage, and `settle` the usage exactly once:
        before the last chunk goes out, so that when a client sees the end of a response its usage
        is counted and its events are out (its next request meets the updated budget).

        If either side hangs up first, upstream is not read on (closing it stops the generation,
        and reading on would only buy tokens nobody receives); the usage is settled at the most
        the request could cost, since the output count arrives only in the last events."""
        meter = UsageMeter(response.getheader("content-type") or "", request.model)
        metered = (
            path in METERED_PATHS and (response.getheader("content-encoding") or "identity") == "identity"
        )
        self.send_response(response.status, response.reason)
        for name, value in response_headers(response.getheaders()):
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        settled = False
        try:
            while True:
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                if metered:
                    meter.feed(chunk)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            settle(meter.finish() if metered else Usage(requests=1), False)
            settled = True
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (OSError, http.client.HTTPException):
            self.close_connection = True
        finally:
            if not settled:
                # An error answer generated nothing: only a success is charged at its ceiling.
                cut_off = metered and 200 <= response.status < 300 and not meter.ended
                settle(meter.finish(request if cut_off else None) if metered else Usage(requests=1), cut_off)

    def _refuse(
        self, reason: str, message: str, *, close: bool = False, extra: tuple[tuple[str, str], ...] = ()
    ) -> int:
        status, kind, headers = REFUSALS[reason]
        data = error_body(kind, message)
        try:
            self.send_response(status)
            for name, value in (*headers, *extra):
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        return status
