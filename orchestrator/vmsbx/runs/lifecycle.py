"""A run from start to record: launch in the guest, stream, end, record, pull the journal."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vmsbx.agent.client import AgentClient, send_resize
from vmsbx.agent.credential import CredentialKind
from vmsbx.agent.egress.sandbox_env import env_for_sandbox
from vmsbx.agent.protocol import FrameWriter
from vmsbx.config.models import Settings
from vmsbx.contract import (
    EXIT_STALE_MIRROR,
    EXIT_UID_IN_USE,
    LAUNCH_REQUEST_MAX,
    PROJECT_ID,
    Jail,
    LaunchRequest,
    ProjectPaths,
    RunSpec,
    Sizes,
)
from vmsbx.errors import AgentError, ConfigError, TransportError, UsageError, VmsbxError
from vmsbx.guest import provision_nsjail
from vmsbx.logsetup import register_secret
from vmsbx.paths import open_private, vm_dir, write_private
from vmsbx.runs import agentrun, gitbundle, review, workspace
from vmsbx.runs import record as records
from vmsbx.runs.guestctl import Ended, GuestControl, LaunchFailed
from vmsbx.runs.outcome import SANDBOX_FAILED, GuestResult, jail_failure, outcome
from vmsbx.runs.record import BudgetCap, ContinuedFrom, ProfileCopy, Resources, RunRecord
from vmsbx.runs.streamview import StreamView
from vmsbx.sandbox.layout import BRIDGES, RunLayout, new_run_id
from vmsbx.sandbox.renderer import renderer_for
from vmsbx.sandbox.systemd import unsupported_properties
from vmsbx.sandbox.workdir import run_workdir
from vmsbx.sync.blobs import DEFAULT_MAX_BYTES
from vmsbx.sync.driver import ChangesTooLarge

INTERRUPTED = 130
_SCORE_PLACEHOLDER = RunLayout(run_id="000000000000")


def connect(vm: str) -> GuestControl:
    client = AgentClient(vm)
    if not client.ping():
        raise AgentError(
            f"VM {vm!r} is not up (its host agent does not answer)", hint=f"`vmsbx up --name {vm}`"
        )
    return GuestControl(client)


def policy_exposure(settings: Settings, guest: GuestControl, vm: str) -> float:
    """The policy's offline exposure score, cached per policy and guest (systemd version)."""
    unit = _unit_file(settings, _SCORE_PLACEHOLDER)
    systemd = _guest_facts(vm).get("systemd_version", "")
    key = hashlib.sha256(f"{systemd}\0{unit}".encode()).hexdigest()
    cache_file = vm_dir(vm) / "scores.json"
    cache: dict[str, float] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    if key not in cache:
        cache[key] = guest.score(unit)
        write_private(cache_file, json.dumps(cache))
    return cache[key]


def _unit_file(settings: Settings, layout: RunLayout) -> str:
    return renderer_for(settings.sandbox.mode).unit_file(settings.sandbox, layout)


def _properties(settings: Settings, layout: RunLayout) -> list[str]:
    return renderer_for(settings.sandbox.mode).unit_properties(settings.sandbox, layout)


def _threshold(settings: Settings) -> float:
    return renderer_for(settings.sandbox.mode).score_threshold(settings.sandbox)


def _guest_facts(vm: str) -> dict[str, str]:
    facts_file = vm_dir(vm) / "guest.json"
    if not facts_file.is_file():
        raise AgentError(f"VM {vm!r} has not been checked yet", hint=f"`vmsbx up --name {vm}`")
    facts: dict[str, str] = json.loads(facts_file.read_text())
    return facts


def _ensure_nsjail(guest: GuestControl, vm: str, facts: dict[str, str]) -> None:
    """nsjail mode needs user namespaces in the guest and vmsbx's nsjail installed there."""
    if not str(facts.get("max_user_namespaces", "0")).isdigit() or int(facts["max_user_namespaces"]) < 1:
        raise LaunchFailed(
            "the guest has user namespaces disabled (user.max_user_namespaces = 0): nsjail cannot run",
            hint="use --sandbox systemd, or a guest that allows user namespaces",
        )
    installed = provision_nsjail(guest.client, facts.get("arch", ""), facts.get("nsjail_version", ""))
    if installed != facts.get("nsjail_version"):
        facts["nsjail_version"] = installed
        write_private(vm_dir(vm) / "guest.json", json.dumps(facts))


