"""Readers of what a run leaves in runs/<id>/ besides run.json: the agent's stream-json, the
egress decisions, the relay's account of its API use and the changeset.

The stream, the egress log and the changeset hold guest-controlled text (the agent writes tool
inputs and results, names hosts, names files). Every reader skips malformed lines, bounds what
it keeps, strips terminal control sequences and returns plain typed records; HTML escaping
happens where HTML is made.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.runs.streamview import tool_target
from vmsbx.textsafe import strip_control

STREAM_FILE = "stream.jsonl"
NETWORK_FILE = "network.jsonl"
CHANGESET_FILE = "changes/changeset.json"
RELAY_FILE = "relay.jsonl"
_MAX_LINE = 1 << 20
_MAX_TEXT = 200
# A tool result is shown as an excerpt; the final answer in full up to this many characters.
RESULT_EXCERPT = 2000
ANSWER_MAX = 20_000


def clean(text: object, limit: int = _MAX_TEXT) -> str:
    """One line of guest text safe for a terminal: no control sequences, no newlines, bounded."""
    flat = " ".join(strip_control(str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def clean_block(text: object, limit: int) -> str:
    """Several lines of guest text safe for a terminal: control sequences stripped (newlines and
    tabs kept), bounded, with a note of how much was cut."""
    flat = strip_control(str(text)).strip("\n")
    if len(flat) <= limit:
        return flat
    return flat[:limit] + f"\n… ({len(flat) - limit} more characters)"


class ToolCall(BaseModel):
    """One tool call of the agent, in the order it made them."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(description="tool_use id (cleaned), to pair it with its result.")
    name: str = Field(description="Tool name, e.g. Bash, Edit.")
    target: str = Field(description="What it acted on: the command, the file, the URL.")
    outcome: Literal["ok", "error", "pending"] = "pending"
    started: dt.datetime | None = Field(
        default=None, description="When the agent asked for it (the stream's timestamp, guest-told)."
    )
    duration: float | None = Field(default=None, description="Seconds until its result came back.")
    result: str = Field(default="", description="The start of its result, cleaned (RESULT_EXCERPT).")

    @property
    def label(self) -> str:
        return f"{self.name}: {self.target}" if self.target else self.name


class Answer(BaseModel):
    """The agent's final word: the stream's `result` event (or its last text, if it never ended)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    text: str = Field(description="Cleaned, at most ANSWER_MAX characters.")
    is_error: bool = Field(default=False, description="Claude Code reported the run as failed.")
    turns: int | None = Field(default=None, description="num_turns of the result event.")


class AgentStream(BaseModel):
    """What the stream says the agent did and answered."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tool_calls: list[ToolCall]
    answer: Answer | None = None


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


def _timestamp(value: object) -> dt.datetime | None:
    """An event's ISO timestamp, or None for anything else (the stream is the guest's word)."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=dt.UTC)


def _result_text(content: object) -> str:
    """A tool_result's content: a string, or a list of blocks whose text parts count."""
    if isinstance(content, str):
        return content[: RESULT_EXCERPT * 4]
    if isinstance(content, list):
        texts = [b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]
        images = sum(1 for b in content if isinstance(b, dict) and b.get("type") == "image")
        return "\n".join(texts)[: RESULT_EXCERPT * 4] + ("\n(an image)" * min(images, 3))
    return ""


def parse_stream(lines: Iterable[bytes]) -> AgentStream:
    """Tool calls (with outcome, time, duration and a result excerpt) and the final answer from
    `claude -p --output-format stream-json --verbose` output."""
    calls: list[ToolCall] = []
    index: dict[str, int] = {}
    answer: Answer | None = None
    last_text = ""
    for event in _json_lines(lines):
        kind = event.get("type")
        stamp = _timestamp(event.get("timestamp"))
        if kind == "result" and isinstance(event.get("result"), str):
            turns = event.get("num_turns")
            answer = Answer(
                text=clean_block(event["result"], ANSWER_MAX), is_error=event.get("is_error") is True,
                turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
            )  # fmt: skip
        for item in _content(event.get("message")):
            if kind == "assistant" and item.get("type") == "tool_use":
                call = ToolCall(
                    id=clean(item.get("id", ""), 100), name=clean(item.get("name", "?"), 40) or "?",
                    target=clean(tool_target(item.get("input"))), started=stamp,
                )  # fmt: skip
                index[call.id] = len(calls)
                calls.append(call)
            elif kind == "assistant" and item.get("type") == "text" and isinstance(item.get("text"), str):
                last_text = item["text"][: ANSWER_MAX * 2]
            elif kind == "user" and item.get("type") == "tool_result":
                position = index.get(clean(item.get("tool_use_id", ""), 100))
                if position is not None:
                    call = calls[position]
                    outcome: Literal["ok", "error"] = "error" if item.get("is_error") is True else "ok"
                    took = None
                    if stamp is not None and call.started is not None:
                        took = max((stamp - call.started).total_seconds(), 0.0)
                    excerpt = clean_block(_result_text(item.get("content")), RESULT_EXCERPT)
                    calls[position] = call.model_copy(
                        update={"outcome": outcome, "duration": took, "result": excerpt}
                    )
    if answer is None and last_text:
        answer = Answer(text=clean_block(last_text, ANSWER_MAX))
    return AgentStream(tool_calls=calls, answer=answer)


