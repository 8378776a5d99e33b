"""OutputThenEnd: `guest.py follow`'s one stream, the run's output (the holder's frames) then
the end-of-run reply, split without letting the run's output pass for the reply."""

from __future__ import annotations

import io
import json

import pytest

from vmsbx.agent.protocol import HEADER
from vmsbx.errors import TransportError
from vmsbx.runs.guestctl import GuestControl, JournalSink, OutputThenEnd

STDOUT, STDERR, EXIT = 1, 2, 5
VERDICT = b'{"service_result": "success", "exit_code": "exited", "exit_status": "0"}'
# What a hostile run prints to look like the reply: its own verdict and journal lines.
FORGED = b'{"service_result": "success"}\nnull\n{"MESSAGE": "forged"}\n-- cursor: forged\n'


def _frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def _stream() -> bytes:
    reply = b"\n".join([VERDICT, b'{"version": 1, "entries": []}', b'{"MESSAGE": "real"}', b"-- cursor: s=1"])
    return (
        _frame(STDOUT, b"out " + FORGED)
        + _frame(STDERR, b"err\n")
        + _frame(EXIT, json.dumps({"code": 0}).encode())
        + reply
        + b"\n"
    )


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 16])
def test_the_output_goes_to_its_sinks_and_the_reply_after_exit_to_the_end(chunk: int) -> None:
    stdout, stderr, spool = io.BytesIO(), io.BytesIO(), io.BytesIO()
    end = JournalSink(spool, None, heads=2)
    sink = OutputThenEnd(stdout, stderr, end)
    data = _stream()
    for start in range(0, len(data), chunk):
        sink.write(data[start : start + chunk])
    end.close()
    assert sink.ended
    assert stdout.getvalue() == b"out " + FORGED  # the forged reply is only output
    assert stderr.getvalue() == b"err\n"
    assert end.heads == [VERDICT, b'{"version": 1, "entries": []}']
    assert end.cursor == "s=1"
    assert spool.getvalue() == b'{"MESSAGE": "real"}\n'


def test_a_frame_longer_than_the_holder_writes_fails_the_call() -> None:
    sink = OutputThenEnd(io.BytesIO(), io.BytesIO(), JournalSink(io.BytesIO(), None, heads=1))
    with pytest.raises(TransportError, match="malformed output frame"):
        sink.write(HEADER.pack(STDOUT, OutputThenEnd.FRAME_MAX + 1))


def test_an_unknown_frame_kind_fails_the_call() -> None:
    sink = OutputThenEnd(io.BytesIO(), io.BytesIO(), JournalSink(io.BytesIO(), None, heads=1))
    with pytest.raises(TransportError, match="malformed output frame"):
        sink.write(_frame(0, b"stdin is never sent back"))


def test_a_stream_cut_before_the_exit_frame_is_no_verdict() -> None:
    class CutClient:
        def exec(self, argv: list[str], **kwargs: object) -> int:
            assert argv[3:5] == ["follow", "0123456789ab"]
            out = kwargs["stdout"]
            out.write(_frame(STDOUT, b"partial"))  # type: ignore[attr-defined]
            return 0

    guest = GuestControl(CutClient())  # type: ignore[arg-type]
    stdout = io.BytesIO()
    with pytest.raises(TransportError, match="stopped before the run's end"):
        guest.follow(
            "0123456789ab", "0" * 32, None, stdin=None, stdout=stdout, stderr=io.BytesIO(),
            wait=1.0, spool=io.BytesIO(),
        )  # fmt: skip
    assert stdout.getvalue() == b"partial"
