"""Run one vmsbx command and print, on stderr, how long each guest call of it took.

    python3 benchmarks/trace_calls.py run -- true

The profile behind results.md's "where the time goes": the host side of a run is almost all
waiting for the guest, so the useful unit is the guest call (each one a process started in the
guest over the host agent's SSH connection), not a Python function. Each call is printed with
its start and end (seconds since the CLI started); then, for a `run`, the run unit's phases as
the guest's systemd logged them (from the journal the run brought back: PID 1's messages and
the run's own lines, seconds since the first of them). `scripts/bench --only trace` puts this
into results.md as "trace of one run".
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from vmsbx.agent import client
from vmsbx.cli.main import main

_original_exec = client.AgentClient.exec
_original_call = client.AgentClient.call
_calls: list[tuple[str, float, float]] = []  # (name, start, end), seconds since _start
_via: dict[int, str] = {}  # index in _calls -> how a guest call was carried (guestd or ssh)
_start = time.perf_counter()
_wall_start = time.time()  # the guest's journal stamps are wall-clock: placed on the same axis


def _exec(self: client.AgentClient, argv: list[str], **kwargs: Any) -> int:
    began = time.perf_counter()
    try:
        return _original_exec(self, argv, **kwargs)
    finally:
        words = [word for word in argv[1:6] if not word.startswith(("/", "-"))][:3]
        _via[len(_calls)] = self.last_via
        _calls.append(("guest " + " ".join(words), began - _start, time.perf_counter() - _start))


def _call(self: client.AgentClient, request: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        return _original_call(self, request, **kwargs)
    finally:
        _calls.append((f"agent {request.get('op')}", began - _start, time.perf_counter() - _start))


def _report() -> None:
    total = time.perf_counter() - _start
    spent = sum(end - began for _, began, end in _calls)
    carried = list(_via.values())
    for index, (name, began, end) in enumerate(_calls):
        via = f"  via {_via[index]}" if index in _via else ""
        print(f"trace: {end - began:7.3f} s  {name}  [{began:.3f} → {end:.3f}]{via}", file=sys.stderr)
    print(
        f"trace: {spent:7.3f} s  in {len(_calls)} calls ({len(carried)} guest calls, "
        f"{carried.count('ssh')} of them SSH sessions); "
        f"{total - spent:.3f} s elsewhere; {total:.3f} s total",
        file=sys.stderr,
    )
    for line in guest_phases(_newest_journal()):
        print(f"phase: {line}", file=sys.stderr)


def _newest_journal() -> Path | None:
    from vmsbx.runs import record as records

    runs = sorted(records.all_runs(), key=lambda run: run.started_at)
    return records.run_dir(runs[-1].id) / "journal.jsonl" if runs else None


def guest_phases(journal: Path | None) -> list[str]:
    """The run unit's phases from its journal: systemd's own lines (Starting, Started, the
    stop, the CPU it consumed) and the run's, each at seconds since the first entry."""
    if journal is None or not journal.is_file():
        return []
    entries = [json.loads(line) for line in journal.read_text().splitlines() if line.startswith("{")]
    stamps = [int(entry.get("__REALTIME_TIMESTAMP", 0)) for entry in entries]
    if not stamps:
        return []
    first = min(stamps)
    lines = []
    for stamp, entry in sorted(zip(stamps, entries, strict=True), key=lambda pair: pair[0]):
        who = "systemd" if entry.get("_PID") == "1" else str(entry.get("SYSLOG_IDENTIFIER", "run"))
        message = entry.get("MESSAGE", "")
        text = message if isinstance(message, str) else "(binary)"
        host = stamp / 1e6 - _wall_start  # the guest clock, as set from the host's at boot
        lines.append(f"+{(stamp - first) / 1e6:7.3f} s  (host {host:7.3f})  {who}: {text[:160]}")
    return lines


client.AgentClient.exec = _exec  # type: ignore[method-assign]
client.AgentClient.call = _call  # type: ignore[method-assign]

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    finally:
        _report()