@dataclass(frozen=True)
class RelayAccess:
    """A run's way to the model API: the relay admits its token and adds this credential.
    `credential` and `budget` are the relay's wire forms; the credential goes only to the host
    agent's private socket, never into the guest."""

    credential: dict[str, str]
    kind: CredentialKind
    budget: dict[str, object] | None = None


def plan_relay(
    settings: Settings, budget: str | None, *, required: bool, environ: Mapping[str, str]
) -> RelayAccess | None:
    """How the run reaches the model API: through the relay, under every policy but none, with
    the credential (from the user's config or environment, never the project file) and the
    budget; None when the run does not use the API.

    `required` (the agent) makes a missing credential an error. So does `budget`: a cap that
    no relay enforces would be a promise nobody keeps, so it is refused rather than ignored."""
    from vmsbx.agent.budget import parse_budget
    from vmsbx.agent.credential import resolve_credential

    cap = None
    if budget:
        try:
            cap = parse_budget(budget)
        except ValueError as exc:
            raise UsageError(f"--budget: {exc}", hint="e.g. --budget 200k or --budget '$5'") from None
    if settings.sandbox.network == "none":
        if required:
            raise UsageError(
                "the agent needs the model API, but the network policy is 'none'",
                hint="use --network api (the default): only the API, through the host relay",
            )
        if cap is not None:
            raise UsageError(
                "--budget caps the run's API use, but the network policy 'none' gives it no API",
                hint="drop --budget, or use --network api",
            )
        return None
    try:
        credential = resolve_credential(settings.agent, environ)
    except ConfigError:
        if required or cap is not None:
            raise
        return None  # a plain command without a credential simply gets no relay
    register_secret(credential.reveal())  # masked in vmsbx's own log, whatever logs it
    return RelayAccess(
        credential={"kind": credential.kind, "secret": credential.reveal()},
        kind=credential.kind,
        budget={"tokens": cap.tokens, "usd": cap.usd} if cap else None,
    )


def check_policy(settings: Settings) -> None:
    """Refuse what this version cannot enforce: fail closed, never run with less isolation."""
    policy = settings.sandbox
    if policy.network == "allowlist" and not policy.allow_hosts:
        raise UsageError(
            "network policy 'allowlist' with an empty sandbox.allow_hosts",
            hint="list destinations, e.g. --allow github.com --allow '*.npmjs.org', or use --network api",
        )


def _check_guest_supports(settings: Settings, facts: dict[str, str]) -> None:
    version = str(facts.get("systemd_version", ""))
    head = version.split(".", maxsplit=1)[0]
    major = int(head) if head.isdigit() else 0
    missing = unsupported_properties(_properties(settings, _SCORE_PLACEHOLDER), major)
    if missing:
        raise LaunchFailed(
            f"the guest's systemd {version or '(unknown)'} cannot enforce: {', '.join(missing)}",
            hint="vmsbx will not run with less isolation; use a guest with a newer systemd",
        )


