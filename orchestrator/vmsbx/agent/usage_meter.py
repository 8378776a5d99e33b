"""Reads token usage off a Messages API response as its bytes pass through the relay.

Streamed responses are server-sent events: `message_start.message.usage` holds the input side,
`message_delta.usage` the cumulative counts so far. Non-streamed responses are one JSON message
with a top-level `usage`. The meter never holds more than one event (or one capped JSON body) in
memory, and never changes the bytes: the relay forwards each chunk as it arrives.
"""

from __future__ import annotations

import json
from typing import Any

from vmsbx.agent.budget import RequestFacts, Usage, cut_off_fields, merge_usage_fields, usage_from_api

# Larger events or JSON bodies are not metered (a message's usage sits in small events); the cap
# keeps a huge response from growing the relay's memory.
_MAX_EVENT = 1024 * 1024
_MAX_JSON = 8 * 1024 * 1024


class UsageMeter:
    """Feed it the response body chunk by chunk; `usage()` is what the response reported."""

    def __init__(self, content_type: str, request_model: str | None) -> None:
        self._sse = content_type.split(";", maxsplit=1)[0].strip().lower() == "text/event-stream"
        self._buffer = bytearray()
        self._overflow = False
        self._fields: dict[str, int] = {}
        self._started = False
        self.model = request_model
        self.ended = False
        """True once the final event (message_stop) or the whole JSON message has passed."""

    def feed(self, chunk: bytes) -> None:
        if self._overflow:
            return
        self._buffer += chunk
        if not self._sse:
            if len(self._buffer) > _MAX_JSON:
                self._overflow = True
                self._buffer.clear()
            return
        # SSE events end with a blank line; the spec allows \r\n, \n or \r line ends.
        normalised = bytes(self._buffer).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, rest = normalised.split(b"\n\n")
        for event in events:
            self._event(event)
        self._buffer = bytearray(rest)
        if len(self._buffer) > _MAX_EVENT:
            # One oversized event (a long text delta) carries no usage: skip to its end.
            self._buffer.clear()

    def finish(self, cut_off: RequestFacts | None = None) -> Usage:
        """The response's usage, once the body has ended; pass the request's facts if it was cut
        off before its end (then it is settled at the most the request could cost)."""
        if self._sse:
            if self._buffer.strip():
                self._event(bytes(self._buffer))
        elif not self._overflow and self._buffer:
            message = _json(bytes(self._buffer))
            if isinstance(message, dict):
                self._message(message)
                self.ended = True  # a whole JSON message: its usage is final
        self._buffer.clear()
        if cut_off is not None and not self.ended:
            return usage_from_api(cut_off_fields(self._fields, cut_off, input_seen=self._started), self.model)
        return usage_from_api(self._fields, self.model)

    def _event(self, event: bytes) -> None:
        data = b"\n".join(
            line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        )
        payload = _json(data)
        if not isinstance(payload, dict):
            return
        kind = payload.get("type")
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            self._message(payload["message"])
        elif kind == "message_delta":
            merge_usage_fields(self._fields, payload.get("usage"))
        elif kind == "message_stop":
            self.ended = True

    def _message(self, message: dict[str, Any]) -> None:
        self._started = True
        model = message.get("model")
        if isinstance(model, str) and model:
            self.model = model[:200]
        merge_usage_fields(self._fields, message.get("usage"))


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
