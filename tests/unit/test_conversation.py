"""Continuing an agent run's conversation (issue 20), the pure parts: where Claude Code keeps a
cwd's conversations, the argv that resumes one, which run `--continue` / `--resume RUN` pick
(and what they refuse), the files restored into the new HOME and their cap, the guest's reply
checked as hostile, the run token never kept; and `vmsbx runs`' CONV column."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from vmsbx.cli.main import main
from vmsbx.cli.runs import render_rows
from vmsbx.config.models import SandboxSettings
from vmsbx.errors import TransportError, UsageError
from vmsbx.runs import agentrun, conversation
from vmsbx.runs import record as records
from vmsbx.runs.record import RunRecord

SESSION = "0a1b2c3d-0000-4000-8000-00000000000a"
OTHER_SESSION = "0a1b2c3d-0000-4000-8000-00000000000b"
PROJECT = "/home/u/proj"


def _record(
    run_id: str, *, project: str = PROJECT, kept: list[str] | None = None, at: str = "01"
) -> RunRecord:
    return RunRecord(
        id=run_id, vm="default", sandbox="systemd", command=tuple(agentrun.claude_argv("2.1.332", "task")),
        tty=False, policy=SandboxSettings(), unit=f"vmsbx-run-{run_id}.service",
        started_at=f"2026-12-02T00:{at}:00.000+00:00", project=project, conversation=kept or [],
    )  # fmt: skip


# -- where and how ---------------------------------------------------------------------------


def test_munge_makes_every_character_but_letters_and_digits_a_dash() -> None:
    assert (
        conversation.munge("/var/lib/private/vmsbx-ws-abcdefabcdef")
        == "-var-lib-private-vmsbx-ws-abcdefabcdef"
    )
    assert conversation.munge("/workspace") == "-workspace"
    assert conversation.munge("/a b/ü.x_y") == "-a-b---x-y"


def test_argv_resumes_the_named_session_and_stays_headless() -> None:
    argv = agentrun.claude_argv("2.1.332", "go on", resume=SESSION)
    assert argv == [
        "/usr/local/lib/vmsbx/claude/2.1.332/claude", "--dangerously-skip-permissions",
        "--resume", SESSION, "-p", "go on", "--output-format", "stream-json", "--verbose",
    ]  # fmt: skip
    assert agentrun.agent_prompt(argv) == "go on"
    assert agentrun.claude_argv("2.1.332", None, resume=SESSION)[2:] == ["--resume", SESSION]
    assert "--resume" not in agentrun.claude_argv("2.1.332", "fresh")


# -- which run -------------------------------------------------------------------------------


def test_continue_picks_the_projects_newest_run_that_kept_a_conversation() -> None:
    runs = [
        _record("000000000001", kept=[SESSION], at="01"),
        _record("000000000002", kept=[OTHER_SESSION], at="02"),
        _record("000000000003", kept=[], at="03"),  # newer, but kept none
        _record("000000000004", kept=[SESSION], at="04", project="/home/u/other"),
    ]
    assert conversation.pick_run(runs, PROJECT, None).id == "000000000002"


def test_resume_picks_the_named_run_even_when_older() -> None:
    runs = [
        _record("000000000001", kept=[SESSION], at="01"),
        _record("000000000002", kept=[SESSION], at="02"),
    ]
    assert conversation.pick_run(runs, PROJECT, "000000000001").id == "000000000001"


@pytest.mark.parametrize(
    ("runs", "run_id", "said"),
    [
        ([], None, "no earlier agent run of /home/u/proj kept a conversation"),
        ([_record("000000000001", kept=[SESSION], project="/x")], None, "no earlier agent run"),
        ([], "000000000009", "no run '000000000009'"),
        ([_record("000000000001", kept=[SESSION], project="/x")], "000000000001", "is a run of /x, not of"),
        ([_record("000000000001")], "000000000001", "kept no conversation"),
    ],
)
def test_what_cannot_be_continued_is_refused_with_the_way_out(
    runs: list[RunRecord], run_id: str | None, said: str
) -> None:
    with pytest.raises(UsageError) as caught:
        conversation.pick_run(runs, PROJECT, run_id)
    assert said in caught.value.message and caught.value.hint


# -- what is restored ------------------------------------------------------------------------


def test_restore_goes_under_each_name_of_the_new_runs_cwd() -> None:
    text = '{"type":"user","cwd":"/var/lib/vmsbx-ws-oldoldoldold"}\n'
    files = conversation.restore_files(
        "000000000001",
        SESSION,
        text,
        ["/var/lib/vmsbx-ws-newnewnewnew", "/var/lib/private/vmsbx-ws-newnewnewnew"],
    )
    assert files == {
        f".claude/projects/-var-lib-vmsbx-ws-newnewnewnew/{SESSION}.jsonl": text,
        f".claude/projects/-var-lib-private-vmsbx-ws-newnewnewnew/{SESSION}.jsonl": text,
    }
    assert conversation.restore_files("000000000001", SESSION, text, ["/workspace", "/workspace"]) == {
        f".claude/projects/-workspace/{SESSION}.jsonl": text
    }


def test_restore_is_capped_as_the_launch_request_carries_it() -> None:
    fits = "x" * (conversation.RESTORE_MAX - 2)  # JSON adds its two quotes
    assert conversation.restore_files("000000000001", SESSION, fits, ["/workspace"])
    with pytest.raises(UsageError) as caught:
        conversation.restore_files("000000000001", SESSION, fits, ["/a", "/b"])  # two copies
    assert "at most 2 MiB" in caught.value.message and "2 copies" in caught.value.message
    # Escaping counts: quotes double in the request.
    with pytest.raises(UsageError):
        conversation.restore_files("000000000001", SESSION, '"' * (conversation.RESTORE_MAX // 2), ["/w"])


def test_restore_refuses_a_session_id_that_is_not_one() -> None:
    with pytest.raises(UsageError):
        conversation.restore_files("000000000001", "../../.bashrc", "x", ["/workspace"])


# -- the guest's reply, hostile ----------------------------------------------------------------


def _line(name: str, data: bytes, mtime: int = 1) -> bytes:
    return json.dumps({"name": name, "mtime_ns": mtime, "data": base64.b64encode(data).decode()}).encode()


def test_the_guests_sessions_are_read_oldest_first_with_tokens_redacted() -> None:
    reply = b"\n".join([
        _line(f"{SESSION}.jsonl", b'{"out":"key vmsbx-run-AbC_d-9 end"}\n', mtime=2),
        _line(f"{OTHER_SESSION}.jsonl", b"{}\n", mtime=1),
    ])  # fmt: skip
    files, notes = conversation.parse_sessions(reply)
    assert [f.session for f in files] == [OTHER_SESSION, SESSION] and notes == []
    assert files[1].text == '{"out":"key vmsbx-run-[redacted] end"}\n'


def test_a_file_that_is_not_utf8_is_left_out_with_a_note() -> None:
    files, notes = conversation.parse_sessions(_line(f"{SESSION}.jsonl", b"\xff\xfe"))
    assert files == [] and notes == [f"conversation {SESSION}.jsonl not kept: it is not UTF-8"]


@pytest.mark.parametrize(
    "reply",
    [
        b"not json",
        b"[]",
        json.dumps({"name": f"{SESSION}.jsonl", "mtime_ns": 1, "data": "", "extra": 1}).encode(),
        _line("../../etc/passwd", b"x"),
        _line(f"{SESSION}.jsonl/..", b"x"),
        json.dumps({"name": f"{SESSION}.jsonl", "mtime_ns": True, "data": ""}).encode(),
        json.dumps({"name": f"{SESSION}.jsonl", "mtime_ns": 1, "data": "!!!"}).encode(),
        b"\n".join(_line(f"0a1b2c3d-0000-4000-8000-0000000000{i:02d}.jsonl", b"") for i in range(17)),
        b"\n".join(
            _line(f"0a1b2c3d-0000-4000-8000-0000000000{i:02d}.jsonl", b"x" * (3 << 20)) for i in range(3)
        ),
    ],
    ids=[
        "not-json",
        "not-object",
        "extra-key",
        "path-name",
        "dotted-name",
        "bool-mtime",
        "bad-base64",
        "too-many",
        "too-big",
    ],
)
def test_a_reply_that_breaks_the_form_is_refused_whole(reply: bytes) -> None:
    with pytest.raises(TransportError):
        conversation.parse_sessions(reply)


def test_fetch_cap_holds_the_largest_reply_the_guest_may_give() -> None:
    from vmsbx.contract import SESSIONS_MAX_BYTES, SESSIONS_MAX_FILES

    each = SESSIONS_MAX_BYTES // SESSIONS_MAX_FILES
    name = f"{SESSION}.jsonl"
    reply = b"\n".join(_line(name, b"x" * each, mtime=10**19) for _ in range(SESSIONS_MAX_FILES)) + b"\n"
    assert len(reply) <= conversation.FETCH_MAX


# -- kept on the host ------------------------------------------------------------------------


def test_store_and_stored_keep_the_text_private(tmp_path: Path) -> None:
    files, _notes = conversation.parse_sessions(_line(f"{SESSION}.jsonl", b'{"a":1}\n'))
    assert conversation.store(tmp_path, files) == [SESSION]
    assert oct((tmp_path / "sessions" / f"{SESSION}.jsonl").stat().st_mode & 0o777) == "0o600"
    assert conversation.stored(tmp_path, SESSION) == '{"a":1}\n'
    with pytest.raises(UsageError):
        conversation.stored(tmp_path, OTHER_SESSION)
    assert conversation.store(tmp_path / "none", []) == [] and not (tmp_path / "none").exists()


def test_runs_marks_the_runs_that_kept_a_conversation() -> None:
    lines = render_rows([_record("000000000001", kept=[SESSION]), _record("000000000002")], 100)
    assert "CONV" in lines[0]
    column = lines[0].index("CONV")
    assert lines[1][column : column + 4] == "yes "
    assert lines[2][column : column + 4] == "-   "
    assert all(len(line) < 100 for line in lines)


# -- the command line refuses before anything starts -------------------------------------------


@pytest.fixture
def cli_home(vmsbx_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = vmsbx_env / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return project


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    else:
        code = 0
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--continue", "--", "true"], "--continue and --resume go on with an agent run's conversation"),
        (["--resume", "000000000001", "--", "true"], "they take no -- CMD"),
        (["--continue", "--resume", "000000000001", "-p", "x"], "either --continue or --resume"),
        (["--continue", "-p", "x"], "kept a conversation to continue"),
        (["--resume", "not-an-id", "-p", "x"], "invalid run id"),
        (["--resume", "000000000001", "-p", "x"], "is a run of /elsewhere"),
        (["--resume", "000000000002", "-p", "x"], "kept no conversation"),
    ],
)
def test_run_refuses_what_it_cannot_continue(
    cli_home: Path, capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    records.save(_record("000000000001", kept=[SESSION], project="/elsewhere"))
    records.save(_record("000000000002", project=str(cli_home.resolve())))
    code, err = _main(capsys, "run", *args)
    assert code == 2 and said in err and "Traceback" not in err, err