def start(
    settings: Settings,
    command: list[str],
    *,
    project: Path,
    tty: bool,
    env: dict[str, str],
    relay: RelayAccess | None = None,
    home_files: Callable[[str, CredentialKind, list[str]], dict[str, str]] | None = None,
    adjust: Callable[[LaunchRequest], LaunchRequest] | None = None,
    claude_profile: ProfileCopy | None = None,
    continued_from: ContinuedFrom | None = None,
) -> tuple[RunRecord, GuestControl]:
    """Launch a run; returns its record (state running) and the guest control it runs under.

    `adjust` returns a changed launch request: only `vmsbx verify --self-test` passes one.
    """
    check_policy(settings)
    vm = settings.vm.name
    guest = connect(vm)
    facts = _guest_facts(vm)
    _check_guest_supports(settings, facts)
    if renderer_for(settings.sandbox.mode).needs_nsjail:
        _ensure_nsjail(guest, vm, facts)
    exposure = policy_exposure(settings, guest, vm)
    if exposure > _threshold(settings):
        raise LaunchFailed(
            f"the {settings.sandbox.mode} sandbox policy scores {exposure} in `systemd-analyze "
            f"security`, above the allowed {_threshold(settings)}",
            hint="tighten the policy, or raise the threshold in your user config or with a flag",
        )
    project = project.resolve()
    busy = _finish_earlier_runs(guest, vm, project)
    key = next(k for k in (workspace.project_key(project, slot) for slot in range(64)) if k not in busy)
    bases = gitbundle.base_commits(project)
    stable = run_workdir(str(project))
    size = _terminal_size() if tty else (80, 24)
    for attempt in range(3):
        sync = workspace.plan_sync_in(settings, project, guest, vm, key)
        layout = RunLayout(run_id=new_run_id())
        workdir = renderer_for(settings.sandbox.mode).workdir(layout, facts, stable)
        record = RunRecord(
            id=layout.run_id,
            vm=vm,
            sandbox=settings.sandbox.mode,
            command=tuple(command),
            tty=tty,
            policy=settings.sandbox,
            unit=layout.unit,
            exposure=exposure,
            started_at=records.now(),
            project=str(project),
            workspace_key=key,
            collect_max=settings.sync.collect_max,
            budget=None if relay is None or relay.budget is None else BudgetCap.model_validate(relay.budget),
            claude_profile=claude_profile,
            workdir=workdir,
            continued_from=continued_from,
        )
        systemd_run, jail = _launch_sandbox(settings, layout, record, facts, workdir)
        run_env = dict(env)
        token = agentrun.new_token()
        register_secret(token)
        ports = _admit(guest, settings, layout.run_id, token, relay)
        record.relay, record.egress = "relay" in ports, "proxy" in ports
        run_env.update(sandbox_environment(settings, ports, token, relay))
        home: dict[str, str] = {}
        if record.relay and relay is not None and home_files is not None:
            # systemd's per-run path is a link into /var/lib/private, which Claude Code resolves:
            # it may know its folder by either name there.
            names = [workdir, layout.workspace_mount] if workdir == layout.workspace else [workdir]
            try:
                home = home_files(token, relay.kind, names)
            except BaseException:  # e.g. a conversation over the cap: the token must not stay admitted
                _leave_relay(guest, record)
                raise
        request = LaunchRequest(
            run_id=layout.run_id,
            project=sync.key,
            mirror=sync.mirror,
            sizes=Sizes(tmp=settings.sandbox.tmp_size, workspace=settings.sandbox.workspace_size),
            systemd_run=systemd_run,
            jail=jail,
            bridges=ports,
            spec=RunSpec(
                argv=command,
                env=run_env,
                tty=tty,
                cols=size[0],
                rows=size[1],
                cwd=workdir,
                home=layout.home,
                bridges={name: BRIDGES[name] for name in ports},
                home_files=home,
            ),
        )
        if adjust is not None:
            request = adjust(request)
        _check_request_size(guest, record, request)
        records.save(record)
        workspace.save_base(records.run_dir(record.id), sync, bases)
        try:
            with workspace.launch_stream(request, sync) as stream:
                launched = guest.launch(stream)
        except LaunchFailed as exc:
            if draws_again(exc) and attempt < 2:
                _leave_relay(guest, record)
                records.discard(record.id)
                continue
            _mark_failed(record, exc)
            _leave_relay(guest, record)
            raise
        except BaseException as exc:
            _mark_failed(record, exc)
            _leave_relay(guest, record)
            raise
        record.invocation_id = launched.invocation_id
        record.state = "running"
        record.changes = "pending"
        if settings.sandbox.network == "open":
            warning = "network policy 'open': the run may reach any public address (through the proxy)"
            record.warnings.append(warning)
            print(f"vmsbx: warning: {warning}", file=sys.stderr)
        records.save(record)
        _say_excluded(sync)
        return record, guest
    raise AssertionError("unreachable")  # pragma: no cover


def _check_request_size(guest: GuestControl, record: RunRecord, request: LaunchRequest) -> None:
    too_big = request_too_big(request)
    if too_big is not None:
        _leave_relay(guest, record)
        raise too_big


def request_too_big(request: LaunchRequest) -> UsageError | None:
    """The guest reads at most LAUNCH_REQUEST_MAX of the request line: the error that says what
    to shrink, instead of sending a request it would refuse as a contract mismatch."""
    size = len(request.to_json().encode()) + 1
    if size <= LAUNCH_REQUEST_MAX:
        return None
    home = sum(len(text.encode()) for text in request.spec.home_files.values())
    return UsageError(
        f"this run's launch request is {size // 1024} KiB, {home // 1024} KiB of it the run's HOME "
        f"files; the guest takes at most {LAUNCH_REQUEST_MAX // (1 << 20)} MiB",
        hint="leave your Claude profile out (--no-claude-profile), shrink the claude-home template "
        "in your vmsbx config folder, or start afresh instead of --continue",
    )


