"""Options and helpers shared by the verbs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from vmsbx.config.models import Settings

F = TypeVar("F", bound=Callable[..., Any])


def name_option(func: F) -> F:
    return click.option(
        "--name", "-n", "name", default=None, metavar="VM",
        help="VM to act on (default: vm.name from config, usually 'default').",
    )(func)  # fmt: skip


def provider_option(func: F) -> F:
    return click.option(
        "--provider", default=None,
        type=click.Choice(["auto", "qemu", "lima", "multipass", "wsl2", "ssh"]),
        help="VM provider (default: auto, the platform's default).",
    )(func)  # fmt: skip


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(func)


def load(**flags: object) -> Settings:
    """Settings for this invocation: defaults < user config < ./vmsbx.toml < VMSBX_* < flags."""
    from vmsbx.config import load_settings
    from vmsbx.errors import UsageError
    from vmsbx.paths import is_valid_name

    name = flags.get("vm.name")
    if isinstance(name, str) and not is_valid_name(name):
        raise UsageError(
            f"invalid VM name {name!r}",
            hint="use 1-40 characters: lowercase letters, digits and '-', starting with a letter or digit",
        )
    return load_settings(project_dir=Path.cwd(), flags=flags)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@contextmanager
def progress(initial: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr for slow steps; plain lines when stderr is not a terminal."""
    if not sys.stderr.isatty():
        click.echo(f"… {initial}", err=True)
        last = [initial]

        def plain(message: str) -> None:
            if message != last[0]:
                last[0] = message
                click.echo(f"… {message}", err=True)

        yield plain
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(initial) as status:

        def update(message: str) -> None:
            status.update(message)

        yield update
