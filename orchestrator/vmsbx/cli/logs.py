"""`vmsbx logs`: a run's journal, pulled from the guest incrementally by cursor."""

from __future__ import annotations

import datetime as dt
import json
import time

import click

from vmsbx.cli.common import json_option


def _message(entry: dict[str, object]) -> str:
    from vmsbx.textsafe import strip_control

    message = entry.get("MESSAGE")
    if isinstance(message, list):  # non-UTF-8 or binary: journald gives bytes
        text = bytes(int(b) for b in message if isinstance(b, int)).decode(errors="replace")
    else:
        text = "" if message is None else str(message)
    return strip_control(text)


def _pretty(line: bytes) -> str:
    entry = json.loads(line)
    stamp = int(str(entry.get("__REALTIME_TIMESTAMP", "0")))
    when = dt.datetime.fromtimestamp(stamp / 1e6, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    source = (
        "systemd"
        if str(entry.get("_PID")) == "1"
        else ("err" if str(entry.get("PRIORITY")) == "3" else "out")
    )
    return f"{when} {source:7} {_message(entry)}"


@click.command("logs")
@click.argument("run_id", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option("--since", default=None, metavar="ISO-TIME", help="Only entries at or after this UTC time.")
@click.option("--network", is_flag=True, help="Summarise the run's egress decisions per destination instead.")
@json_option
def command(run_id: str | None, follow: bool, since: str | None, network: bool, as_json: bool) -> None:
    """Show a run's journal: pretty lines, or the raw entries with --json (as journalctl gives them).

    Pulls resume from the last cursor, so nothing is lost or shown twice across reconnects.
    With --network: per destination, how many requests the egress proxy allowed and denied.
    """
    if network:
        from vmsbx.cli import network_log

        network_log.show(run_id, as_json)
        return
    from vmsbx.runs import lifecycle
    from vmsbx.runs import record as records

    record = records.resolve(run_id)
    since_us = (
        int(dt.datetime.fromisoformat(since).replace(tzinfo=dt.UTC).timestamp() * 1e6) if since else None
    )
    journal_file = records.run_dir(record.id) / "journal.jsonl"

    def show(lines: list[bytes]) -> None:
        for line in lines:
            if since_us is not None and int(json.loads(line).get("__REALTIME_TIMESTAMP", 0)) < since_us:
                continue
            click.echo(line.decode() if as_json else _pretty(line))

    show(journal_file.read_bytes().splitlines() if journal_file.is_file() else [])
    if record.state in ("exited", "failed") and not follow:
        return
    guest = lifecycle.connect(record.vm)
    while True:
        show(lifecycle.pull_journal(record, guest))
        if not follow:
            return
        if guest.result(record.id, wait=0) is not None:
            show(lifecycle.pull_journal(record, guest))
            return
        time.sleep(0.5)
