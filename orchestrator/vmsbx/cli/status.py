"""`vmsbx status`: every VM vmsbx knows, with its state and SSH endpoint."""

from __future__ import annotations

import click

from vmsbx.cli.common import json_option, print_json


@click.command("status")
@json_option
def command(as_json: bool) -> None:
    """Show each VM: name, provider, state, SSH endpoint and whether its host agent runs."""
    from vmsbx.agent.client import AgentClient
    from vmsbx.config.models import VMSettings
    from vmsbx.errors import VmsbxError
    from vmsbx.providers import existing_provider_name, get_provider
    from vmsbx.providers.base import VMState
    from vmsbx.providers.qemu import list_vm_names
    from vmsbx.runs.reconcile import close_lost_runs, died_without_shutdown

    rows: list[dict[str, object]] = []
    for vm in list_vm_names():
        provider_name = existing_provider_name(vm) or "unknown"
        try:
            machine = get_provider(provider_name, VMSettings())
            state = machine.state(vm)
            ssh = machine.ssh_info(vm) if state is VMState.RUNNING else None
        except VmsbxError as exc:
            rows.append({"name": vm, "provider": provider_name, "state": "broken", "detail": exc.message})
            continue
        row: dict[str, object] = {
            "name": vm,
            "provider": provider_name,
            "state": state.value,
            "ssh": f"{ssh.user}@{ssh.host}:{ssh.port}" if ssh else None,
            "agent": AgentClient(vm).ping() if ssh else False,
            "claude": _claude_version(vm),
        }  # fmt: skip
        if state is VMState.STOPPED and died_without_shutdown(vm):
            row["detail"] = "QEMU exited without a shutdown (killed or crashed); `vmsbx up` boots it again"
            lost = close_lost_runs(vm, "ended abnormally: the VM stopped while the run was going")
            if lost:
                row["lost_runs"] = lost
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no VMs yet: `vmsbx up` creates one")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("NAME", "PROVIDER", "STATE", "SSH", "AGENT", "CLAUDE", box=None)
    for row in rows:
        agent = "up" if row.get("agent") else "-"
        table.add_row(
            str(row["name"]),
            str(row["provider"]),
            str(row["state"]),
            str(row.get("ssh") or "-"),
            agent,
            str(row.get("claude") or "-"),
        )
    console = Console()
    console.print(table)
    for row in rows:
        if row.get("detail"):
            console.print(f"{row['name']}: {row['detail']}", markup=False, highlight=False)


def _claude_version(vm: str) -> str | None:
    """The Claude Code version `vmsbx up` last installed or found in the guest (no guest call)."""
    from vmsbx.guest import GuestFacts
    from vmsbx.paths import vm_dir

    try:
        facts = GuestFacts.model_validate_json((vm_dir(vm) / "guest.json").read_text())
    except (OSError, ValueError):
        return None
    return facts.claude_installed.split(" ", 1)[0] or None
