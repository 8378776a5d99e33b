"""`vmsbx attach`: follow a run again (after --detach or a dropped connection)."""

from __future__ import annotations

import sys

import click


@click.command("attach")
@click.argument("run_id", required=False)
def command(run_id: str | None) -> None:
    """Stream a run's output (from its start) until it ends; exit with its code."""
    from vmsbx.cli.run import _report
    from vmsbx.runs import lifecycle
    from vmsbx.runs import record as records

    record = records.resolve(run_id)
    guest = lifecycle.connect(record.vm)
    stdin = sys.stdin.buffer if record.tty or not sys.stdin.isatty() else None
    code = lifecycle.attach(record, guest, stdin=stdin)
    _report(record.id, code)
    sys.exit(code)
