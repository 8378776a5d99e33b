"""`vmsbx stop`: shut the VM down and end its host agent."""

from __future__ import annotations

import click

from vmsbx.cli.common import load, name_option, progress


@click.command("stop")
@name_option
@click.option("--force", "-f", is_flag=True, help="Kill the VM instead of shutting it down.")
def command(name: str | None, force: bool) -> None:
    """Shut the VM down gracefully (ACPI power button), or kill it with --force. No-op if stopped."""
    from vmsbx.agent.client import AgentClient
    from vmsbx.providers import existing_provider_name, get_provider

    settings = load(**{"vm.name": name})
    vm = settings.vm.name
    provider_name = existing_provider_name(vm)
    if provider_name is None:
        click.echo(f"{vm}: does not exist (nothing to stop)")
        return
    with progress(f"stopping {vm}") as report:
        AgentClient(vm).shutdown()
        get_provider(provider_name, settings.vm, progress=report).stop(vm, force=force)
    click.echo(f"{vm}: stopped")
