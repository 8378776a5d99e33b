"""The live view of a headless agent run: one line per step, hostile text defanged."""

from __future__ import annotations

import io
import json

from vmsbx.runs.streamview import StreamSummary, StreamView, describe


def _assistant(*blocks: dict[str, object]) -> dict[str, object]:
    return {"type": "assistant", "message": {"content": list(blocks)}}


def test_tool_call_and_result_are_one_line_each() -> None:
    summary = StreamSummary()
    call = _assistant({"type": "tool_use", "name": "Bash", "input": {"command": "npm test\n  --watch"}})
    assert describe(call, summary) == ["→ Bash: npm test --watch"]
    result = {"type": "user", "message": {"content": [{"type": "tool_result", "content": "ok\nall good"}]}}
    assert describe(result, summary) == ["  ✓ ok all good"]
    failed = {
        "type": "user",
        "message": {"content": [{"type": "tool_result", "is_error": True, "content": "x"}]},
    }
    assert describe(failed, summary) == ["  ✗ x"]
    assert summary.tool_calls == [("Bash", "npm test\n  --watch".replace("\n  ", " "))]


def test_control_sequences_from_the_guest_are_stripped() -> None:
    summary = StreamSummary()
    call = _assistant(
        {"type": "tool_use", "name": "Write\x1b]0;pwned\x07", "input": {"file_path": "a\x1b[2Jb"}}
    )
    assert describe(call, summary) == ["→ Write: ab"]


def test_view_saves_raw_bytes_and_survives_garbage() -> None:
    raw = io.BytesIO()
    shown: list[str] = []
    view = StreamView(raw, shown.append)
    events = [
        _assistant({"type": "tool_use", "name": "Write", "input": {"file_path": "hello.txt"}}),
        {"type": "result", "subtype": "success", "is_error": False, "num_turns": 3},
    ]
    data = (
        b"not json at all\n" + b"".join(json.dumps(e).encode() + b"\n" for e in events) + b'[1,2]\n{"type":'
    )
    for start in range(0, len(data), 7):  # arrives in arbitrary chunks
        view.write(data[start : start + 7])
    view.close()
    assert raw.getvalue() == data
    assert shown == ["not json at all", "→ Write: hello.txt", "■ done after 3 turns", '{"type":']
    assert view.summary.result == {
        "subtype": "success",
        "is_error": False,
        "num_turns": 3,
        "duration_ms": None,
    }
