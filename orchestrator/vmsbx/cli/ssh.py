"""`vmsbx ssh`: a shell in the VM, or one command with its exit code passed through."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import click

from vmsbx.cli.common import load, name_option


@click.command("ssh", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@name_option
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def command(name: str | None, argv: tuple[str, ...]) -> None:
    """Open an interactive shell in the VM, or run `-- CMD ARGS…` there.

    Arguments reach the guest literally (quoted once); the command's exit code is vmsbx's.
    The connection is checked against the VM's pinned host key.
    """
    from vmsbx.agent.client import AgentClient
    from vmsbx.errors import VMNotFound
    from vmsbx.providers import existing_provider_name, get_provider

    settings = load(**{"vm.name": name})
    vm = settings.vm.name
    provider_name = existing_provider_name(vm)
    if provider_name is None:
        raise VMNotFound(f"VM {vm!r} does not exist", hint=f"`vmsbx up --name {vm}` creates it")
    info = get_provider(provider_name, settings.vm).ssh_info(vm)
    if argv:
        code = AgentClient(vm).exec(
            list(argv), stdin=sys.stdin.buffer, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer
        )
        sys.exit(code)
    ssh = shutil.which("ssh")
    if ssh is None:
        from vmsbx.errors import ToolMissing

        raise ToolMissing(
            "the OpenSSH client is needed for an interactive shell",
            hint="apt-get install openssh-client",
        )
    ssh_argv = [
        ssh,
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={info.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"HostKeyAlias={info.host_key_alias}",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        "-o", "LogLevel=ERROR",
        "-i", str(info.key_file),
        "-p", str(info.port),
        "-t",
        f"{info.user}@{info.host}",
    ]  # fmt: skip
    if os.name == "posix":
        os.execv(ssh, ssh_argv)
    sys.exit(subprocess.call(ssh_argv))
