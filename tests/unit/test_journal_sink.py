"""JournalSink: the end-of-run journal reply split as it streams in, never held whole."""

from __future__ import annotations

import io
import json

import pytest

from vmsbx.runs.guestctl import JournalSink

HEAD = b'{"service_result": "success"}'


def _reply(entries: int) -> bytes:
    lines = [HEAD]
    lines += [json.dumps({"MESSAGE": str(i), "__CURSOR": f"c{i}"}).encode() for i in range(entries)]
    lines.append(b"-- cursor: s=abc;i=42")
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 16])
def test_any_chunking_gives_the_same_split(chunk: int) -> None:
    reply = _reply(500)
    spool = io.BytesIO()
    sink = JournalSink(spool, None, heads=1)
    for start in range(0, len(reply), chunk):
        sink.write(reply[start : start + chunk])
    sink.close()
    assert sink.heads == [HEAD]
    assert sink.cursor == "s=abc;i=42"
    assert sink.entries == 500
    lines = spool.getvalue().splitlines()
    assert [json.loads(line)["MESSAGE"] for line in lines] == [str(i) for i in range(500)]


def test_without_head_the_first_line_is_an_entry_and_a_missing_cursor_keeps_the_old_one() -> None:
    spool = io.BytesIO()
    sink = JournalSink(spool, "old-cursor")
    sink.write(b'{"MESSAGE": "a"}\n{"MESSAGE": "b"}')  # no final newline
    sink.close()
    assert sink.entries == 2 and sink.heads == []
    assert sink.cursor == "old-cursor"
    assert spool.getvalue() == b'{"MESSAGE": "a"}\n{"MESSAGE": "b"}\n'


def test_only_one_line_is_ever_buffered() -> None:
    spool = io.BytesIO()
    sink = JournalSink(spool, None, heads=1)
    sink.write(HEAD + b"\n")
    line = b'{"MESSAGE": "' + b"x" * 1000 + b'"}\n'
    for _ in range(2000):  # ~2 MB through the sink
        sink.write(line)
        assert len(sink._partial) == 0  # a whole line in, nothing kept back
    sink.write(line[:500])
    assert len(sink._partial) == 500
    sink.close()
    assert sink.entries == 2001


def test_lines_that_are_not_entries_are_dropped() -> None:
    spool = io.BytesIO()
    sink = JournalSink(spool, None)
    sink.write(b"garbage from a hostile guest\n\x1b[31m{not json\n-- cursor: c2\n")
    sink.close()
    assert sink.entries == 0 and spool.getvalue() == b""
    assert sink.cursor == "c2"


def test_two_heads_keep_the_verdict_and_the_manifest_out_of_the_journal() -> None:
    manifest = json.dumps({"version": 1, "entries": [{"path": "a", "kind": "file"}]}).encode()
    spool = io.BytesIO()
    sink = JournalSink(spool, None, heads=2)
    sink.write(_reply(3).replace(HEAD + b"\n", HEAD + b"\n" + manifest + b"\n", 1))
    sink.close()
    assert sink.heads == [HEAD, manifest]
    assert sink.entries == 3 and sink.cursor == "s=abc;i=42"


def test_a_runaway_line_is_dropped_not_held() -> None:
    """The guest is not trusted to keep journald's line limit: a line over LINE_MAX is skipped
    to its end (never buffered whole), and the lines after it still arrive."""
    spool = io.BytesIO()
    sink = JournalSink(spool, None, heads=1)
    sink.write(HEAD + b"\n")
    for _ in range(5):
        sink.write(b"{" + b"x" * (JournalSink.LINE_MAX // 2))
        assert len(sink._partial) <= JournalSink.LINE_MAX
    sink.write(b'\n{"MESSAGE":"after"}\n-- cursor: s=1\n')
    sink.close()
    assert spool.getvalue() == b'{"MESSAGE":"after"}\n' and sink.cursor == "s=1"