def _say_excluded(sync: workspace.SyncIn) -> None:
    if sync.excluded:
        shown = ", ".join(item.path for item in sync.excluded[:5])
        more = f" and {len(sync.excluded) - 5} more" if len(sync.excluded) > 5 else ""
        print(f"vmsbx: left out of the workspace (secrets/excludes): {shown}{more}", file=sys.stderr)


def _finish_earlier_runs(guest: GuestControl, vm: str, project: Path) -> set[str]:
    """An earlier run of this project that ended while nobody watched still owns its guest
    mirror: collect its changes before a new sync overwrites them. One that cannot end any more
    (its VM was killed or reset) is recorded as lost; its changes cannot be trusted. Returns the
    mirrors that runs still going hold (a new run takes another one)."""
    busy: set[str] = set()
    for earlier in records.all_runs():
        if earlier.vm != vm or earlier.project != str(project):
            continue
        if earlier.changes == "held":  # over the collect cap: its mirror is kept for inspection
            busy.add(earlier.workspace_key or workspace.project_key(project))
            continue
        if earlier.changes != "pending":
            continue
        try:
            ended = earlier.state != "lost" and guest.result(earlier.id, wait=0) is not None
        except TransportError:  # the guest no longer knows it (VM reset)
            ended = False
        if ended:
            finish(earlier, guest, quiet=True)
            continue
        if earlier.state in ("starting", "running") and guest.is_active(earlier.id):
            busy.add(earlier.workspace_key or workspace.project_key(project))
            continue
        if earlier.state in ("starting", "running"):
            earlier.state, earlier.exit_code = "lost", SANDBOX_FAILED
            earlier.reason = "ended abnormally: its sandbox is gone from the guest (VM restarted?)"
        earlier.changes = "failed"
        records.save(earlier)
    return busy


def admission_request(
    settings: Settings, run_id: str, token: str, relay: RelayAccess | None
) -> dict[str, object] | None:
    """What the host agent is asked to admit the run to (pure): the relay (its token, if it has
    a credential) and its egress proxy (unless the policy is none); None: no service at all."""
    policy, agent = settings.sandbox, settings.agent
    request: dict[str, object] = {"op": "run_register", "run_id": run_id}
    if relay is not None and policy.network != "none":
        request["relay"] = {
            "token": token, "credential": relay.credential, "budget": relay.budget,
            "upstream": agent.api_upstream, "ca_file": str(agent.api_ca_file) if agent.api_ca_file else None,
            "max_concurrent": agent.max_concurrent_requests,
        }  # fmt: skip
    if policy.network != "none":
        request["egress"] = {"network": policy.network, "allow_hosts": list(policy.allow_hosts)}
    return request if len(request) > 2 else None


def sandbox_environment(
    settings: Settings, ports: Mapping[str, int], token: str, relay: RelayAccess | None
) -> dict[str, str]:
    """The variables that lead the run to the services it was admitted to (pure): the relay's
    loopback port and the run token for the agent, the egress proxy for everything else."""
    env: dict[str, str] = {}
    if "relay" in ports and relay is not None:
        env.update(agentrun.agent_env(token, relay.kind))
    if "proxy" in ports:
        env.update(env_for_sandbox(settings.sandbox.network, BRIDGES["proxy"]))
    return env


def _admit(
    guest: GuestControl, settings: Settings, run_id: str, token: str, relay: RelayAccess | None
) -> dict[str, int]:
    """Admit the run to the host agent's services; their guest ports."""
    request = admission_request(settings, run_id, token, relay)
    if request is None:
        return {}
    ports: dict[str, int] = guest.client.call(request)["ports"]
    return ports


def _record_api_use(record: RunRecord, guest: GuestControl) -> None:
    """The relay's own account (trusted, host side) of the run's API use, into the record."""
    if not record.relay:
        return
    usage: object = None
    with contextlib.suppress(VmsbxError, OSError):
        usage = guest.client.call({"op": "run_usage", "run_id": record.id}).get("usage")
    events = records.run_dir(record.id) / "relay.jsonl"
    exhausted: dict[str, object] | None = None
    requests = 0
    if events.is_file():
        for line in events.read_text().splitlines():
            event = json.loads(line)
            requests += event.get("event") == "api_request"
            if event.get("event") == "budget_exhausted":
                exhausted = event
    record.api = {"usage": usage, "requests": requests, "budget_exhausted": exhausted is not None}
    if exhausted is not None:
        record.api["budget"] = exhausted.get("budget")
        note = f"the API budget ({exhausted.get('budget')}) was used up: the relay refused further requests"
        record.warnings.append(note)
    records.save(record)


