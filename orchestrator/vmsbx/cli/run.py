"""`vmsbx run`: one command in a fresh sandbox inside the VM."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vmsbx.cli.common import load, name_option


@click.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@name_option
@click.option(
    "--sandbox", "mode", type=click.Choice(["systemd", "nsjail"]), default=None, help="Sandbox kind."
)
@click.option("--memory", default=None, metavar="SIZE", help="Memory limit, e.g. 4G.")
@click.option("--cpus", type=float, default=None, help="CPU limit in CPUs, e.g. 1.5.")
@click.option("--tasks", type=int, default=None, help="Most processes/threads at once.")
@click.option("--timeout", default=None, metavar="DURATION", help="Wall-clock limit, e.g. 30m, 2h.")
@click.option("--workspace-size", default=None, metavar="SIZE", help="Size cap of the workspace.")
@click.option("--tmp-size", default=None, metavar="SIZE", help="Size cap of /tmp.")
@click.option(
    "--network", type=click.Choice(["none", "api", "allowlist", "open"]), default=None, help="Network policy."
)
@click.option("--score-threshold", type=float, default=None, help="Refuse policies scoring above this.")
@click.option("--env", "-e", "env", multiple=True, metavar="NAME=VALUE", help="Environment for the command.")
@click.option("--tty", "-t", is_flag=True, help="Give the command a terminal (interactive programs).")
@click.option(
    "--detach", "-d", is_flag=True, help="Start the run and print its id; `vmsbx attach` follows it."
)
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def command(
    name: str | None,
    mode: str | None,
    memory: str | None,
    cpus: float | None,
    tasks: int | None,
    timeout: str | None,
    workspace_size: str | None,
    tmp_size: str | None,
    network: str | None,
    score_threshold: float | None,
    env: tuple[str, ...],
    tty: bool,
    detach: bool,
    argv: tuple[str, ...],
) -> None:
    """Run `-- CMD ARGS…` in a fresh sandbox in the VM, with a copy of this folder as workspace.

    The command's exit code is vmsbx's. Output streams live; stdin is forwarded. Ctrl-C stops
    a headless run (with --tty it goes to the program). A dropped connection does not stop the
    run: `vmsbx attach RUN` follows it again.
    """
    from vmsbx.errors import UsageError
    from vmsbx.runs import lifecycle

    settings = load(**{
        "vm.name": name, "sandbox.mode": mode, "sandbox.memory_max": memory, "sandbox.cpus": cpus,
        "sandbox.tasks_max": tasks, "sandbox.timeout": timeout, "sandbox.workspace_size": workspace_size,
        "sandbox.tmp_size": tmp_size, "sandbox.network": network, "sandbox.score_threshold": score_threshold,
    })  # fmt: skip
    if any("\0" in arg for arg in argv):
        # The OS cannot pass it on either; cutting the argument there would run something else.
        raise UsageError(
            "a command argument contains a NUL byte", hint="remove it; arguments are passed literally"
        )
    environment: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier() or "\0" in value:
            raise UsageError(f"--env {item!r} is not NAME=VALUE", hint="e.g. --env DEBUG=1")
        environment[key] = value
    record, guest = lifecycle.start(settings, list(argv), project=Path.cwd(), tty=tty, env=environment)
    if detach:
        click.echo(record.id)
        return
    click.echo(f"vmsbx: run {record.id} started (exposure {record.exposure})", err=True)
    code = lifecycle.attach(
        record, guest, stdin=None if tty is False and sys.stdin.isatty() else sys.stdin.buffer
    )
    _report(record.id, code)
    sys.exit(code)


def _report(run_id: str, code: int) -> None:
    from vmsbx.runs import record as records

    final = records.load(run_id)
    if code != 0 and final.reason:
        click.echo(f"vmsbx: run {run_id}: {final.reason}", err=True)
