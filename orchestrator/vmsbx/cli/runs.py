"""`vmsbx runs`: the runs vmsbx has recorded."""

from __future__ import annotations

import click

from vmsbx.cli.common import json_option, print_json


@click.command("runs")
@json_option
def command(as_json: bool) -> None:
    """List runs: id, VM, state, duration, exit code, exposure score, command."""
    from vmsbx.runs import record as records

    rows = records.all_runs()
    if as_json:
        print_json([r.model_dump(mode="json") for r in rows])
        return
    if not rows:
        click.echo("no runs yet: `vmsbx run -- CMD` starts one")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("RUN", "VM", "STATE", "DURATION", "EXIT", "SCORE", "COMMAND", box=None)
    for r in rows:
        duration = f"{r.duration:.1f}s" if r.duration is not None else "-"
        exit_code = "-" if r.exit_code is None else str(r.exit_code)
        table.add_row(
            r.id, r.vm, r.state, duration, exit_code, str(r.exposure), escape(" ".join(r.command))[:60]
        )
    Console().print(table)