def _leave_relay(guest: GuestControl, record: RunRecord) -> None:
    """The run's token stops working and its proxy closes (the run ended, or never started)."""
    if record.relay or record.egress:
        with contextlib.suppress(VmsbxError, OSError):
            guest.client.call({"op": "run_unregister", "run_id": record.id})


def draws_again(exc: LaunchFailed) -> bool:
    """Whether a refused launch is tried again under a new run id: only when the guest said, by
    its exit code (never by the words of its message), that the jail's drawn outside uid is
    taken by another live run or account (a new id draws another uid), or that the mirror is not
    the kept manifest the sync was planned against (the plan is made again, from the guest's
    own listing: the kept one was taken)."""
    return exc.guest_code in (EXIT_UID_IN_USE, EXIT_STALE_MIRROR)


def _launch_sandbox(
    settings: Settings, layout: RunLayout, record: RunRecord, facts: dict[str, str], workdir: str
) -> tuple[list[str], Jail | None]:
    """The sandbox part of the launch request: the unit's systemd-run argv, and in nsjail mode
    the jail's config and outside uid. `workdir`: where the run sees its workspace."""
    launch = renderer_for(settings.sandbox.mode).launch(settings.sandbox, layout, facts, workdir)
    record.outside_uid, record.jail_problems = launch.outside_uid, launch.jail_problems
    if launch.jail_problems:
        raise LaunchFailed(
            "the rendered nsjail config is weaker than vmsbx allows: " + "; ".join(launch.jail_problems),
            hint="this is a bug in vmsbx; use --sandbox systemd meanwhile",
        )
    return launch.systemd_run, launch.jail


def _mark_failed(record: RunRecord, exc: BaseException) -> None:
    record.state, record.exit_code, record.ended_at = "failed", SANDBOX_FAILED, records.now()
    record.reason = f"did not start: {exc}"[:500]
    records.save(record)


def attach(record: RunRecord, guest: GuestControl, *, stdin: BinaryIO | None, view: bool = False) -> int:
    """Stream the run until it ends (Ctrl-C stops a headless run); record it; return its code.

    `view`: the run prints Claude Code's stream-json; save it raw to runs/<id>/stream.jsonl
    and show one readable line per step instead."""
    interrupted = False
    if view:
        with open_private(records.run_dir(record.id) / "stream.jsonl", "ab") as raw:
            sink = StreamView(raw, _show_line)
            try:
                guest.attach(record.id, stdin=None, stdout=sink, stderr=sys.stderr.buffer)
            except KeyboardInterrupt:
                interrupted = True
                guest.stop(record.id)
            finally:
                sink.close()
        return finish(record, guest, interrupted=interrupted)
    try:
        if record.tty:
            with _raw_terminal() as size:
                guest.attach(
                    record.id,
                    stdin=stdin,
                    stdout=sys.stdout.buffer,
                    stderr=sys.stderr.buffer,
                    pty=True,
                    size=size,
                    on_open=_follow_resizes,
                )
        elif record.invocation_id:
            # Headless: the output, the verdict, the journal and the manifest in one guest call.
            return finish(record, guest, output=Output(stdin, sys.stdout.buffer, sys.stderr.buffer))
        else:
            guest.attach(record.id, stdin=stdin, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)
    except KeyboardInterrupt:
        interrupted = True
        guest.stop(record.id)
    return finish(record, guest, interrupted=interrupted)


@dataclass(frozen=True)
class Output:
    """Where a headless run's output goes while `finish` waits for its end (`guest.py follow`)."""

    stdin: BinaryIO | None
    stdout: BinaryIO
    stderr: BinaryIO


# Longer than the unit's TimeoutStopSec= (30 s, which also bounds ExecStopPost=): past this
# the guest has stopped answering about the run, and the record says so.
FINISH_WAIT = 120.0


