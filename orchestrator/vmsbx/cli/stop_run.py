"""`vmsbx stop-run`: end a run."""

from __future__ import annotations

import click


@click.command("stop-run")
@click.argument("run_id", required=False)
def command(run_id: str | None) -> None:
    """Stop a run's sandbox in the guest and record how it ended."""
    from vmsbx.runs import lifecycle
    from vmsbx.runs import record as records

    record = records.resolve(run_id)
    guest = lifecycle.connect(record.vm)
    guest.stop(record.id)
    code = lifecycle.finish(record, guest)
    click.echo(f"{record.id}: stopped (exit {code})")
