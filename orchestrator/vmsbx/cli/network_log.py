"""`vmsbx logs --network [RUN]`: the run's egress decisions, summed up per destination."""

from __future__ import annotations

import json

import click


def show(run_id: str | None, as_json: bool) -> None:
    """Print one row per destination (count, allowed, denied, errors, bytes), then the reasons
    for what was refused, so the user sees what to add to sandbox.allow_hosts."""
    from vmsbx.agent.egress.netlog import NETWORK_LOG_NAME, summarise
    from vmsbx.runs import record as records
    from vmsbx.textsafe import strip_control

    record = records.resolve(run_id)
    path = records.run_dir(record.id) / NETWORK_LOG_NAME
    lines = path.read_bytes().splitlines() if path.is_file() else []
    summaries = summarise(lines)
    if as_json:
        click.echo(json.dumps([summary.as_dict() for summary in summaries], indent=2))
        return
    if not summaries:
        click.echo(f"run {record.id}: no network requests recorded (policy {record.policy.network})")
        return
    width = max(len("DESTINATION"), *(len(s.destination) for s in summaries))
    click.echo(f"{'DESTINATION':<{width}}  COUNT  ALLOWED  DENIED  ERRORS  BYTES UP  BYTES DOWN")
    for s in summaries:
        click.echo(
            f"{strip_control(s.destination):<{width}}  {s.count:>5}  {s.allowed:>7}  {s.denied:>6}  "
            f"{s.errors:>6}  {s.bytes_up:>8}  {s.bytes_down:>10}"
        )
    refused = [(s.destination, reason) for s in summaries for reason in s.reasons]
    if refused:
        click.echo("")
        for destination, reason in refused:
            click.echo(f"{strip_control(destination)}: {strip_control(reason)}")