def finish(
    record: RunRecord,
    guest: GuestControl,
    *,
    interrupted: bool = False,
    wait: float = FINISH_WAIT,
    quiet: bool = False,
    output: Output | None = None,
) -> int:
    """Collect systemd's verdict and the journal into the run's record; free the run's space.
    `output`: the run is still going, and its output is streamed there until it ends, in the
    same guest call as the verdict (Ctrl-C then stops it, and the verdict is asked for again)."""
    # The verdict and the journal in one guest call (each call starts a guest process). The
    # journal streams into a spool file, appended to journal.jsonl once the verdict is recorded.
    spool_path = records.run_dir(record.id) / "journal.spool"
    cursor: str | None = None
    listed: bytes | None = None  # the workspace's manifest, made in the same guest call
    code = SANDBOX_FAILED
    # Unlinked whatever happens: until the cursor is saved, a later pull fetches the same entries.
    try:
        with open_private(spool_path, "w+b") as spool:
            if record.invocation_id:
                end = None
                if output is not None:
                    try:
                        end = _follow(record, guest, output, wait, spool)
                    except KeyboardInterrupt:
                        interrupted = True
                        guest.stop(record.id)
                        spool.seek(0)
                        spool.truncate()
                if output is None or interrupted:
                    end = guest.ended(
                        record.id,
                        record.invocation_id,
                        record.journal_cursor,
                        wait=wait,
                        spool=spool,
                        manifest=_wants_changes(record),
                        collect_max=_collect_max(record),
                    )
                result = end.result if end else None
                cursor, listed = (end.cursor, end.manifest) if end else (None, None)
            else:
                result = guest.result(record.id, wait=wait)
            _record_api_use(record, guest)
            _leave_relay(guest, record)
            if result is not None:
                code = _record_ended(record, result, spool, cursor, interrupted=interrupted)
    finally:
        spool_path.unlink(missing_ok=True)
    if result is None:
        return _record_lost(record, guest, wait)
    if agentrun.is_agent(record.command) and not record.conversation:  # once: release drops it
        _keep_conversation(record, guest)
    _collect_changes(record, guest, quiet=quiet, listed=listed)
    return code


def _keep_conversation(record: RunRecord, guest: GuestControl) -> None:
    """The agent's conversation into runs/<id>/sessions (what `run --continue` resumes); one
    guest call, before `release` drops the guest's copy. A failure is a warning: the run's
    verdict and changes do not depend on it."""
    from vmsbx.runs import conversation

    try:
        files, notes = guest.sessions(record.id)
    except VmsbxError as exc:
        files, notes = [], [f"the conversation was not kept: {exc.message}"]
    record.conversation = conversation.store(records.run_dir(record.id), files)
    record.warnings.extend(notes)
    records.save(record)


def _follow(
    record: RunRecord, guest: GuestControl, output: Output, wait: float, spool: BinaryIO
) -> Ended | None:
    return guest.follow(
        record.id,
        record.invocation_id or "",
        record.journal_cursor,
        stdin=output.stdin,
        stdout=output.stdout,
        stderr=output.stderr,
        wait=wait,
        spool=spool,
        manifest=_wants_changes(record),
        collect_max=_collect_max(record),
    )


def _wants_changes(record: RunRecord) -> bool:
    return record.changes == "pending" and bool(record.project)


def _collect_max(record: RunRecord) -> int:
    return record.collect_max or DEFAULT_MAX_BYTES


def _record_lost(record: RunRecord, guest: GuestControl, wait: float) -> int:
    record.state, record.exit_code = "lost", SANDBOX_FAILED
    record.reason = f"the guest did not report the end of the run within {wait:g} s"
    if record.changes == "pending":
        record.changes = "failed"
    records.save(record)
    pull_journal(record, guest)
    return SANDBOX_FAILED


def _record_ended(
    record: RunRecord,
    result: GuestResult,
    spool: BinaryIO,
    cursor: str | None,
    *,
    interrupted: bool,
) -> int:
    """The verdict into the record, then the spooled journal into journal.jsonl."""
    code, reason = outcome(result, record.policy)
    if result.holder_started is False and code == SANDBOX_FAILED:
        # The jail (or the unit) never ran the command: say why, from nsjail's own log.
        spool.seek(0)
        why = jail_failure(spool)
        reason += f": {why}" if why else ""
    if interrupted:
        code, reason = INTERRUPTED, "interrupted (Ctrl-C): vmsbx stopped the run"
    record.exit_code, record.reason = code, reason
    record.service_result = result.service_result
    record.guest_notes = list(result.notes)
    exited = result.service_result == "success" or result.exit_code == "exited"
    record.state = "exited" if exited and result.holder_started is not False else "failed"
    record.ended_at = records.now()
    record.duration = _seconds_between(record.started_at, record.ended_at)
    record.resources = Resources(
        memory_peak=result.memory_peak,
        cpu_usage_usec=result.cpu_usage_usec,
        tasks_peak=result.tasks_peak,
        oom_kills=result.oom_kills,
        tasks_limit_hits=result.tasks_limit_hits,
    )
    records.save(record)
    if record.invocation_id:
        spool.seek(0)
        with open_private(records.run_dir(record.id) / "journal.jsonl", "ab") as sink:
            shutil.copyfileobj(spool, sink, 1 << 20)
        if cursor != record.journal_cursor:
            record.journal_cursor = cursor
            records.save(record)
    return code


