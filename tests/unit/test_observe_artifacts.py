"""Readers of stream.jsonl, network.jsonl and changeset.json: guest-controlled, parsed defensively."""

from __future__ import annotations

import json

from vmsbx.observe.artifacts import parse_changeset, parse_tool_calls, summarize_network


def _use(tool_id: str, name: str, tool_input: object) -> bytes:
    event = {
        "type": "assistant",
        "message": {"content": [{"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}]},
    }
    return json.dumps(event).encode()


def _result(tool_id: str, is_error: bool) -> bytes:
    event = {
        "type": "user",
        "message": {"content": [{"type": "tool_result", "tool_use_id": tool_id, "is_error": is_error}]},
    }
    return json.dumps(event).encode()


def test_tool_calls_come_in_order_with_their_outcomes() -> None:
    lines = [
        b'{"type":"system","subtype":"init"}',
        _use("a", "Bash", {"command": "npm test"}),
        _result("a", False),
        _use("b", "Edit", {"file_path": "src/app.py", "old_string": "x"}),
        _result("b", True),
        _use("c", "Read", {"file_path": "README.md"}),
    ]
    calls = parse_tool_calls(lines)
    assert [(c.label, c.outcome) for c in calls] == [
        ("Bash: npm test", "ok"),
        ("Edit: src/app.py", "error"),
        ("Read: README.md", "pending"),
    ]


def test_hostile_stream_lines_are_skipped_and_guest_text_is_defused() -> None:
    lines = [
        b"{not json",
        b"\xff\xfe garbage",
        b"[1, 2, 3]",
        b'{"type": "assistant", "message": "not a dict"}',
        b'{"type": "assistant", "message": {"content": "text"}}',
        _use("a", "Bash", {"command": "echo \x1b]0;title\x07hi\x1b[2J\nrm -rf / \u202eevil"}),
        _result("zzz", True),  # a result for a call that never happened changes nothing
        _use("b", "Bash\x1b[31m", ["not", "a", "dict"]),
        _use("c", "Write", {"file_path": "x" * 10_000}),
    ]
    calls = parse_tool_calls(lines)
    assert [c.name for c in calls] == ["Bash", "Bash", "Write"]
    assert calls[0].target == "echo hi rm -rf / evil"
    assert calls[0].outcome == "pending" and calls[1].target == ""
    assert len(calls[2].target) <= 200
    assert all("\x1b" not in c.label for c in calls)


def test_network_decisions_are_counted_per_destination() -> None:
    def line(host: object, port: object, decision: object, size: object = 0) -> bytes:
        record = {
            "time": "t",
            "host": host,
            "port": port,
            "method": "CONNECT",
            "decision": decision,
            "rule": "r",
            "bytes": size,
        }
        return json.dumps(record).encode()

    summary = summarize_network([
        line("registry.npmjs.org", 443, "allow", 1000),
        line("registry.npmjs.org", 443, "allow", 500),
        line("evil.example\x1b[2J", 80, "deny"),
        line("x", 99999, "maybe"),
        b"garbage",
        line("odd", True, "deny", -5),
    ])  # fmt: skip
    assert (summary.allowed, summary.denied) == (2, 2)
    first, second, third = summary.destinations
    assert (first.host, first.port, first.allowed, first.bytes) == ("registry.npmjs.org", 443, 2, 1500)
    assert (second.host, second.denied) == ("evil.example", 1)
    assert (third.port, third.bytes) == (None, 0)


def test_changeset_forms_are_read_and_garbage_is_empty() -> None:
    as_object = json.dumps({"files": [{"path": "a.py", "status": "modified"}, {"path": 3}, "b.txt"]}).encode()
    assert [(c.path, c.change) for c in parse_changeset(as_object)] == [("a.py", "modified"), ("b.txt", "")]
    assert parse_changeset(b"not json") == []
    assert parse_changeset(b'"a string"') == []
