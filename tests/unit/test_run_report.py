"""The run report a user reads after an unattended run (`vmsbx show`, text and HTML), from the
recorded output of a real Claude Code run (golden/agent_stream.jsonl, agent_relay.jsonl): the
task, the answer, each file's diff, each tool call's time, duration and result, the API
account; guest text escaped and capped. Also `vmsbx runs`' one-line rows."""

from __future__ import annotations

import datetime as dt
import re

from goldens import GOLDEN, check_golden

from vmsbx.cli.runs import render_rows
from vmsbx.config.models import SandboxSettings
from vmsbx.observe.artifacts import ChangedFile, parse_stream, summarize_api
from vmsbx.observe.report import RunReport, render_html, render_text
from vmsbx.observe.samples import Sample
from vmsbx.runs.agentrun import claude_argv
from vmsbx.runs.record import BudgetCap, Resources, RunRecord

HOSTILE = "<script>document.body.setAttribute('data-pwned','1')</script><img src=x onerror=alert(1)>"
TASK = "add a hello script and run it"


def _record(command: list[str], **extra: object) -> RunRecord:
    return RunRecord(
        id="59125da60a5b", vm="default", sandbox="systemd", command=tuple(command), tty=False,
        policy=SandboxSettings(network="api", memory_max=4 << 30), unit="vmsbx-run-59125da60a5b.service",
        exposure=0.5, state="exited", started_at="2026-12-02T00:16:01.806+00:00",
        ended_at="2026-12-02T00:16:30.000+00:00", duration=28.2, exit_code=0, reason="exited with code 0",
        resources=Resources(memory_peak=121 << 20, cpu_usage_usec=26_430_961, tasks_peak=17),
        relay=True, changes="collected", **extra,
    )  # fmt: skip


def _sample(i: int, mem: int) -> Sample:
    return Sample(t=1796170562.0 + i, mono=float(i), cpu_pct=50.0, mem=mem, mem_peak=mem, mem_max=4 << 30)


DIFF = (
    "added file hello.sh\nnew mode 755\n--- a/hello.sh\n+++ b/hello.sh\n@@ -0,0 +1,2 @@\n"
    '+#!/bin/sh\n+echo "hello from $(id -un 2>/dev/null || id -u) inside the vmsbx sandbox"\n\n'
)


def _agent_report(**extra: object) -> RunReport:
    stream = parse_stream((GOLDEN / "agent_stream.jsonl").read_bytes().splitlines())
    return RunReport(
        record=_record(claude_argv("2.1.332", TASK), **extra),
        samples=[_sample(0, 60 << 20), _sample(1, 118 << 20), _sample(2, 90 << 20)],
        tool_calls=stream.tool_calls,
        answer=stream.answer,
        api=summarize_api((GOLDEN / "agent_relay.jsonl").read_bytes().splitlines()),
        changes=[
            ChangedFile(path="hello.sh", change="added", classification="apply", diff=DIFF),
            ChangedFile(
                path=".envrc", change="added", classification="sensitive", reason="direnv runs it", diff=""
            ),
            ChangedFile(path="bad\\nname", change="added", classification="refused", reason="control chars"),
        ],
    )


def test_the_stream_gives_the_answer_and_each_tool_calls_time_duration_and_result() -> None:
    stream = parse_stream((GOLDEN / "agent_stream.jsonl").read_bytes().splitlines())
    assert stream.answer is not None and stream.answer.text.startswith("I wrote hello.sh and ran it.")
    assert stream.answer.turns == 3 and not stream.answer.is_error
    write, bash = stream.tool_calls
    assert write.started == dt.datetime(2026, 12, 2, 0, 16, 20, 744000, tzinfo=dt.UTC)
    assert write.duration is not None and abs(write.duration - 1.975) < 1e-6
    assert write.result.startswith("File created successfully at:")
    assert (bash.label, bash.outcome) == ("Bash: chmod +x hello.sh && ./hello.sh", "ok")
    assert bash.result == "hello from 64264\n64264 inside the vmsbx sandbox"


