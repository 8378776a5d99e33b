"""Readers of what a run leaves in runs/<id>/ besides run.json: the agent's stream-json, the
egress decisions and the changeset.

All three hold guest-controlled text (the agent writes tool inputs, names hosts, names files).
Every reader skips malformed lines, bounds what it keeps, strips terminal control sequences and
returns plain typed records; HTML escaping happens where HTML is made.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.runs.streamview import tool_target
from vmsbx.textsafe import strip_control

STREAM_FILE = "stream.jsonl"
NETWORK_FILE = "network.jsonl"
CHANGESET_FILE = "changes/changeset.json"
_MAX_LINE = 1 << 20
_MAX_TEXT = 200
# Which input field says what a tool call is about, per Claude Code tool name.


def clean(text: object, limit: int = _MAX_TEXT) -> str:
    """One line of guest text safe for a terminal: no control sequences, no newlines, bounded."""
    flat = " ".join(strip_control(str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class ToolCall(BaseModel):
    """One tool call of the agent, in the order it made them."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(description="tool_use id (cleaned), to pair it with its result.")
    name: str = Field(description="Tool name, e.g. Bash, Edit.")
    target: str = Field(description="What it acted on: the command, the file, the URL.")
    outcome: Literal["ok", "error", "pending"] = "pending"

    @property
    def label(self) -> str:
        return f"{self.name}: {self.target}" if self.target else self.name


def _json_lines(lines: Iterable[bytes]) -> Iterable[dict[str, Any]]:
    for line in lines:
        if len(line) > _MAX_LINE:
            continue
        try:
            value = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(value, dict):
            yield value


def _content(message: object) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        return []
    content = message.get("content")
    return [item for item in content if isinstance(item, dict)] if isinstance(content, list) else []


def parse_tool_calls(lines: Iterable[bytes]) -> list[ToolCall]:
    """Tool calls from `claude -p --output-format stream-json --verbose` output, with outcomes."""
    calls: list[ToolCall] = []
    index: dict[str, int] = {}
    for event in _json_lines(lines):
        kind = event.get("type")
        for item in _content(event.get("message")):
            if kind == "assistant" and item.get("type") == "tool_use":
                call = ToolCall(
                    id=clean(item.get("id", ""), 100), name=clean(item.get("name", "?"), 40) or "?",
                    target=clean(tool_target(item.get("input"))),
                )  # fmt: skip
                index[call.id] = len(calls)
                calls.append(call)
            elif kind == "user" and item.get("type") == "tool_result":
                position = index.get(clean(item.get("tool_use_id", ""), 100))
                if position is not None:
                    outcome: Literal["ok", "error"] = "error" if item.get("is_error") is True else "ok"
                    calls[position] = calls[position].model_copy(update={"outcome": outcome})
    return calls


def read_tool_calls(run_dir: Path) -> list[ToolCall] | None:
    """The run's tool calls, or None when it has no stream.jsonl (not an agent run)."""
    path = run_dir / STREAM_FILE
    if not path.is_file():
        return None
    with path.open("rb") as stream:
        return parse_tool_calls(stream)


def last_tool_call(run_dir: Path, tail_bytes: int = 256 * 1024) -> ToolCall | None:
    """The newest tool call, reading only the end of stream.jsonl (for `top`, every second)."""
    path = run_dir / STREAM_FILE
    if not path.is_file():
        return None
    with path.open("rb") as stream:
        stream.seek(0, 2)
        size = stream.tell()
        stream.seek(max(0, size - tail_bytes))
        lines = stream.read().splitlines()
    if size > tail_bytes:
        lines = lines[1:]  # the first line is cut
    calls = parse_tool_calls(lines)
    return calls[-1] if calls else None


class Destination(BaseModel):
    """Egress decisions for one host:port."""

    model_config = ConfigDict(extra="forbid")
    host: str
    port: int | None = None
    allowed: int = 0
    denied: int = 0
    bytes: int = 0


class NetworkSummary(BaseModel):
    """What network.jsonl says: counts and the destinations, in first-seen order."""

    model_config = ConfigDict(extra="forbid")
    allowed: int = 0
    denied: int = 0
    destinations: list[Destination] = Field(default_factory=list)


def summarize_network(lines: Iterable[bytes], max_destinations: int = 500) -> NetworkSummary:
    summary = NetworkSummary()
    by_key: dict[tuple[str, int | None], Destination] = {}
    for event in _json_lines(lines):
        decision = event.get("decision")
        if decision not in ("allow", "deny"):
            continue
        host = clean(event.get("host", "?"), 253) or "?"
        port = event.get("port")
        port = port if isinstance(port, int) and not isinstance(port, bool) and 0 <= port < 65536 else None
        size = event.get("bytes")
        size = size if isinstance(size, int) and not isinstance(size, bool) and 0 <= size < 1 << 62 else 0
        key = (host, port)
        destination = by_key.get(key)
        if destination is None and len(by_key) < max_destinations:
            destination = by_key[key] = Destination(host=host, port=port)
            summary.destinations.append(destination)
        if decision == "allow":
            summary.allowed += 1
        else:
            summary.denied += 1
        if destination is not None:
            destination.bytes += size
            if decision == "allow":
                destination.allowed += 1
            else:
                destination.denied += 1
    return summary


def read_network(run_dir: Path) -> NetworkSummary | None:
    """The run's egress summary, or None when it has no network.jsonl."""
    path = run_dir / NETWORK_FILE
    if not path.is_file():
        return None
    with path.open("rb") as stream:
        return summarize_network(stream)


class ChangedFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    change: str = Field(default="", description="added | modified | deleted …, as the changeset says.")


def parse_changeset(raw: bytes, limit: int = 5000) -> list[ChangedFile]:
    """Changed files from changeset.json: a list of entries, or an object holding one under
    `files`/`changes`; each entry a path string or an object with `path` and a kind of change."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return []
    if isinstance(data, dict):
        data = next((data[k] for k in ("files", "changes", "entries") if isinstance(data.get(k), list)), [])
    if not isinstance(data, list):
        return []
    files = []
    for entry in data[:limit]:
        if isinstance(entry, str):
            files.append(ChangedFile(path=clean(entry, 300)))
        elif isinstance(entry, dict) and isinstance(entry.get("path"), str):
            change = next(
                (entry[k] for k in ("change", "status", "kind", "action") if isinstance(entry.get(k), str)),
                "",
            )
            files.append(ChangedFile(path=clean(entry["path"], 300), change=clean(change, 20)))
    return files


def read_changeset(run_dir: Path) -> list[ChangedFile] | None:
    path = run_dir / CHANGESET_FILE
    if not path.is_file():
        return None
    return parse_changeset(path.read_bytes())
