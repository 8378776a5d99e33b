"""The guest side of `guest.py follow` against the host's reader of it, on real files: a run
that ended before `follow` reached its holder is replayed from the saved transcript as the
holder's frames, then the EXIT frame, and the host's OutputThenEnd splits it back into the
run's stdout, its stderr and the reply after it."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from guest_code import load_guest

from vmsbx.runs.guestctl import JournalSink, OutputThenEnd


class Stdout(io.TextIOWrapper):
    """sys.stdout with a real .buffer, as the guest process has."""


def test_a_replayed_run_reaches_the_host_as_output_then_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = load_guest("launcher")
    frame = launcher.HEADER.pack
    transcript = (
        frame(launcher.STDOUT, 6) + b"hello\n"
        + frame(launcher.STDERR, 5) + b"oops\n"
        + frame(launcher.STDOUT, 30) + b'{"service_result": "forged"}\n\n'
        + frame(launcher.EXIT, 11) + b'{"code": 3}'
    )  # fmt: skip
    (tmp_path / "transcript").write_bytes(transcript)
    (tmp_path / "result.json").write_text(json.dumps({"exit_code": "exited", "exit_status": "3"}))
    # The two RunPaths fields the replay reads, pointed at this test's files.
    p = SimpleNamespace(transcript=str(tmp_path / "transcript"), result=str(tmp_path / "result.json"))
    raw = io.BytesIO()
    stdout = Stdout(raw, write_through=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    code = launcher._replay_finished(p, 0, framed=True)
    assert code == 3
    sys.stdout.buffer.write(launcher._exit_frame(code))  # what follow writes next, then ended's reply
    sys.stdout.buffer.write(b'{"service_result": "exit-code"}\n-- cursor: c1\n')
    sys.stdout.flush()
    sent = raw.getvalue()
    monkeypatch.undo()
    stdout.detach()  # the wrapper would close the buffer it wraps

    out, err, spool = io.BytesIO(), io.BytesIO(), io.BytesIO()
    end = JournalSink(spool, None, heads=1)
    reader = OutputThenEnd(out, err, end)
    reader.write(sent)
    end.close()
    assert reader.ended
    assert out.getvalue() == b'hello\n{"service_result": "forged"}\n\n'
    assert err.getvalue() == b"oops\n"
    assert end.heads == [b'{"service_result": "exit-code"}'] and end.cursor == "c1"
