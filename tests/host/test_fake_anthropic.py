"""The scripted fake of the Messages API answers like the real one: SSE framing, block order,
tool-use JSON deltas, usage, non-streamed JSON, side requests that consume no turn."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fake_anthropic import FakeAnthropic
from sse import Event, parse_events

SCRIPT: list[dict[str, Any]] = [
    {
        "text": "I'll write the file and check it.",
        "tool_use": [
            {"name": "Write", "input": {"file_path": "/w/hello.txt", "content": "hello\n"}},
            {"name": "Bash", "input": {"command": "cat /w/hello.txt"}},
        ],
        "usage": {"input_tokens": 1234, "output_tokens": 56, "cache_read_input_tokens": 7},
    },
    {"text": "All done."},
]
TOOLS = [{"name": "Bash", "input_schema": {"type": "object"}}]


def _post(url: str, path: str, body: dict[str, Any]) -> http.client.HTTPResponse:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", path, json.dumps(body), {"content-type": "application/json", "x-api-key": "k"})
    return connection.getresponse()


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while chunk := response.read1(4096):
        yield chunk


def _assemble(events: list[Event]) -> dict[str, Any]:
    """Rebuild the message the way an SDK does: from the event sequence alone."""
    assert events[0].event == "message_start"
    assert events[-1].event == "message_stop"
    message = events[0].json()["message"]
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    for event in events[1:]:
        payload = event.json()
        assert payload["type"] == event.event
        if event.event == "content_block_start":
            blocks[payload["index"]] = dict(payload["content_block"])
            partial[payload["index"]] = ""
        elif event.event == "content_block_delta":
            delta = payload["delta"]
            if delta["type"] == "text_delta":
                blocks[payload["index"]]["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta"
                partial[payload["index"]] += delta["partial_json"]
        elif event.event == "content_block_stop":
            block = blocks[payload["index"]]
            if block["type"] == "tool_use":
                block["input"] = json.loads(partial[payload["index"]])
        elif event.event == "message_delta":
            message["stop_reason"] = payload["delta"]["stop_reason"]
            message["usage"].update(payload["usage"])
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def test_streamed_conversation_follows_the_script() -> None:
    with FakeAnthropic(SCRIPT) as fake:
        response = _post(fake.url, "/v1/messages?beta=true", {"model": "m", "stream": True, "tools": TOOLS})
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/event-stream")
        assert response.getheader("transfer-encoding") == "chunked"
        events = list(parse_events(_chunks(response)))
        first = _assemble(events)
        assert first["content"][0] == {"type": "text", "text": "I'll write the file and check it."}
        assert [(b["type"], b["name"], b["input"]) for b in first["content"][1:]] == [
            ("tool_use", "Write", {"file_path": "/w/hello.txt", "content": "hello\n"}),
            ("tool_use", "Bash", {"command": "cat /w/hello.txt"}),
        ]
        assert first["content"][1]["id"] != first["content"][2]["id"]
        assert first["stop_reason"] == "tool_use"
        assert events[0].json()["message"]["usage"]["input_tokens"] == 1234
        assert first["usage"]["output_tokens"] == 56
        assert first["usage"]["cache_read_input_tokens"] == 7
        # Deltas really are split, as the API does, so a client must join them.
        assert sum(e.event == "content_block_delta" for e in events) > 4

        second = _assemble(
            list(parse_events(_chunks(_post(fake.url, "/v1/messages", {"stream": True, "tools": TOOLS}))))
        )
        assert second["content"] == [{"type": "text", "text": "All done."}]
        assert second["stop_reason"] == "end_turn"

        exhausted = _post(fake.url, "/v1/messages", {"stream": False, "tools": TOOLS})
        assert "exhausted" in json.loads(exhausted.read())["content"][0]["text"]
        assert [(r.kind, r.turn, r.query) for r in fake.requests] == [
            ("turn", 0, "beta=true"),
            ("turn", 1, ""),
            ("turn", 2, ""),
        ]
        assert fake.requests[0].headers["x-api-key"] == "k"
        assert fake.requests[0].body["tools"] == TOOLS


def test_side_requests_and_count_tokens_consume_no_turn() -> None:
    with FakeAnthropic(SCRIPT) as fake:
        title_schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
        side = _post(
            fake.url,
            "/v1/messages",
            {
                "model": "m",
                "tools": [],
                "output_config": {"format": {"type": "json_schema", "schema": title_schema}},
            },
        )
        message = json.loads(side.read())
        assert message["type"] == "message"
        assert json.loads(message["content"][0]["text"]) == {"title": "Fake session"}
        counted = _post(fake.url, "/v1/messages/count_tokens", {"model": "m", "messages": []})
        assert counted.status == 200
        assert json.loads(counted.read())["input_tokens"] > 0
        turn = json.loads(_post(fake.url, "/v1/messages", {"tools": TOOLS}).read())
        assert turn["content"][0]["text"] == "I'll write the file and check it."
        assert [r.kind for r in fake.requests] == ["side", "count_tokens", "turn"]
        assert fake.turns_used == 1


def test_repeat_errors_and_unknown_routes() -> None:
    script = [
        {"repeat_tool_use": {"name": "Bash", "input": {"command": "true"}}, "usage": {"input_tokens": 5}},
    ]
    with FakeAnthropic(script) as fake:
        for _ in range(3):
            again = json.loads(_post(fake.url, "/v1/messages", {"tools": TOOLS}).read())
            assert again["content"][0]["name"] == "Bash"
        assert fake.turns_used == 0
        missing = _post(fake.url, "/v1/files", {})
        assert missing.status == 404
        assert json.loads(missing.read())["type"] == "error"
    error_script = [{"error": {"status": 529, "type": "overloaded_error", "message": "busy"}}]
    with FakeAnthropic(error_script) as fake:
        overloaded = _post(fake.url, "/v1/messages", {"tools": TOOLS})
        assert overloaded.status == 529
        assert json.loads(overloaded.read())["error"] == {"type": "overloaded_error", "message": "busy"}


def test_runs_as_a_script_with_port_file_and_record(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"text": "hi from the script"}]))
    port_file = tmp_path / "port"
    record = tmp_path / "requests.jsonl"
    fake_py = Path(__file__).resolve().parents[1] / "fakes" / "fake_anthropic.py"
    process = subprocess.Popen(
        [
            sys.executable,
            str(fake_py),
            "--script",
            str(script),
            "--port-file",
            str(port_file),
            "--record",
            str(record),
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert time.monotonic() < deadline, "the fake never wrote its port file"
            assert process.poll() is None
            time.sleep(0.05)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        reply = json.loads(_post(url, "/v1/messages", {"tools": TOOLS, "model": "m"}).read())
        assert reply["content"][0]["text"] == "hi from the script"
        recorded = [json.loads(line) for line in record.read_text().splitlines()]
        assert [(r["method"], r["path"], r["kind"]) for r in recorded] == [("POST", "/v1/messages", "turn")]
        assert recorded[0]["headers"]["x-api-key"] == "k"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
