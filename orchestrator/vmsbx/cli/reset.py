"""`vmsbx reset`: a fresh overlay of the current base image, in seconds."""

from __future__ import annotations

import click

from vmsbx.cli.common import load, name_option, progress


@click.command("reset")
@name_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def command(name: str | None, yes: bool) -> None:
    """Throw away everything written in the VM and return it to its base image (keys are kept).

    The VM is left stopped; `vmsbx up` boots it.
    """
    from vmsbx.agent.client import AgentClient
    from vmsbx.errors import UsageError, VMNotFound
    from vmsbx.providers import existing_provider_name, get_provider

    settings = load(**{"vm.name": name})
    vm = settings.vm.name
    provider_name = existing_provider_name(vm)
    if provider_name is None:
        raise VMNotFound(f"VM {vm!r} does not exist", hint=f"`vmsbx up --name {vm}` creates it")
    from vmsbx.providers.base import SupportsReset

    machine = get_provider(provider_name, settings.vm)
    if not machine.features.reset or not isinstance(machine, SupportsReset):
        raise UsageError(
            f"the {provider_name} provider cannot reset a VM", hint="destroy and create it instead"
        )
    if not yes:
        click.confirm(f"Discard everything written in VM {vm!r}?", abort=True)
    with progress(f"resetting {vm}") as report:
        AgentClient(vm).shutdown()
        worker = get_provider(provider_name, settings.vm, progress=report)
        assert isinstance(worker, SupportsReset)
        worker.reset(vm)
    click.echo(f"{vm}: reset to a fresh base image (stopped; `vmsbx up` boots it)")
