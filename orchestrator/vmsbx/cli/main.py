"""Entry point. Verbs load lazily so `vmsbx --help` stays instant (no paramiko, no pydantic)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

# verb -> (module, one-line help shown by `vmsbx --help` without importing the module)
VERBS: dict[str, tuple[str, str]] = {
    "up": ("vmsbx.cli.up", "Create, start and connect the VM (idempotent)."),
    "status": ("vmsbx.cli.status", "Show each VM: provider, state, SSH endpoint."),
    "ssh": ("vmsbx.cli.ssh", "Open a shell in the VM, or run one command there."),
    "stop": ("vmsbx.cli.stop", "Shut the VM down (or kill it with --force)."),
    "destroy": ("vmsbx.cli.destroy", "Delete the VM with its disk and keys."),
    "reset": ("vmsbx.cli.reset", "Return the VM to a fresh copy of its base image."),
    "image": ("vmsbx.cli.image", "List or rebuild the base images vmsbx builds."),
    "run": ("vmsbx.cli.run", "Run a command in a fresh sandbox in the VM."),
    "attach": ("vmsbx.cli.attach", "Follow a run's output again."),
    "stop-run": ("vmsbx.cli.stop_run", "End a run."),
    "logs": ("vmsbx.cli.logs", "Show a run's journal (-f follows it)."),
    "runs": ("vmsbx.cli.runs", "List the recorded runs."),
    "diff": ("vmsbx.cli.diff", "Show what a run changed, as a diff."),
    "apply": ("vmsbx.cli.apply", "Bring a run's changes into the project (after review)."),
    "discard": ("vmsbx.cli.discard", "Drop a run's changes."),
    "verify": ("vmsbx.cli.verify", "Attack the sandbox for real and show which walls held."),
    "doctor": ("vmsbx.cli.doctor", "Check the host's prerequisites and say what to install."),
    "top": ("vmsbx.cli.top", "Live view of every VM and run (q quits)."),
    "show": ("vmsbx.cli.show", "Report of one run (--html for a web page)."),
    "gc": ("vmsbx.cli.gc", "Remove old runs, leftovers and stale images."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(VERBS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in VERBS:
            return None
        module = importlib.import_module(VERBS[cmd_name][0])
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, short) for name, (_module, short) in VERBS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _start_logging(ctx: click.Context, param: click.Parameter, verbose: int) -> None:
    from vmsbx.logsetup import setup

    setup(verbose)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vmsbx", prog_name="vmsbx")
@click.option(
    "-v", "--verbose", count=True, expose_value=False, is_eager=True, callback=_start_logging,
    help="Show vmsbx's own log on stderr (-v steps, -vv debug); it always goes to its log file.",
)  # fmt: skip
def cli() -> None:
    """vmsbx runs a coding agent behind two walls: a Linux VM, and a sandbox per run inside it.

    \b
    Typical day:
      vmsbx up          # build the image once, boot the VM, connect
      vmsbx run         # Claude Code on a mirror of this folder, inside both walls
      vmsbx diff        # what it changed; then `vmsbx apply` or `vmsbx discard`
      vmsbx stop        # shut the VM down
    """


def main(argv: list[str] | None = None) -> Any:
    from vmsbx.errors import VmsbxError

    try:
        return cli.main(args=argv, prog_name="vmsbx", standalone_mode=False)
    except VmsbxError as exc:
        click.echo(f"vmsbx: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("vmsbx: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("vmsbx: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
