"""The `top` view fits 80 columns and shows guest text literally; the run report (text and HTML)
escapes guest text, carries a strict CSP that matches its one style block, and draws the chart."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re

from rich.console import Console

from vmsbx.config.models import SandboxSettings
from vmsbx.observe.artifacts import parse_tool_calls
from vmsbx.observe.report import RunReport, render_html, render_text
from vmsbx.observe.samples import Sample
from vmsbx.observe.snapshot import Snapshot, VMRow, build_run_row
from vmsbx.observe.top_view import ViewState, render
from vmsbx.runs.record import Resources, RunRecord

HOSTILE = "<script>document.body.setAttribute('data-pwned','1')</script>[bold red]x\x1b]0;t\x07"


def _record(state: str = "running", command: tuple[str, ...] = ("sh", "-c", HOSTILE)) -> RunRecord:
    return RunRecord(
        id="0123456789ab", vm="default", sandbox="systemd", command=command, tty=False,
        policy=SandboxSettings(memory_max=2 << 30, tasks_max=256), unit="vmsbx-run-0123456789ab.service",
        exposure=0.3, state=state, started_at="2026-01-01T00:00:00+00:00",
        ended_at=None if state == "running" else "2026-01-01T00:01:00+00:00",
        duration=None if state == "running" else 60.0, exit_code=None if state == "running" else 0,
        reason=None if state == "running" else "exited 0",
        resources=Resources(memory_peak=150 << 20, cpu_usage_usec=30_000_000),
    )  # fmt: skip


def _sample(i: int) -> Sample:
    return Sample(
        t=1767225600.0 + i, mono=float(i), cpu_usec=i * 1_000_000, cpu_pct=None if i == 0 else 97.5,
        mem=(10 + i) << 20, mem_peak=(10 + i) << 20, mem_max=2 << 30, tasks=4, tasks_max=256,
    )  # fmt: skip


def _snapshot() -> Snapshot:
    now = dt.datetime(2026, 1, 1, 1, 2, 3, tzinfo=dt.UTC).timestamp()
    live = build_run_row(_record(), _sample(5), now=now, last_tool="Bash: " + HOSTILE * 3, net=(12, 3))
    ended = build_run_row(_record("exited"), None, now=now)
    return Snapshot(
        taken_at="2026-01-01T01:02:03+00:00",
        vms=[VMRow(name="default", provider="qemu", state="running", agent=True, runs=[live, ended])],
    )


def test_top_rows_take_live_figures_from_samples_and_ended_ones_from_the_record() -> None:
    live, ended = _snapshot().rows()
    assert (live.elapsed, live.cpu_pct, live.mem, live.mem_max, live.tasks, live.tasks_max) == (
        3723.0, 97.5, 15 << 20, 2 << 30, 4, 256,
    )  # fmt: skip
    assert (live.net_allowed, live.net_denied) == (12, 3)
    assert (ended.elapsed, ended.cpu_pct, ended.mem_peak, ended.net_allowed) == (60.0, None, 150 << 20, None)


def test_top_fits_80_columns_and_shows_guest_text_literally() -> None:
    console = Console(width=80, record=True, color_system=None)
    console.print(render(_snapshot(), ViewState(selected=0, mode="confirm"), width=80))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "0123456789ab running  1h02m    98 15M/15M/2.0G     4/256     12/3      0.3" in text
    assert "0123456789ab exited   1m00s     — —/150M/2.0G      —/256     —         0.3" in text
    assert "↳ Bash: <script>document.body.setAttribute('data-pwned','1')</script>[bold re…" in text
    assert "—" in text  # the ended run has no CPU figure
    assert "Stop run 0123456789ab? y/N" in text
    assert "0123456789ab disk i/o cap: read 512M/s 10000 op/s, write 256M/s 5000 op/s" in text
    assert "\x1b" not in text


def _report() -> RunReport:
    stream = [
        json.dumps({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": HOSTILE}}]}}).encode(),
        json.dumps({"type": "user", "message": {"content": [
            {"type": "tool_result", "tool_use_id": "t1", "is_error": True}]}}).encode(),
    ]  # fmt: skip
    return RunReport(
        record=_record("exited"), samples=[_sample(i) for i in range(30)], tool_calls=parse_tool_calls(stream)
    )


def test_html_report_escapes_guest_text_and_draws_the_chart_without_script() -> None:
    page = render_html(_report())
    assert "<script" not in page
    assert (
        "&lt;script&gt;document.body.setAttribute(&#x27;data-pwned&#x27;,&#x27;1&#x27;)&lt;/script&gt;"
        in page
    )
    assert "\x1b" not in page and "\x07" not in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp is not None
    policy = csp.group(1).replace("&#x27;", "'")
    assert "default-src 'none'" in policy and "script-src 'none'" in policy
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in policy
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    cpu = re.search(
        r'<svg id="cpu-chart"[^>]*data-samples="(\d+)".*?<polyline class="cpu" points="([^"]+)"', page, re.S
    )
    mem = re.search(r'<svg id="mem-chart".*?<polyline class="mem" points="([^"]+)"', page, re.S)
    assert cpu is not None and mem is not None
    assert cpu.group(1) == "29" and len(cpu.group(2).split()) == 29  # the first sample has no CPU %
    assert len(mem.group(1).split()) == 30
    assert "Files changed</h2>\n<p>—</p>" in page  # no changeset: shown as absent


def test_text_report_lists_summary_and_tool_calls() -> None:
    text = render_text(_report())
    assert "exit status     0" in text and "reason          exited 0" in text
    assert "memory peak     150M of 2.0G" in text
    assert "disk i/o cap    read 512M/s 10000 op/s, write 256M/s 5000 op/s" in text
    assert "1.        —      — error   Bash: <script>" in text  # no timestamps: time and duration unknown
    assert "network         none (policy api)" in text and "files changed   —" in text
    assert "\x1b" not in text


def test_keys_that_arrive_together_are_all_read() -> None:
    from vmsbx.cli.top import parse_keys

    assert parse_keys(b"l\x1b[Bk") == ["l", "down", "k"]
    assert parse_keys(b"\x1bOA\x1b[AQ") == ["up", "up", "q"]


def test_top_and_show_say_when_a_disk_io_cap_is_max() -> None:
    record = _record().model_copy(
        update={"policy": SandboxSettings(io_write_bps=2 << 20, io_read_bps="max", io_read_iops="max")}
    )
    row = build_run_row(record, None, now=0.0)
    assert row.io_caps == "read ∞ B/s ∞ op/s, write 2.0M/s 5000 op/s"
    snapshot = Snapshot(
        taken_at="t", vms=[VMRow(name="default", provider="qemu", state="running", agent=True, runs=[row])]
    )
    console = Console(width=80, record=True, color_system=None)
    console.print(render(snapshot, ViewState(selected=0), width=80))
    assert "disk i/o cap: read ∞ B/s ∞ op/s, write 2.0M/s 5000 op/s" in console.export_text()
