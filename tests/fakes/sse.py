"""A server-sent events parser that follows the WHATWG "event stream interpretation" rules.

Tests use it to read streams from the fake API and through the relay: line ends may be CRLF, LF
or CR; a line starting with ":" is a comment; "field: value" loses one leading space; several
data lines join with "\n"; a blank line dispatches the event (an event without data is dropped).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def parse_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Yield events as soon as their terminating blank line has arrived."""
    buffer = ""
    pending_cr = False
    name, data = "", []
    for chunk in chunks:
        text = chunk.decode("utf-8")
        if pending_cr and text.startswith("\n"):
            text = text[1:]
        pending_cr = text.endswith("\r")
        buffer += text
        lines = buffer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        buffer = lines.pop()
        for line in lines:
            if line == "":
                if data:
                    yield Event(name or "message", "\n".join(data))
                name, data = "", []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
