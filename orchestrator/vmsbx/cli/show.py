"""`vmsbx show`: one run's report."""

from __future__ import annotations

import click

from vmsbx.cli.common import json_option, print_json


@click.command("show")
@click.argument("run_id", required=False)
@click.option("--html", "as_html", is_flag=True, help="Write a self-contained HTML page to stdout.")
@json_option
def command(run_id: str | None, as_html: bool, as_json: bool) -> None:
    """Report of a run (the newest without RUN_ID): an agent run's task and final answer, the
    command, policy, score, duration, exit status and reason, resource peaks, the API account
    (requests, tokens, estimated cost, budget left), files changed (held back and refused
    apart), the agent's commits, network destinations, and each tool call with its time,
    duration and the start of its result. The HTML page also has each file's diff.

    \b
    vmsbx show 3f2a9c1d0b7e
    vmsbx show 3f2a9c1d0b7e --html > report.html   # a page with a CPU/memory chart; no scripts
    """
    from vmsbx.observe import report as reports
    from vmsbx.runs import record as records
    from vmsbx.runs import review

    record = records.resolve(run_id)
    review.commit_review(record)  # inspects runs whose commits were never inspected
    report = reports.load(records.run_dir(record.id), record)
    if as_json:
        print_json(report.model_dump(mode="json"))
    elif as_html:
        click.echo(reports.render_html(report), nl=False)
    else:
        click.echo(reports.render_text(report), nl=False)