def parse_tool_calls(lines: Iterable[bytes]) -> list[ToolCall]:
    """Tool calls from `claude -p --output-format stream-json --verbose` output, with outcomes."""
    return parse_stream(lines).tool_calls


def read_stream(run_dir: Path) -> AgentStream | None:
    """The run's agent stream, or None when it has no stream.jsonl (not a headless agent run)."""
    path = run_dir / STREAM_FILE
    if not path.is_file():
        return None
    with path.open("rb") as stream:
        return parse_stream(stream)


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


_Summary = TypeVar("_Summary")


def _summarize_file(path: Path, summarize: Callable[[Iterable[bytes]], _Summary]) -> _Summary | None:
    """`summarize` of the JSON-lines file at `path`, or None when the run has no such file."""
    if not path.is_file():
        return None
    with path.open("rb") as stream:
        return summarize(stream)


def read_network(run_dir: Path) -> NetworkSummary | None:
    """The run's egress summary, or None when it has no network.jsonl."""
    return _summarize_file(run_dir / NETWORK_FILE, summarize_network)


class ApiAccount(BaseModel):
    """The relay's account of a run's model API use (relay.jsonl, written by the host: trusted)."""

    model_config = ConfigDict(extra="forbid")
    requests: int = Field(default=0, description="Requests the relay forwarded upstream.")
    refused: int = Field(default=0, description="Requests the relay refused (budget, concurrency, …).")
    errors: int = Field(default=0, description="Forwarded requests answered with a status >= 400.")
    input_tokens: int = Field(default=0, description="Input tokens, cache writes and reads included.")
    output_tokens: int = 0
    cost_usd: float = Field(default=0.0, description="Estimated at the list prices in agent/budget.py.")
    api_seconds: float = Field(default=0.0, description="Summed time the requests took.")
    budget_exhausted: bool = False


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 62 else 0


def summarize_api(lines: Iterable[bytes]) -> ApiAccount:
    account = ApiAccount()
    for event in _json_lines(lines):
        kind = event.get("event")
        if kind == "api_refused":
            account.refused += 1
        elif kind == "budget_exhausted":
            account.budget_exhausted = True
        elif kind == "api_request":
            account.requests += 1
            status = event.get("status")
            account.errors += isinstance(status, int) and status >= 400
            account.input_tokens += sum(
                _count(event.get(name))
                for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
            )
            account.output_tokens += _count(event.get("output_tokens"))
            cost = event.get("cost_usd")
            if isinstance(cost, (int, float)) and not isinstance(cost, bool) and 0 <= cost < 1e9:
                account.cost_usd += float(cost)
            account.api_seconds += _count(event.get("duration_ms")) / 1000
    return account


def read_api(run_dir: Path) -> ApiAccount | None:
    """The run's API account, or None when the relay recorded nothing for it."""
    return _summarize_file(run_dir / RELAY_FILE, summarize_api)


class ChangedFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    change: str = Field(default="", description="added | modified | deleted …, as the changeset says.")
    classification: str = Field(
        default="", description="What apply does with it: apply | sensitive (held back) | git | refused."
    )
    reason: str = Field(default="", description="Why it is held back or refused.")
    diff: str | None = Field(default=None, description="Its diff against the project (capped), if read.")


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
            classification, reason = entry.get("classification"), entry.get("reason")
            files.append(
                ChangedFile(
                    path=clean(entry["path"], 300), change=clean(change, 20),
                    classification=clean(classification, 20) if isinstance(classification, str) else "",
                    reason=clean(reason, 300) if isinstance(reason, str) else "",
                )
            )  # fmt: skip
    return files


def read_changeset(run_dir: Path) -> list[ChangedFile] | None:
    path = run_dir / CHANGESET_FILE
    if not path.is_file():
        return None
    return parse_changeset(path.read_bytes())
