"""`vmsbx run`: one command in a fresh sandbox inside the VM."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vmsbx.cli.common import load, name_option

if TYPE_CHECKING:
    from vmsbx.agent.credential import CredentialKind
    from vmsbx.claude.profile import ClaudeProfile
    from vmsbx.config.models import Settings
    from vmsbx.runs.record import ContinuedFrom, ProfileCopy


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
    "--io-read-bps", default=None, metavar="SIZE", help="Disk read cap per second, e.g. 100M, or max."
)
@click.option(
    "--io-write-bps", default=None, metavar="SIZE", help="Disk write cap per second, e.g. 50M, or max."
)
@click.option("--io-read-iops", default=None, metavar="N", help="Disk reads per second, or max.")
@click.option("--io-write-iops", default=None, metavar="N", help="Disk writes per second, or max.")
@click.option(
    "--network", type=click.Choice(["none", "api", "allowlist", "open"]), default=None, help="Network policy."
)
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="HOST",
    help="Allowlist entry (github.com, *.npmjs.org:443, npm).",
)
@click.option("--score-threshold", type=float, default=None, help="Refuse policies scoring above this.")
@click.option("--env", "-e", "env", multiple=True, metavar="NAME=VALUE", help="Environment for the command.")
@click.option("--tty", "-t", is_flag=True, help="Give the command a terminal (interactive programs).")
@click.option(
    "--detach", "-d", is_flag=True, help="Start the run and print its id; `vmsbx attach` follows it."
)
@click.option("--prompt", "-p", default=None, metavar="TASK", help="Run Claude Code headless on TASK.")
@click.option(
    "--budget", default=None, metavar="CAP", help="API spend cap for the run: tokens (200k) or dollars ($5)."
)
@click.option("--apply", "apply_changes", is_flag=True, help="Apply the run's changes without asking.")
@click.option(
    "--no-claude-profile",
    "no_profile",
    is_flag=True,
    help="Do not copy your Claude profile (~/.claude: CLAUDE.md, settings, commands …) into the run.",
)
@click.option(
    "--continue",
    "continue_last",
    is_flag=True,
    help="Go on with the conversation of this folder's most recent agent run (only it carries over).",
)
@click.option(
    "--resume",
    "resume_run",
    default=None,
    metavar="RUN",
    help="Go on with the conversation of agent run RUN (of this folder; see `vmsbx runs`).",
)
@click.argument("argv", nargs=-1, required=False, type=click.UNPROCESSED)
def command(
    name: str | None,
    mode: str | None,
    memory: str | None,
    cpus: float | None,
    tasks: int | None,
    timeout: str | None,
    workspace_size: str | None,
    tmp_size: str | None,
    io_read_bps: str | None,
    io_write_bps: str | None,
    io_read_iops: str | None,
    io_write_iops: str | None,
    network: str | None,
    allow: tuple[str, ...],
    score_threshold: float | None,
    env: tuple[str, ...],
    tty: bool,
    detach: bool,
    prompt: str | None,
    budget: str | None,
    apply_changes: bool,
    no_profile: bool,
    continue_last: bool,
    resume_run: str | None,
    argv: tuple[str, ...],
) -> None:
    """Run Claude Code (or `-- CMD ARGS…`) in a fresh sandbox in the VM, on a mirror of this
    folder.

    With no command: Claude Code with --dangerously-skip-permissions, interactively. With
    `-p TASK`: headless, one line per tool call. It reaches the model API only through the host
    relay; your key never enters the VM. The exit code is the agent's (or the command's).
    Ctrl-C stops a headless run. A dropped connection does not stop the run: `vmsbx attach RUN`
    follows it again. `--continue` / `--resume RUN` go on with an earlier agent run's
    conversation; the sandbox, HOME and user are fresh as ever.
    """
    from vmsbx.errors import UsageError
    from vmsbx.runs import lifecycle

    settings = load(**{
        "vm.name": name, "sandbox.mode": mode, "sandbox.memory_max": memory, "sandbox.cpus": cpus,
        "sandbox.tasks_max": tasks, "sandbox.timeout": timeout, "sandbox.workspace_size": workspace_size,
        "sandbox.tmp_size": tmp_size, "sandbox.network": network, "sandbox.score_threshold": score_threshold,
        "sandbox.allow_hosts": allow or None, "sandbox.io_read_bps": io_read_bps,
        "sandbox.io_write_bps": io_write_bps, "sandbox.io_read_iops": io_read_iops,
        "sandbox.io_write_iops": io_write_iops, "agent.claude_profile": False if no_profile else None,
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
    if argv and prompt is not None:
        raise UsageError("give either -p TASK or -- CMD, not both", hint="`vmsbx run -p 'fix the tests'`")
    is_agent = not argv
    if continue_last and resume_run:
        raise UsageError(
            "give either --continue or --resume RUN, not both", hint="`vmsbx run --continue -p TASK`"
        )
    if (continue_last or resume_run) and not is_agent:
        raise UsageError(
            "--continue and --resume go on with an agent run's conversation: they take no -- CMD",
            hint="`vmsbx run --continue -p TASK`, or `vmsbx run --continue` for an interactive session",
        )
    earlier = _conversation_to_continue(continue_last, resume_run)
    relay = lifecycle.plan_relay(settings, budget, required=is_agent, environ=os.environ)
    if is_agent:
        from vmsbx.paths import user_config_file
        from vmsbx.runs import agentrun, conversation

        resume = earlier.session if earlier else None
        command_argv = agentrun.claude_argv(settings.agent.claude_version, prompt, resume=resume)
        tty = prompt is None
        template = user_config_file().parent / "claude-home"
        profile, profile_copy = _claude_profile(settings)
        text = _conversation_text(earlier)

        def home(token: str, kind: CredentialKind, workspaces: list[str]) -> dict[str, str]:
            files = agentrun.home_files(token, kind, workspaces, template, profile)
            if earlier is not None:
                files.update(conversation.restore_files(earlier.run, earlier.session, text, workspaces))
            return files

        home_files = home
    else:
        command_argv, home_files, profile_copy = list(argv), None, None
    record, guest = lifecycle.start(
        settings, command_argv, project=Path.cwd(), tty=tty, env=environment, relay=relay,
        home_files=home_files, claude_profile=profile_copy, continued_from=earlier,
    )  # fmt: skip
    if earlier is not None:
        click.echo(f"vmsbx: continuing the conversation of run {earlier.run}", err=True)
    if detach:
        click.echo(record.id)
        return
    click.echo(f"vmsbx: run {record.id} started (exposure {record.exposure})", err=True)
    stdin = None if tty is False and sys.stdin.isatty() else sys.stdin.buffer
    if is_agent and prompt is not None:
        code = lifecycle.attach(record, guest, stdin=None, view=True)
    else:
        code = lifecycle.attach(record, guest, stdin=stdin)
    _report(record.id, code)
    _review(record.id, apply_changes=apply_changes, ask=tty and sys.stdin.isatty())
    sys.exit(code)


def _conversation_to_continue(continue_last: bool, resume_run: str | None) -> ContinuedFrom | None:
    """The run and session that --continue or --resume RUN names (checked: this folder's, an
    agent run's, kept)."""
    if not continue_last and not resume_run:
        return None
    from vmsbx.runs import conversation
    from vmsbx.runs import record as records
    from vmsbx.runs.record import ContinuedFrom

    if resume_run:
        records.run_dir(resume_run)  # a malformed id is refused with the format's hint
    chosen = conversation.pick_run(records.all_runs(), str(Path.cwd().resolve()), resume_run)
    return ContinuedFrom(run=chosen.id, session=chosen.conversation[-1])


def _conversation_text(earlier: ContinuedFrom | None) -> str:
    if earlier is None:
        return ""
    from vmsbx.runs import conversation
    from vmsbx.runs import record as records

    return conversation.stored(records.run_dir(earlier.run), earlier.session)


def _claude_profile(settings: Settings) -> tuple[ClaudeProfile | None, ProfileCopy | None]:
    """The user's Claude profile for this run (None when turned off), listed on stderr."""
    from vmsbx.claude import profile as profiles
    from vmsbx.runs.record import ProfileCopy
    from vmsbx.sync.rules import exclude_rules

    if not settings.agent.claude_profile:
        click.echo("vmsbx: your Claude profile is not copied (agent.claude_profile is off)", err=True)
        return None, None
    source = profiles.config_dir(os.environ, Path.home())
    rules = exclude_rules(settings.sync.secret_patterns, ())
    profile = profiles.read_profile(source, profiles.claude_json_path(os.environ, Path.home()), rules)
    for line in profiles.describe(profile, source):
        click.echo(f"vmsbx: {line}", err=True)
    copy = ProfileCopy(source=str(source), copied=list(profile.copied), left_out=list(profile.left_out))
    return profile, copy


def _review(run_id: str, *, apply_changes: bool, ask: bool) -> None:
    """Interactive runs ask at the end; headless runs apply only with --apply."""
    from vmsbx.runs import record as records
    from vmsbx.runs import review

    record = records.load(run_id)
    if record.changes != "collected" or not (apply_changes or ask):
        return
    if not apply_changes:
        while True:
            answer = (
                click.prompt(
                    "Apply these changes? [y]es, [n]o (keep them for later), [d]iff", default="n", err=True
                )
                .strip()
                .lower()
            )
            if answer.startswith("d"):
                click.echo_via_pager(review.diff_text(record))
                continue
            if not answer.startswith("y"):
                click.echo(
                    f"vmsbx: kept for later: `vmsbx apply {run_id}` or `vmsbx discard {run_id}`", err=True
                )
                return
            break
    report = review.apply_run(record, include_sensitive=False)
    for line in review.report_lines(record, report):
        click.echo(line, err=True)


def _report(run_id: str, code: int) -> None:
    from vmsbx.runs import record as records

    final = records.load(run_id)
    if code != 0 and final.reason:
        click.echo(f"vmsbx: run {run_id}: {final.reason}", err=True)
    if final.api and final.api.get("budget_exhausted"):
        click.echo(f"vmsbx: run {run_id}: the API budget ({final.api.get('budget')}) was used up", err=True)
