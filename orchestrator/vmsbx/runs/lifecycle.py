"""A run from start to record: launch in the guest, stream, end, record, pull the journal."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from vmsbx.agent.client import AgentClient, send_resize
from vmsbx.agent.protocol import FrameWriter
from vmsbx.config.models import Settings
from vmsbx.errors import AgentError, UsageError
from vmsbx.guest import provision_nsjail
from vmsbx.paths import vm_dir
from vmsbx.runs import record as records
from vmsbx.runs.guestctl import GuestControl, LaunchFailed
from vmsbx.runs.outcome import SANDBOX_FAILED, outcome
from vmsbx.runs.record import Resources, RunRecord
from vmsbx.runs.workspace import workspace_tar
from vmsbx.sandbox.layout import RunLayout, new_run_id
from vmsbx.sandbox.nsjail import (
    JAIL_WORKSPACE,
    check_jail_config,
    nsjail_config_path,
    outside_uid_for,
    render_nsjail_config,
    render_nsjail_systemd_run_argv,
    render_nsjail_unit_file,
    render_nsjail_unit_properties,
)
from vmsbx.sandbox.systemd import (
    render_systemd_run_argv,
    render_unit_file,
    render_unit_properties,
    unsupported_properties,
)

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
        cache_file.write_text(json.dumps(cache))
    return cache[key]


def _unit_file(settings: Settings, layout: RunLayout) -> str:
    if settings.sandbox.mode == "nsjail":
        return render_nsjail_unit_file(settings.sandbox, layout, config_path=nsjail_config_path(layout))
    return render_unit_file(settings.sandbox, layout)


def _properties(settings: Settings, layout: RunLayout) -> list[str]:
    if settings.sandbox.mode == "nsjail":
        return render_nsjail_unit_properties(settings.sandbox, layout)
    return render_unit_properties(settings.sandbox, layout)


def _threshold(settings: Settings) -> float:
    policy = settings.sandbox
    return policy.nsjail_score_threshold if policy.mode == "nsjail" else policy.score_threshold


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
        (vm_dir(vm) / "guest.json").write_text(json.dumps(facts))


def check_policy(settings: Settings) -> None:
    """Refuse what this version cannot enforce: fail closed, never run with less isolation."""
    policy = settings.sandbox
    if policy.network != "none":
        raise UsageError(
            f"network policy {policy.network!r} needs the egress relay, which this version does not have",
            hint="use --network none (the run gets no network at all)",
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
    adjust: Callable[[dict[str, object]], None] | None = None,
) -> tuple[RunRecord, GuestControl]:
    """Launch a run; returns its record (state running) and the guest control it runs under.

    `adjust` edits the rendered launch request: only `vmsbx verify --self-test` passes one.
    """
    check_policy(settings)
    vm = settings.vm.name
    guest = connect(vm)
    facts = _guest_facts(vm)
    _check_guest_supports(settings, facts)
    if settings.sandbox.mode == "nsjail":
        _ensure_nsjail(guest, vm, facts)
    exposure = policy_exposure(settings, guest, vm)
    if exposure > _threshold(settings):
        raise LaunchFailed(
            f"the {settings.sandbox.mode} sandbox policy scores {exposure} in `systemd-analyze "
            f"security`, above the allowed {_threshold(settings)}",
            hint="tighten the policy, or raise the threshold in your user config or with a flag",
        )
    workspace = workspace_tar(project)
    size = _terminal_size() if tty else (80, 24)
    for attempt in range(3):
        layout = RunLayout(run_id=new_run_id())
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
        )
        request = _launch_request(settings, layout, record, facts)
        request["spec"] = {
            "argv": command,
            "env": env,
            "tty": tty,
            "cols": size[0],
            "rows": size[1],
            "cwd": JAIL_WORKSPACE if record.sandbox == "nsjail" else layout.workspace,
            "home": layout.home,
        }
        if adjust is not None:
            adjust(request)
        records.save(record)
        try:
            launched = guest.launch(request, workspace)
        except LaunchFailed as exc:
            # Two concurrent jails may draw the same outside uid: the guest refuses, draw again.
            if record.sandbox == "nsjail" and "is in use" in exc.message and attempt < 2:
                records.discard(record.id)
                continue
            _mark_failed(record, exc)
            raise
        except BaseException as exc:
            _mark_failed(record, exc)
            raise
        record.invocation_id = launched["invocation_id"]
        record.state = "running"
        records.save(record)
        return record, guest
    raise AssertionError("unreachable")  # pragma: no cover


def _launch_request(
    settings: Settings, layout: RunLayout, record: RunRecord, facts: dict[str, str]
) -> dict[str, object]:
    """What the guest launcher needs to start this run (the spec is added by the caller)."""
    request: dict[str, object] = {
        "run_id": layout.run_id,
        "tmp_size": settings.sandbox.tmp_size,
        "workspace_size": settings.sandbox.workspace_size,
    }
    if settings.sandbox.mode != "nsjail":
        request["systemd_run"] = render_systemd_run_argv(settings.sandbox, layout)
        return request
    outside_uid = outside_uid_for(layout.run_id)
    config = render_nsjail_config(
        settings.sandbox, layout, outside_uid=outside_uid, arch=facts.get("arch", "")
    )
    problems = check_jail_config(config)
    record.outside_uid, record.jail_problems = outside_uid, problems
    if problems:
        raise LaunchFailed(
            "the rendered nsjail config is weaker than vmsbx allows: " + "; ".join(problems),
            hint="this is a bug in vmsbx; use --sandbox systemd meanwhile",
        )
    path = nsjail_config_path(layout)
    request["systemd_run"] = render_nsjail_systemd_run_argv(settings.sandbox, layout, config_path=path)
    request["nsjail"] = {"config": config, "outside_uid": outside_uid}
    return request


def _mark_failed(record: RunRecord, exc: BaseException) -> None:
    record.state, record.exit_code, record.ended_at = "failed", SANDBOX_FAILED, records.now()
    record.reason = f"did not start: {exc}"[:500]
    records.save(record)


def attach(record: RunRecord, guest: GuestControl, *, stdin: BinaryIO | None) -> int:
    """Stream the run until it ends (Ctrl-C stops a headless run); record it; return its code."""
    interrupted = False
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
        else:
            guest.attach(record.id, stdin=stdin, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)
    except KeyboardInterrupt:
        interrupted = True
        guest.stop(record.id)
    return finish(record, guest, interrupted=interrupted)


# Longer than the unit's TimeoutStopSec= (10 s) plus ExecStopPost=: past this the guest has
# stopped answering about the run, and the record says so.
FINISH_WAIT = 120.0


def finish(
    record: RunRecord, guest: GuestControl, *, interrupted: bool = False, wait: float = FINISH_WAIT
) -> int:
    """Collect systemd's verdict and the journal into the run's record; free the run's space."""
    result = guest.result(record.id, wait=wait)
    if result is None:
        record.state, record.exit_code = "lost", SANDBOX_FAILED
        record.reason = f"the guest did not report the end of the run within {wait:g} s"
        records.save(record)
        pull_journal(record, guest)
        return SANDBOX_FAILED
    code, reason = outcome(result, record.policy)
    if interrupted:
        code, reason = INTERRUPTED, "interrupted (Ctrl-C): vmsbx stopped the run"
    record.exit_code, record.reason = code, reason
    record.service_result = result.service_result
    record.state = (
        "exited" if result.service_result == "success" or result.exit_code == "exited" else "failed"
    )
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
    pull_journal(record, guest)
    # The agent stage will keep the workspace until its changes are applied or discarded.
    guest.release(record.id)
    return code


def pull_journal(record: RunRecord, guest: GuestControl) -> list[bytes]:
    """Append the run's new journal entries to journal.jsonl; resume from the stored cursor."""
    if not record.invocation_id:
        return []
    entries, cursor = guest.journal(record.id, record.invocation_id, record.journal_cursor)
    if entries:
        with (records.run_dir(record.id) / "journal.jsonl").open("ab") as sink:
            for entry in entries:
                sink.write(entry + b"\n")
    if cursor != record.journal_cursor:
        record.journal_cursor = cursor
        records.save(record)
    return entries


def _seconds_between(start: str, end: str) -> float:
    return round((dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds(), 3)


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return (80, 24)
    return (size.columns, size.lines)


def _follow_resizes(writer: FrameWriter) -> None:
    if hasattr(signal, "SIGWINCH"):
        signal.signal(signal.SIGWINCH, lambda *_: send_resize(writer, *_terminal_size()))


@contextlib.contextmanager
def _raw_terminal() -> Iterator[tuple[int, int]]:
    """The host terminal in raw mode for a --tty run: keys (Ctrl-C too) go to the program."""
    if not sys.stdin.isatty() or os.name != "posix":
        yield _terminal_size()
        return
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield _terminal_size()
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
