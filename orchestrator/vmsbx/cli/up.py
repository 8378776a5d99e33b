"""`vmsbx up`: create the VM if absent, start it if stopped, connect, check the guest."""

from __future__ import annotations

import time

import click

from vmsbx.cli.common import json_option, load, name_option, print_json, progress, provider_option


@click.command("up")
@name_option
@provider_option
@click.option("--cpus", type=int, default=None, help="Virtual CPUs (at creation).")
@click.option("--memory", default=None, metavar="SIZE", help="Guest RAM, e.g. 4G (at creation).")
@click.option("--disk", default=None, metavar="SIZE", help="Disk size, e.g. 20G (at creation).")
@click.option("--image", default=None, type=click.Choice(["bookworm", "trixie"]), help="Guest release.")
@click.option("--accel", default=None, type=click.Choice(["auto", "kvm", "tcg"]), help="QEMU acceleration.")
@click.option(
    "--sandbox", "mode", default=None, type=click.Choice(["systemd", "nsjail"]),
    help="Sandbox kind to prepare the guest for (nsjail is installed when asked for).",
)  # fmt: skip
@click.option(
    "--guest-network", default=None, type=click.Choice(["restricted", "nat"]),
    help="restricted (default): the guest reaches nothing; nat: the guest may reach the internet.",
)  # fmt: skip
@json_option
def command(
    name: str | None,
    provider: str | None,
    cpus: int | None,
    memory: str | None,
    disk: str | None,
    image: str | None,
    accel: str | None,
    mode: str | None,
    guest_network: str | None,
    as_json: bool,
) -> None:
    """Make the VM ready: build the image (first time), create, boot, connect over pinned SSH.

    Safe to run again at any time: on a running VM it only checks the connection. If it was
    interrupted, running it again picks up where it stopped.
    """
    from vmsbx.agent.client import ensure_agent
    from vmsbx.claude.install import provision_claude_for, up_summary
    from vmsbx.errors import UsageError
    from vmsbx.guest import check_walls, gather_facts, provision, provision_nsjail
    from vmsbx.paths import vm_dir, write_private
    from vmsbx.providers import existing_provider_name, get_provider, resolve_name
    from vmsbx.providers.base import VMState
    from vmsbx.runs.reconcile import close_lost_runs
    from vmsbx.sandbox.renderer import renderer_for
    from vmsbx.testhooks import stage

    settings = load(**{
        "vm.name": name, "vm.provider": provider, "vm.cpus": cpus, "vm.memory": memory,
        "vm.disk": disk, "vm.image": image, "vm.accel": accel, "vm.guest_network": guest_network,
        "sandbox.mode": mode,
    })  # fmt: skip
    vm = settings.vm.name
    started = time.monotonic()
    existing = existing_provider_name(vm)
    # `auto` probes the host's tools; an existing VM keeps the provider it was made with.
    explicit = provider not in (None, "auto")
    wanted = (
        existing if existing is not None and not explicit else resolve_name(settings.vm.provider, settings.vm)
    )
    if existing is not None and provider not in (None, "auto") and existing != wanted:
        raise UsageError(
            f"VM {vm!r} exists with the {existing} provider, not {wanted}",
            hint=f"use another --name, or `vmsbx destroy -y --name {vm}` first",
        )
    with progress(f"checking VM {vm}") as report:
        machine = get_provider(existing or wanted, settings.vm, progress=report)
        state = machine.state(vm)
        if state is VMState.BROKEN:
            from vmsbx.errors import ProviderError

            raise ProviderError(
                f"VM {vm!r} is broken",
                hint=f"`vmsbx destroy -y --name {vm}` then `vmsbx up --name {vm}`",
            )
        if state is VMState.ABSENT:
            report(f"creating VM {vm}")
            machine.create(vm)
            stage("up:created")
        if state is not VMState.RUNNING:
            # A fresh boot: no run of the last one can still be going.
            close_lost_runs(vm, "ended abnormally: the VM stopped while the run was going")
            machine.start(vm)
            stage("up:started")
        client = ensure_agent(vm, boot_timeout=settings.vm.boot_timeout, progress=report)
        stage("up:connected")
        report("checking the guest")
        facts = gather_facts(client)
        check_walls(facts)
        stage("up:checked")
        if provision(client, facts):
            report("installed the guest launcher")
        stage("up:provisioned")
        if renderer_for(settings.sandbox.mode).needs_nsjail:
            report("checking nsjail in the guest")
            nsjail = provision_nsjail(client, facts.arch, facts.nsjail_version)
            facts = facts.model_copy(update={"nsjail_version": nsjail})
        claude = provision_claude_for(client, facts, settings, report)
        if claude is not None:
            facts = facts.model_copy(update={"claude_installed": claude.marker})
        write_private(vm_dir(vm) / "guest.json", facts.model_dump_json())
    info = machine.ssh_info(vm)
    summary = {
        "name": vm,
        "provider": machine.name,
        "state": "running",
        "ssh": f"{info.user}@{info.host}:{info.port}",
        "systemd": facts.systemd_version,
        "arch": facts.arch,
        "kernel": facts.kernel,
        "seconds": round(time.monotonic() - started, 1),
        **up_summary(claude),
    }
    if as_json:
        print_json(summary)
        return
    click.echo(
        f"{vm}: running ({machine.name}, {facts.arch}, systemd {facts.systemd_version}) "
        f"ssh {summary['ssh']} — ready in {summary['seconds']} s"
    )
