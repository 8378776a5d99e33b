"""`vmsbx diff`, `vmsbx apply`, `vmsbx discard`: review a run's changes, bring them home or drop them."""

from __future__ import annotations

import click

from vmsbx.cli.common import json_option, print_json


@click.command("diff")
@click.argument("run_id", required=False)
@json_option
def diff_command(run_id: str | None, as_json: bool) -> None:
    """Show everything the run changed, as a diff against your project (newest run by default)."""
    from vmsbx.runs import record as records
    from vmsbx.runs import review

    record = records.resolve(run_id)
    if as_json:
        changeset = review.stored(record)
        commits = review.commit_review(record)
        print_json(
            {
                "run": record.id,
                "digest": changeset.digest,
                **changeset.model_dump(mode="json"),
                "commits": None if commits is None else commits.model_dump(mode="json"),
            }
        )
        return
    changeset = review.stored(record)
    click.echo(review.diff_text(record), nl=False)
    click.echo(f"# changeset {changeset.digest}  (`vmsbx apply {record.id}` applies exactly this)")


@click.command("apply")
@click.argument("run_id", required=False)
@click.option("--include-sensitive", is_flag=True, help="Also apply paths that can run code on this machine.")
@click.option("--digest", default=None, metavar="SHA256", help="Apply only if the changes are still these.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
def apply_command(run_id: str | None, include_sensitive: bool, digest: str | None, yes: bool) -> None:
    """Bring the run's changes into your project (conflicts are reported, never overwritten)."""
    from vmsbx.runs import record as records
    from vmsbx.runs import review

    record = records.resolve(run_id)
    changeset = review.stored(record)
    if not yes:
        for line in review.summary_lines(record.id, changeset, review.commit_review(record)):
            click.echo(line, err=True)
        click.confirm(f"Apply these changes to {record.project}?", abort=True, err=True)
    applied = review.apply_run(record, include_sensitive=include_sensitive, digest=digest or changeset.digest)
    for line in review.report_lines(record, applied):
        click.echo(line)
    if applied.files.conflicts:
        raise SystemExit(1)


@click.command("discard")
@click.argument("run_id", required=False)
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
def discard_command(run_id: str | None, yes: bool) -> None:
    """Drop the run's changes (the next run starts from your project as it is)."""
    from vmsbx.runs import lifecycle, review
    from vmsbx.runs import record as records

    record = records.resolve(run_id)
    if not yes:
        click.confirm(f"Discard the changes of run {record.id}?", abort=True, err=True)
    review.discard(record, release=lambda: lifecycle.connect(record.vm).release(record.id))
    click.echo(f"{record.id}: changes discarded")
