"""`vmsbx top`: a live view of every VM and run (rich), or one snapshot with --once."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import click

from vmsbx.cli.common import json_option, print_json
from vmsbx.terminal import key_mode, read_keys

REFRESH = 1.0
_KEYS = {b"\x1b[A": "up", b"\x1bOA": "up", b"\x1b[B": "down", b"\x1bOB": "down"}


@click.command("top")
@click.option("--once", is_flag=True, help="Print one snapshot and exit (with --json: for scripts).")
@json_option
def command(once: bool, as_json: bool) -> None:
    """Live view of every VM and run: state, elapsed time, CPU %, memory and tasks against their
    limits, network allowed/denied, exposure score and the agent's latest tool call.

    \b
    Keys: q quits, ↑/↓ select a run, l shows its log tail, k stops it (asks first).
    Figures come from systemd's cgroup accounting, sampled every second by the VM's host agent.
    """
    from vmsbx.observe.snapshot import collect

    if once or as_json or not sys.stdin.isatty():
        snapshot = collect()
        if as_json:
            print_json(snapshot.model_dump(mode="json"))
            return
        from rich.console import Console

        from vmsbx.observe.top_view import ViewState, render

        Console(width=min(_width(), 100)).print(render(snapshot, ViewState(selected=-1)))
        return
    _interactive()


def _width() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except OSError:
        return 80


def parse_keys(data: bytes) -> list[str]:
    """Keys in one read from the terminal (several may arrive together): arrows by name,
    other keys as their lowercase character."""
    keys = []
    while data:
        arrow = next((seq for seq in _KEYS if data.startswith(seq)), None)
        if arrow is not None:
            keys.append(_KEYS[arrow])
            data = data[len(arrow) :]
        elif data.startswith(b"\x1b[") or data.startswith(b"\x1bO"):
            data = data[3:]  # another escape sequence (F-keys, …): ignored
        else:
            keys.append(data[:1].decode(errors="replace").lower())
            data = data[1:]
    return keys


def _read_keys(timeout: float) -> list[str]:
    data = read_keys(timeout)
    if data is None:
        return []
    return parse_keys(data) if data else ["q"]


def _interactive() -> None:
    from rich.console import Console
    from rich.live import Live

    from vmsbx.observe.snapshot import collect
    from vmsbx.observe.top_view import ViewState, render

    state = ViewState()
    console = Console()
    stoppers: list[threading.Thread] = []
    snapshot = collect()
    live_view = Live(render(snapshot, state), console=console, screen=True, auto_refresh=False)
    with key_mode(raw=False), live_view as live:
        next_refresh = time.monotonic() + REFRESH
        running = True
        while running:
            for key in _read_keys(max(0.0, next_refresh - time.monotonic())):
                rows = snapshot.rows()
                if state.mode == "confirm":
                    if key == "y" and 0 <= state.selected < len(rows):
                        stoppers.append(_stop_in_background(rows[state.selected].id, state))
                    else:
                        state.message = "not stopped"
                    state.mode = "table"
                elif key == "q":
                    running = False
                    break
                elif key == "up":
                    state.selected = max(0, state.selected - 1)
                elif key == "down":
                    state.selected = min(max(0, len(rows) - 1), state.selected + 1)
                elif key == "l":
                    state.mode = "table" if state.mode == "log" else "log"
                    state.log_lines = ["(reading the log…)"]
                    next_refresh = time.monotonic()
                elif key == "k" and 0 <= state.selected < len(rows):
                    state.mode = "confirm"
            if time.monotonic() >= next_refresh:
                snapshot = collect()
                rows = snapshot.rows()
                if state.mode == "log" and 0 <= state.selected < len(rows):
                    state.log_lines = _log_tail(rows[state.selected].id)
                next_refresh = time.monotonic() + REFRESH
            live.update(render(snapshot, state, console.width), refresh=True)
    from vmsbx.runs.lifecycle import FINISH_WAIT

    for stopper in stoppers:
        if stopper.is_alive():
            console.print("waiting for the stopped run to be recorded…")
        stopper.join(timeout=FINISH_WAIT + 10)


def _log_tail(run_id: str, lines: int = 12) -> list[str]:
    """The run's newest journal lines: what was pulled already, plus what the guest has beyond
    it (read-only: the record's cursor is left to the run's own CLI)."""
    from vmsbx.cli.logs import _pretty
    from vmsbx.errors import VmsbxError
    from vmsbx.runs import lifecycle
    from vmsbx.runs import record as records

    record = records.load(run_id)
    journal = records.run_dir(run_id) / "journal.jsonl"
    raw = journal.read_bytes().splitlines()[-lines:] if journal.is_file() else []
    if record.state in ("starting", "running") and record.invocation_id:
        with contextlib.suppress(VmsbxError, OSError, ValueError):
            fresh, _cursor = lifecycle.connect(record.vm).journal(
                run_id, record.invocation_id, record.journal_cursor
            )
            raw = (raw + fresh)[-lines:]
    shown = []
    for line in raw:
        with contextlib.suppress(ValueError):
            shown.append(_pretty(line))
    return shown or ["(no log lines yet)"]


def _stop_in_background(run_id: str, state: object) -> threading.Thread:
    from vmsbx.observe.top_view import ViewState

    assert isinstance(state, ViewState)

    def stop() -> None:
        from vmsbx.errors import VmsbxError
        from vmsbx.runs import lifecycle
        from vmsbx.runs import record as records

        try:
            record = records.load(run_id)
            guest = lifecycle.connect(record.vm)
            guest.stop(run_id)
            code = lifecycle.finish(record, guest)
            state.message = f"{run_id} stopped (exit {code})"
        except VmsbxError as exc:
            state.message = f"could not stop {run_id}: {exc}"

    state.message = f"stopping {run_id}…"
    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    return thread