def _collect_changes(
    record: RunRecord, guest: GuestControl, *, quiet: bool, listed: bytes | None = None
) -> None:
    """Bring the agent's changes to the run's folder (not the project), then free the guest's
    hold on the workspace. If that fails, the hold stays so that nothing is lost. `listed`: the
    workspace's manifest if `ended` already brought it."""
    project = record.project if _wants_changes(record) else None
    if not project:
        guest.release(record.id, later=True)
        return
    try:
        collected = workspace.collect(
            record.id,
            records.run_dir(record.id),
            guest,
            Path(project),
            listed=listed,
            max_bytes=_collect_max(record),
        )
    except ChangesTooLarge as exc:
        # Nothing was fetched. The guest keeps the run's hold on its mirror and the host keeps
        # that mirror out of later syncs (`_finish_earlier_runs`) until `vmsbx discard`.
        record.changes = "held"
        key = record.workspace_key
        where = ProjectPaths(key).mnt if key and PROJECT_ID.fullmatch(key) else "the guest"
        record.reason = (record.reason or "") + f"; changes not collected: {exc.message}; kept in {where}"
        records.save(record)
        print(f"vmsbx: the run's changes were not collected: {exc}", file=sys.stderr)
        print(
            f"vmsbx: they stay in the guest for inspection: `vmsbx ssh -- ls -la {where}`; "
            f"`vmsbx discard {record.id}` frees them",
            file=sys.stderr,
        )
        return
    except VmsbxError as exc:
        record.changes = "failed"
        record.reason = (record.reason or "") + f"; changes not collected: {exc.message}"
        records.save(record)
        print(f"vmsbx: could not collect the run's changes: {exc}", file=sys.stderr)
        return
    record.changes = "collected" if collected.changeset.entries or collected.bundle else "none"
    records.save(record)
    if listed is not None and record.workspace_key:
        workspace.keep_mirror(record.vm, record.workspace_key, record.policy.workspace_size, listed)
    guest.release(record.id, later=True)
    if not quiet:
        for line in review.summary_lines(
            record.id, collected.changeset, collected.commits, collected.problems
        ):
            print(line, file=sys.stderr)


def pull_journal(record: RunRecord, guest: GuestControl) -> list[bytes]:
    """Append the run's new journal entries to journal.jsonl; resume from the stored cursor."""
    if not record.invocation_id:
        return []
    entries, cursor = guest.journal(record.id, record.invocation_id, record.journal_cursor)
    _store_journal(record, entries, cursor)
    return entries


def _store_journal(record: RunRecord, entries: list[bytes], cursor: str | None) -> None:
    if entries:
        with open_private(records.run_dir(record.id) / "journal.jsonl", "ab") as sink:
            for entry in entries:
                sink.write(entry + b"\n")
    if cursor != record.journal_cursor:
        record.journal_cursor = cursor
        records.save(record)


def _show_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _seconds_between(start: str, end: str) -> float:
    return round((dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds(), 3)


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return (80, 24)
    # A fresh pseudo-terminal (a CI runner, `script`, an IDE) reports 0x0 until someone sets it.
    return (size.columns or 80, size.lines or 24)


def _follow_resizes(writer: FrameWriter) -> None:
    if hasattr(signal, "SIGWINCH"):
        signal.signal(signal.SIGWINCH, lambda *_: send_resize(writer, *_terminal_size()))


@contextlib.contextmanager
def _raw_terminal() -> Iterator[tuple[int, int]]:
    """The host terminal (or Windows console) in raw mode for a --tty run: keys, Ctrl-C too,
    go to the program."""
    from vmsbx.terminal import key_mode

    with key_mode(raw=True):
        yield _terminal_size()
