"""`vmsbx runs`: the runs vmsbx has recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vmsbx.cli.common import json_option, print_json

if TYPE_CHECKING:
    from vmsbx.runs.record import RunRecord

_HEADERS = ("RUN", "VM", "STATE", "DURATION", "EXIT", "SCORE", "CONV", "TASK / COMMAND")


@click.command("runs")
@json_option
def command(as_json: bool) -> None:
    """List runs: id, VM, state, duration, exit code, exposure score, whether the run kept a
    conversation (CONV: yes; `vmsbx run --continue` / `--resume RUN` go on with it), and the
    task (an agent run's prompt) or the command, cut to one line."""
    from vmsbx.runs import record as records

    rows = records.all_runs()
    if as_json:
        print_json([r.model_dump(mode="json") for r in rows])
        return
    if not rows:
        click.echo("no runs yet: `vmsbx run -- CMD` starts one")
        return
    import shutil

    for line in render_rows(rows, shutil.get_terminal_size((100, 24)).columns):
        click.echo(line)


def what_ran(record: RunRecord) -> str:
    """How a listing names a run: an agent run by its task, anything else by its command; one
    line, control sequences stripped."""
    from vmsbx.observe.artifacts import clean
    from vmsbx.runs.agentrun import agent_prompt

    task = agent_prompt(record.command)
    return clean(f"claude: {task}" if task is not None else " ".join(record.command), 500)


def render_rows(rows: list[RunRecord], width: int) -> list[str]:
    """The listing (pure): a header and one line per run, none wider than `width` columns; the
    last column, the task or command, is cut with … to fit (never wrapped)."""
    from rich.cells import cell_len, set_cell_size

    table = [list(_HEADERS)]
    for r in rows:
        duration = f"{r.duration:.1f}s" if r.duration is not None else "-"
        exit_code = "-" if r.exit_code is None else str(r.exit_code)
        kept = "yes" if r.conversation else "-"
        table.append([r.id, r.vm, r.state, duration, exit_code, str(r.exposure), kept, what_ran(r)])
    widths = [max(cell_len(row[i]) for row in table) for i in range(len(_HEADERS) - 1)]
    room = max(width - sum(widths) - 2 * len(widths) - 1, 12)
    lines = []
    for row in table:
        fixed = "  ".join(set_cell_size(cell, w) for cell, w in zip(row, widths, strict=False))
        last = row[-1] if cell_len(row[-1]) <= room else set_cell_size(row[-1], room - 1) + "…"
        lines.append(f"{fixed}  {last}".rstrip())
    return lines
