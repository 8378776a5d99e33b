"""`vmsbx destroy`: delete a VM with its disk and keys."""

from __future__ import annotations

import click

from vmsbx.cli.common import load, name_option, progress


@click.command("destroy")
@name_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def command(name: str | None, yes: bool) -> None:
    """Delete the VM, its disk and its keys (the cached base image stays). Succeeds if already gone."""
    from vmsbx.agent.client import AgentClient
    from vmsbx.paths import vm_dir
    from vmsbx.providers import existing_provider_name, get_provider

    settings = load(**{"vm.name": name})
    vm = settings.vm.name
    provider_name = existing_provider_name(vm)
    directory = vm_dir(vm)
    if provider_name is None and not directory.exists():
        click.echo(f"{vm}: already gone")
        return
    if not yes:
        click.confirm(f"Delete VM {vm!r} with its disk and keys?", abort=True)
    with progress(f"destroying {vm}") as report:
        AgentClient(vm).shutdown()
        if provider_name is not None:
            get_provider(provider_name, settings.vm, progress=report).destroy(vm)
        if directory.exists():  # a half-created leftover without a record
            import shutil

            shutil.rmtree(directory)
    click.echo(f"{vm}: destroyed")
