"""`vmsbx verify`: attack the configured sandbox for real and show what held."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from vmsbx.cli.common import json_option, load, name_option, print_json, progress

if TYPE_CHECKING:
    from vmsbx.verify.suite import VerifyReport

VERDICT_STYLE = {"pass": "green", "FAIL": "bold red", "inconclusive": "yellow"}


@click.command("verify")
@name_option
@click.option(
    "--sandbox",
    "mode",
    type=click.Choice(["systemd", "nsjail"]),
    default=None,
    help="Sandbox kind to attack.",
)
@click.option(
    "--self-test", is_flag=True,
    help="Take one wall down at a time (verify's own runs only) and check the matching attempts fail.",
)  # fmt: skip
@json_option
def command(name: str | None, mode: str | None, self_test: bool, as_json: bool) -> None:
    """Run escape attempts inside a real run of your sandbox, and each as root outside it.

    \b
    Every attempt must fail inside (verdict pass) and work outside, its positive control
    (otherwise it proves nothing: inconclusive). Exits 1 if any attempt got through.
    With --self-test the suite proves it can fail: each wall taken down must be noticed.
    """
    from vmsbx.verify import suite
    from vmsbx.verify.loosen import LOOSENINGS

    settings = load(**{"vm.name": name, "sandbox.mode": mode})
    if self_test:
        with progress("self-test") as report:
            outcomes = suite.run_self_test(settings, LOOSENINGS[settings.sandbox.mode], progress=report)
        if as_json:
            print_json([o.model_dump() for o in outcomes])
        else:
            for o in outcomes:
                mark = "caught" if o.caught else "MISSED"
                click.echo(
                    f"{mark:7} without {o.removes}: must fail {', '.join(o.must_fail)}; "
                    f"reported failing: {', '.join(o.reported_failing) or 'none'}"
                )
        sys.exit(0 if all(o.caught for o in outcomes) else 1)
    with progress("verify") as report:
        result = suite.run_verify(settings, progress=report)
    if as_json:
        print_json(result.model_dump(mode="json"))
    else:
        _table(result)
    sys.exit(1 if result.failed else 0)


def _table(report: VerifyReport) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        "ATTEMPT", "CATEGORY", "EXPECTED", "OBSERVED (inside)", "CONTROL (outside)", "VERDICT",
        title=f"vmsbx verify: {report.sandbox} sandbox on VM {report.vm}, network = {report.network}",
    )  # fmt: skip
    for r in report.results:
        style = VERDICT_STYLE[r.verdict]
        table.add_row(
            escape(r.attempt), r.category, escape(r.expected), escape(r.observed), escape(r.control),
            f"[{style}]{r.verdict}[/{style}]",
        )  # fmt: skip
    console = Console()
    console.print(table)
    passed = sum(r.verdict == "pass" for r in report.results)
    console.print(
        f"{passed} of {len(report.results)} attempts held, {len(report.failed)} got through, "
        f"{len(report.inconclusive)} inconclusive — run {report.run_id}, {report.seconds} s"
    )
