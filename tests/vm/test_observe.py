"""Observability on the real guest: `top --once --json` against a sandboxed CPU burner and
memory allocator whose true load we know, the sampler stopping when the run ends, `top`'s keys
through a pseudo-terminal, and the HTML report rendered by headless Chromium."""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from chromium import chromium_run
from vmcli import Cli

pytestmark = pytest.mark.vm

MiB = 1 << 20
ALLOCATED = 128 * MiB
# One shell busy-looping (one core) beside a Python that fills ALLOCATED bytes and sleeps.
WORKLOAD = f'python3 -c "import time; b = b\\"x\\" * {ALLOCATED}; time.sleep(3600)" & while :; do :; done'
SCRIPT = "<script>document.body.setAttribute('data-pwned','1')</script>"
HOSTILE = SCRIPT + "<img src=x onerror=alert(1)>"


def _record(cli: Cli, run_id: str) -> dict[str, object]:
    return json.loads((cli.home / "runs" / run_id / "run.json").read_text())


def _top_row(cli: Cli, run_id: str) -> dict[str, object]:
    snapshot = cli.json("top", "--once")
    assert isinstance(snapshot, dict)
    rows = [row for vm in snapshot["vms"] for row in vm["runs"] if row["id"] == run_id]
    assert len(rows) == 1, snapshot
    return rows[0]


@pytest.fixture(scope="module")
def burner(cli: Cli, default_vm: dict[str, object]) -> Iterator[str]:
    run_id = cli.ok("run", "--detach", "--memory", "1G", "--tasks", "64", "--", "sh", "-c", WORKLOAD)
    run_id_text = run_id.stdout.decode().strip()
    yield run_id_text
    if _record(cli, run_id_text)["state"] == "running":
        cli.run("stop-run", run_id_text)


def test_top_once_json_figures_are_within_bounds_of_the_truth(cli: Cli, burner: str) -> None:
    deadline = time.monotonic() + 240
    row = _top_row(cli, burner)
    while time.monotonic() < deadline and not (
        isinstance(row["mem"], int) and row["mem"] >= ALLOCATED and row["cpu_pct"] is not None
    ):
        time.sleep(2)
        row = _top_row(cli, burner)
    assert row["state"] == "running"
    assert row["mem_max"] == 1 << 30 and row["tasks_max"] == 64  # the unit's own limits
    mem, peak, cpu, tasks = row["mem"], row["mem_peak"], row["cpu_pct"], row["tasks"]
    assert (
        isinstance(mem, int) and isinstance(peak, int) and isinstance(cpu, float) and isinstance(tasks, int)
    )
    assert ALLOCATED <= mem <= ALLOCATED + 96 * MiB, row
    assert mem <= peak <= ALLOCATED + 160 * MiB, row
    assert 40.0 <= cpu <= 210.0, row  # one busy core of the guest's two
    assert 2 <= tasks <= 10, row  # session holder, shell, python
    assert row["exposure"] == _record(cli, burner)["exposure"]
    assert isinstance(row["elapsed"], float) and row["elapsed"] > 0
    # The guest's own reading of the cgroup agrees with what top showed.
    truth = cli.ok(
        "ssh", "--", "cat", f"/sys/fs/cgroup/system.slice/vmsbx-run-{burner}.service/memory.current"
    )
    assert abs(int(truth.stdout) - mem) <= 32 * MiB
    samples = (cli.home / "runs" / burner / "samples.jsonl").read_text().splitlines()
    assert len(samples) >= 2


def test_sampling_stops_when_the_run_ends(cli: Cli, burner: str) -> None:
    cli.ok("stop-run", burner)
    samples = cli.home / "runs" / burner / "samples.jsonl"
    count = len(samples.read_text().splitlines())
    time.sleep(6)
    assert len(samples.read_text().splitlines()) == count
    row = _top_row(cli, burner)
    assert row["state"] == "exited" and row["cpu_pct"] is None
    assert isinstance(row["mem_peak"], int) and row["mem_peak"] >= ALLOCATED  # systemd's recorded peak


def test_top_keys_select_show_the_log_and_stop_a_run_after_confirmation(
    cli: Cli, default_vm: dict[str, object]
) -> None:
    script = "echo visible-in-the-log-tail; exec sleep 3600"
    run_id = cli.ok("run", "--detach", "--", "sh", "-c", script).stdout.decode().strip()
    child = pexpect.spawn(
        sys.executable, ["-m", "vmsbx", "top"], env=cli.env, cwd=str(cli.cwd), dimensions=(30, 80), timeout=90
    )
    try:
        child.expect("q quit")
        child.expect(run_id)  # the newest live run is listed first
        child.send("l")
        child.expect("visible-in-the-log-tail")
        child.send("l")
        child.send("\x1b[A")  # up: stays on the first run
        child.send("k")
        child.expect(f"Stop run {run_id}\\? y/N")
        child.send("n")
        child.expect("not stopped")
        assert _record(cli, run_id)["state"] == "running"
        child.send("k")
        child.expect(f"Stop run {run_id}\\? y/N")
        child.send("y")
        deadline = time.monotonic() + 180
        while _record(cli, run_id)["state"] == "running" and time.monotonic() < deadline:
            time.sleep(1)
        assert _record(cli, run_id)["state"] == "exited"
        assert _record(cli, run_id)["exit_code"] == 143
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
        if _record(cli, run_id)["state"] == "running":
            cli.run("stop-run", run_id)
    assert child.exitstatus == 0


def _png_pixels(path: Path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    idat, pos = b"", 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


def test_html_report_renders_in_headless_chromium_with_chart_and_inert_guest_text(
    cli: Cli, burner: str, tmp_path: Path
) -> None:
    if _record(cli, burner)["state"] == "running":
        cli.ok("stop-run", burner)
    # What the agent stage will store: a stream-json whose tool input carries markup.
    use = {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": HOSTILE}}
    result = {"type": "tool_result", "tool_use_id": "t1", "is_error": False}
    (cli.home / "runs" / burner / "stream.jsonl").write_text(
        json.dumps({"type": "assistant", "message": {"content": [use]}})
        + "\n"
        + json.dumps({"type": "user", "message": {"content": [result]}})
        + "\n"
    )
    page = tmp_path / "report.html"
    page.write_bytes(cli.ok("show", burner, "--html").stdout)
    dom = chromium_run("--dump-dom", page.as_uri()).stdout
    assert 'id="cpu-chart"' in dom and 'id="mem-chart"' in dom
    points = dom.split('class="cpu" points="', 1)[1].split('"', 1)[0].split()
    assert len(points) >= 2
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]  # the script did not run
    assert "&lt;script&gt;document.body.setAttribute('data-pwned','1')&lt;/script&gt;" in dom  # shown as text
    assert "<img" not in dom
    shot = tmp_path / "report.png"
    chromium_run(f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri())
    assert len(set(_png_pixels(shot))) > 20  # not a blank page
    # The same Chromium does run an inline script when no policy and no escaping stop it.
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><html><body>{SCRIPT}</body></html>")  # (alert() would hang it)
    assert 'data-pwned="1"' in chromium_run("--dump-dom", control.as_uri()).stdout