def test_hostile_tool_results_and_answers_are_stripped_and_capped() -> None:
    import json

    use = {"type": "tool_use", "id": "t", "name": "Bash", "input": {"command": "x"}}
    result = {
        "type": "tool_result", "tool_use_id": "t",
        "content": [{"type": "text", "text": "\x1b]0;owned\x07ok\x1b[2J" + "y" * 50_000}],
    }  # fmt: skip
    lines = [
        json.dumps({"type": "assistant", "timestamp": "not a time", "message": {"content": [use]}}).encode(),
        json.dumps({"type": "user", "timestamp": 12, "message": {"content": [result]}}).encode(),
        json.dumps({"type": "result", "result": "\x1b[31m" + "z" * 100_000, "num_turns": True}).encode(),
    ]
    stream = parse_stream(lines)
    (call,) = stream.tool_calls
    assert call.started is None and call.duration is None
    assert call.result.startswith("ok") and "\x1b" not in call.result and len(call.result) < 2100
    assert stream.answer is not None and stream.answer.turns is None
    assert "\x1b" not in stream.answer.text and len(stream.answer.text) < 20_100


def test_text_report_golden() -> None:
    check_golden("report_agent_run.txt", render_text(_agent_report()))


def test_html_report_shows_task_answer_diffs_results_and_tokens_with_guest_text_escaped() -> None:
    report = _agent_report()
    calls = [
        c.model_copy(update={"result": HOSTILE}) if c.name == "Bash" else c for c in report.tool_calls or []
    ]
    answer = report.answer.model_copy(update={"text": "Done. " + HOSTILE}) if report.answer else None
    changes = [ChangedFile(path=HOSTILE, change="added", classification="apply", diff="+" + HOSTILE + "\n")]
    page = render_html(report.model_copy(update={"tool_calls": calls, "answer": answer, "changes": changes}))
    assert f'<pre id="task">{TASK}</pre>' in page
    assert '<pre id="answer">Done. &lt;script&gt;' in page
    assert "3 request(s), 300 input / 60 output tokens, ≈ $0.0024 at list prices, no budget" in page
    assert re.search(
        r'<details class="file"><summary><code>\+ &lt;script&gt;.*?<pre class="diff">\+&lt;script', page
    )
    assert re.search(
        r'<li class="call"><details><summary>.*?00:16:23.*?1\.9s.*?<pre class="result">&lt;script', page
    )
    assert "<script" not in page and "<img" not in page


def test_api_account_says_what_is_left_of_the_budget_and_the_relay_is_the_runs_network() -> None:
    report = _agent_report(budget=BudgetCap(tokens=1000, usd=0.5))
    text = render_text(report)
    assert "budget left 640 of 1000 tokens and $0.50 of $0.50" in text
    # A run under the api policy has no egress proxy: its network is the relay's API requests.
    assert "network         model API via the relay: 3 request(s); nothing else (policy api)" in text


def test_memory_figures_name_their_source() -> None:
    report = _agent_report()
    assert "memory peak     121M of 4.0G (systemd's memory.peak; highest sample 118M)" in render_text(report)
    page = render_html(report)
    assert "Memory in use (memory.current sampled each second; highest sample 118M; scale 0 to 148M)" in page


def test_runs_lists_agent_runs_by_their_task_and_cuts_long_commands_on_one_line() -> None:
    agent = _record(claude_argv("2.1.332", TASK))
    long = _record(["sh", "-c", "echo " + "word " * 60 + "\x1b[2J"]).model_copy(update={"id": "0123456789ab"})
    lines = render_rows([agent, long], 100)
    assert len(lines) == 3, lines
    assert lines[1].startswith("59125da60a5b") and lines[1].rstrip().endswith(f"claude: {TASK}")
    assert "/usr/local/lib/vmsbx/claude" not in lines[1]
    assert lines[2].startswith("0123456789ab") and lines[2].rstrip().endswith("…")
    assert 95 <= max(len(line) for line in lines) < 100 and "\x1b" not in lines[2]
    assert lines[1].index("claude:") == lines[2].index("sh -c") == lines[0].index("TASK / COMMAND")
