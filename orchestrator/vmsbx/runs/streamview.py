"""The host's live view of a headless agent run: Claude Code's stream-json, one line per step.

The raw stream is saved byte for byte (runs/<id>/stream.jsonl); the view shows each tool call
and its outcome on one line. Everything here came from the guest: lines that are not JSON, or
not the shape we expect, are skipped, and all text is stripped of terminal control sequences.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from vmsbx.textsafe import strip_control

_LINE_MAX = 4 * 1024 * 1024
# Which input field names the target of each tool, for the one-line view.
_TARGET_KEYS = (
    "command",
    "file_path",
    "path",
    "notebook_path",
    "url",
    "pattern",
    "query",
    "description",
    "prompt",
)


def one_line(text: str, width: int = 100) -> str:
    flat = " ".join(strip_control(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def tool_target(tool_input: object) -> str:
    if not isinstance(tool_input, dict):
        return ""
    for key in _TARGET_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


@dataclass
class StreamSummary:
    """What the view learned from the stream (untrusted: for display only)."""

    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    result: dict[str, Any] | None = None


def describe(event: object, summary: StreamSummary) -> list[str]:
    """The view's lines for one stream-json event (pure)."""
    if not isinstance(event, dict):
        return []
    kind = event.get("type")
    message = event.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    lines: list[str] = []
    if kind == "assistant" and isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                name = one_line(str(block.get("name", "?")), 40)
                target = one_line(tool_target(block.get("input")), 90)
                summary.tool_calls.append((name, target))
                lines.append(f"→ {name}: {target}" if target else f"→ {name}")
            elif block.get("type") == "text" and isinstance(block.get("text"), str):
                text = strip_control(block["text"]).strip()
                if text:
                    lines.append(text)
    elif kind == "user" and isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                body = block.get("content")
                if isinstance(body, list):
                    body = " ".join(str(part.get("text", "")) for part in body if isinstance(part, dict))
                mark = "✗" if block.get("is_error") else "✓"
                detail = one_line(str(body or ""), 90)
                lines.append(f"  {mark} {detail}" if detail else f"  {mark}")
    elif kind == "result":
        summary.result = {k: event.get(k) for k in ("subtype", "is_error", "num_turns", "duration_ms")}
        turns = event.get("num_turns")
        verdict = "error" if event.get("is_error") else "done"
        lines.append(f"■ {verdict} after {turns} turns" if isinstance(turns, int) else f"■ {verdict}")
    return lines


class StreamView:
    """A sink for the run's stdout: saves raw bytes, prints the readable view."""

    def __init__(self, raw: IO[bytes], show: Callable[[str], None]) -> None:
        self.raw = raw
        self.show = show
        self.pending = b""
        self.summary = StreamSummary()

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.pending += data
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            self._line(line)
        if len(self.pending) > _LINE_MAX:
            self.pending = b""  # a runaway line: keep it in the raw file, not in the view
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        if self.pending.strip():
            self._line(self.pending)
        self.pending = b""
        self.raw.flush()

    def _line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            text = strip_control(line.decode(errors="replace")).strip()
            if text:
                self.show(text)
            return
        for out in describe(event, self.summary):
            self.show(out)
