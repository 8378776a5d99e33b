"""A scripted fake of Anthropic's Messages API, for running the real Claude Code offline.

It answers `POST /v1/messages` (with or without `?beta=true`) the way api.anthropic.com does:
server-sent events when the body asks for `stream`, one JSON message otherwise. What the
assistant says comes from a script, a JSON list of turns; each request of the *main
conversation* (a body that offers `tools`) takes the next turn. Claude Code's side requests
(small-model calls for titles and topics, which offer no tools; `count_tokens`) are answered
with harmless fixed replies and consume nothing. Every request is recorded.

A turn is an object with any of (the text "{cwd}" anywhere in a turn becomes the client's
working directory, read from its system prompt):
  "text": "..."                          a text block
  "tool_use": {"name": ..., "input": {...}} or a list of them: tool_use blocks (stop_reason
                                         "tool_use"); a turn without tool uses ends the turn
  "repeat_tool_use": {...}               like tool_use, but the turn is never used up: an agent
                                         that never stops (for budget tests)
  "usage": {"input_tokens": N, "output_tokens": M, "cache_creation_input_tokens": ...,
            "cache_read_input_tokens": ...}   reported in message_start / message_delta
  "hold": true                           after message_start, wait until `release()` is called
                                         (proves that a proxy does not buffer the stream)
  "redirect": "URL"                      answer 307 with this Location instead of a message
  "error": {"status": 529, "type": "overloaded_error", "message": "..."}   an API error
When the script runs out, the fake answers a text turn saying so.

Importable (`FakeAnthropic(script, tls=ctx).start()`, `.url`, `.requests`, `.stop()`) and
runnable: `python fake_anthropic.py --script turns.json --port-file PORT [--record REQ.jsonl]
[--tls-cert CERT --tls-key KEY] [--host 127.0.0.1] [--port 0]`.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import ssl
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_USAGE = {"input_tokens": 100, "output_tokens": 20}
SIDE_USAGE = {"input_tokens": 10, "output_tokens": 5}
_HOLD_SECONDS = 60.0
_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it (header names lowercased)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    kind: str  # "turn", "side", "count_tokens" or "other"
    turn: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
            "kind": self.kind,
            "turn": self.turn,
        }


@dataclass
class _State:
    script: list[dict[str, Any]]
    record_file: Path | None
    next_turn: int = 0
    messages: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)


class FakeAnthropic:
    """A fake Messages API on loopback; `tls` makes it HTTPS with that server context."""

    def __init__(
        self,
        script: list[dict[str, Any]],
        *,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record_file: Path | None = None,
    ) -> None:
        self._state = _State(script=list(script), record_file=record_file)
        self._tls = tls
        self._server = _Server((host, port), _Handler, self._state, tls)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def turns_used(self) -> int:
        with self._state.lock:
            return self._state.next_turn

    def set_script(self, script: list[dict[str, Any]]) -> None:
        """Replace the turns (and start from the first again)."""
        with self._state.lock:
            self._state.script = list(script)
            self._state.next_turn = 0

    def release(self) -> None:
        """Let every stream paused by a `hold` turn go on."""
        self._state.release.set()

    def start(self) -> FakeAnthropic:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._state.release.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        state: _State,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.state = state
        self.tls = tls
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a slow or failing
        # client cannot stall the accept loop.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with wrapped:
            super().finish_request(wrapped, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-stream is normal (Claude Code aborts side requests).
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- routing -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._other()

    def do_HEAD(self) -> None:
        self._other()

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        body = self._read_body()
        if parts.path == "/v1/messages/count_tokens":
            self._record(parts.path, parts.query, body, "count_tokens")
            tokens = max(1, len(json.dumps(body)) // 4)
            self._send_json(200, {"input_tokens": tokens})
        elif parts.path == "/v1/messages" and isinstance(body, dict):
            self._messages(parts.path, parts.query, body)
        else:
            self._record(parts.path, parts.query, body, "other")
            self._send_error(404, "not_found_error", f"fake: no route for POST {parts.path}")

    def _other(self) -> None:
        parts = urlsplit(self.path)
        self._record(parts.path, parts.query, None, "other")
        self._send_error(404, "not_found_error", f"fake: no route for {self.command} {parts.path}")

    def _messages(self, path: str, query: str, body: dict[str, Any]) -> None:
        state = self.server.state
        if not body.get("tools"):
            self._record(path, query, body, "side")
            self._answer(body, {"text": _side_reply(body), "usage": SIDE_USAGE})
            return
        with state.lock:
            index = state.next_turn
            if index < len(state.script):
                turn = state.script[index]
                if "repeat_tool_use" not in turn:
                    state.next_turn += 1
            else:
                turn = {"text": "The fake API's script is exhausted."}
        self._record(path, query, body, "turn", turn=index)
        if "redirect" in turn:
            self.send_response(307)
            self.send_header("Location", str(turn["redirect"]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if "error" in turn:
            error = turn["error"]
            self._send_error(
                int(error.get("status", 500)),
                error.get("type", "api_error"),
                error["message"],
                headers=error.get("headers") or {},
            )
            return
        self._answer(body, turn)

    # -- answers -----------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any], turn: dict[str, Any]) -> None:
        turn = _with_cwd(turn, body)
        blocks = _blocks(turn, self._message_id())
        usage = {
            "input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 0,
            **(turn.get("usage") or DEFAULT_USAGE),
        }
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        message = {
            "id": f"msg_fake_{self._message_id()}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-fake"),
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if body.get("stream"):
            self._stream(message, hold=bool(turn.get("hold")))
        else:
            self._send_json(200, message)

    def _stream(self, message: dict[str, Any], *, hold: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", f"req_fake_{self._message_id()}")
        self.end_headers()
        usage = message["usage"]
        start_usage = {**usage, "output_tokens": 1}
        self._event(
            "message_start",
            {
                "type": "message_start",
                "message": {**message, "content": [], "stop_reason": None, "usage": start_usage},
            },
        )
        if hold:
            self.server.state.release.wait(_HOLD_SECONDS)
        self._event("ping", {"type": "ping"})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                for piece in _pieces(block["text"], 12):
                    delta = {"type": "text_delta", "text": piece}
                    self._event(
                        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                    )
            else:
                start = {**block, "input": {}}
                self._event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": start},
                )
                for piece in _pieces(json.dumps(block["input"]), 16):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    self._event(
                        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                    )
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        self._event("message_stop", {"type": "message_stop"})
        self._chunk(b"")

    def _event(self, name: str, data: dict[str, Any]) -> None:
        self._chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self._send_json(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)

    # -- bookkeeping -------------------------------------------------------------------------

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise ConnectionError("request body too large")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _record(self, path: str, query: str, body: Any, kind: str, turn: int | None = None) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = RecordedRequest(self.command, path, query, headers, body, kind, turn)
        state = self.server.state
        with state.lock:
            state.requests.append(request)
            if state.record_file is not None:
                with state.record_file.open("a") as out:
                    out.write(json.dumps(request.as_json()) + "\n")

    def _message_id(self) -> int:
        state = self.server.state
        with state.lock:
            state.messages += 1
            return state.messages


# Claude Code 2.1.332 says "Primary working directory: /path" in its system prompt.
_CWD = re.compile(r"[Ww]orking directory: ([^\s\\\"]+)")


def _with_cwd(turn: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """ "{cwd}" in a turn becomes the client's working directory, as its system prompt names it
    (the sandbox's workspace path differs per run and per sandbox kind)."""
    text = json.dumps(turn)
    if "{cwd}" not in text:
        return turn
    found = _CWD.search(json.dumps(body))
    if found is None:
        return turn
    replaced: dict[str, Any] = json.loads(text.replace("{cwd}", found.group(1)))
    return replaced


def _blocks(turn: dict[str, Any], number: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if turn.get("text"):
        blocks.append({"type": "text", "text": str(turn["text"])})
    uses = turn.get("tool_use") or turn.get("repeat_tool_use") or []
    if isinstance(uses, dict):
        uses = [uses]
    for index, use in enumerate(uses):
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_fake_{number:04d}_{index}",
                "name": use["name"],
                "input": use.get("input", {}),
            }
        )
    if not blocks:
        blocks.append({"type": "text", "text": "Done."})
    return blocks


def _side_reply(body: dict[str, Any]) -> str:
    """A reply for a side request: JSON matching a requested schema (session titles), else text."""
    output = body.get("output_config") or {}
    schema = (output.get("format") or {}).get("schema") if isinstance(output, dict) else None
    if not isinstance(schema, dict):
        return "Fake side reply"
    samples = {
        "string": "Fake session",
        "boolean": False,
        "integer": 0,
        "number": 0,
        "array": [],
        "object": {},
    }
    properties = schema.get("properties") or {}
    return json.dumps({name: samples.get(spec.get("type")) for name, spec in properties.items()})


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scripted fake of Anthropic's Messages API.")
    parser.add_argument("--script", type=Path, required=True, help="JSON list of turns")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--record", type=Path, help="append every request here as a JSON line")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    script = json.loads(args.script.read_text())
    if not isinstance(script, list):
        parser.error("the script must be a JSON list of turns")
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    fake = FakeAnthropic(script, tls=tls, host=args.host, port=args.port, record_file=args.record)
    fake.start()
    if args.port_file:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(f"{fake.port}\n")
        tmp.replace(args.port_file)
    print(f"fake Messages API on {fake.url}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(1.0)
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
