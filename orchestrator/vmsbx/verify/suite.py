"""Run the attempts for real: once as root outside the sandbox (the control), once inside a
real run of the user's sandbox, then judge (verdict.py).

Only this module touches the guest. Everything it plants in the guest (the attempt scripts, a
listener, a fake credential) is verify's own, named by a fresh token, and removed at the end.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.agent.client import AgentClient
from vmsbx.config.models import Settings
from vmsbx.contract import GUESTD_SOCKET
from vmsbx.errors import TransportError, VmsbxError
from vmsbx.paths import data_dir
from vmsbx.runs import lifecycle
from vmsbx.runs.guestctl import GuestControl
from vmsbx.runs.record import RunRecord
from vmsbx.verify.loosen import Loosening, loosen_request
from vmsbx.verify.verdict import Observation, Result, RunFacts, judge, merge_aftermath, parse

MiB = 1 << 20
GUEST_DIR = "/var/lib/vmsbx/verify"
FILES = ("attempts.py", "listener.py")
# The fake credential: recognisable, never valid. attempts.py searches for this prefix.
CANARY_PREFIX = "sk-ant-api03-vmsbxcanary-"
LISTENER_SECONDS = 900
_WAIT_FOR_LISTENER = """
import socket, sys, time
for _ in range(150):
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit("the verify listener did not come up")
"""
Progress = Callable[[str], None]


class VerifyReport(BaseModel):
    """What `vmsbx verify` found, for the table or --json."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    vm: str
    sandbox: str
    network: str = Field(description="The network policy the attempts were judged against.")
    run_id: str = Field(description="The sandboxed run the attempts were made in.")
    seconds: float
    results: list[Result]
    loosened: str | None = Field(default=None, description="--self-test: the wall taken down.")

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.verdict == "FAIL"]

    @property
    def inconclusive(self) -> list[Result]:
        return [r for r in self.results if r.verdict == "inconclusive"]


class SelfTestResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    loosening: str
    removes: str
    must_fail: list[str]
    reported_failing: list[str]
    caught: bool


def attack_settings(settings: Settings) -> Settings:
    """The user's sandbox with limits small enough that the resource attempts end quickly.

    Only sizes shrink; every wall is the user's own.
    """
    policy = settings.sandbox
    tightened = policy.model_copy(
        update={
            "memory_max": min(policy.memory_max, 512 * MiB),
            "tasks_max": min(policy.tasks_max, 128),
            "workspace_size": min(policy.workspace_size, 64 * MiB),
            "tmp_size": min(policy.tmp_size, 64 * MiB),
            "timeout": min(policy.timeout, 600.0),
        }
    )
    return settings.model_copy(update={"sandbox": tightened})


class _Session:
    """One verify's guest-side fixtures: scripts, listener, canary, host listener."""

    def __init__(self, settings: Settings, progress: Progress) -> None:
        self.settings = attack_settings(settings)
        self.progress = progress
        self.vm = settings.vm.name
        self.guest: GuestControl = lifecycle.connect(self.vm)
        self.client: AgentClient = self.guest.client
        self.token = secrets.token_hex(6)
        self.canary = CANARY_PREFIX + secrets.token_hex(16)
        self.dir = f"{GUEST_DIR}/{self.token}"
        self.port = 20000 + secrets.randbelow(30000)
        self.decoy = f"/var/lib/private/vmsbx-ws-decoy-{self.token}"
        self.guest_ip = ""
        self.host_port = 0

    def root(self, argv: list[str], *, check: bool = True) -> tuple[int, bytes, bytes]:
        code, out, err = self.client.run(argv)
        if check and code != 0:
            raise VmsbxError(
                f"verify could not prepare the guest ({argv[0]} exited {code}): "
                + err.decode(errors="replace").strip()[-500:],
                hint="`vmsbx up` checks the guest; `vmsbx reset` restores it",
            )
        return code, out, err

    def env(self, mode: str, token: str) -> dict[str, str]:
        policy = self.settings.sandbox
        return {
            "VERIFY_MODE": mode,
            "VERIFY_TOKEN": token,
            "VERIFY_GUEST_IP": self.guest_ip,
            "VERIFY_TCP_PORT": str(self.port),
            "VERIFY_UDP_PORT": str(self.port),
            "VERIFY_HOST_PORT": str(self.host_port),
            "VERIFY_TASKS": str(policy.tasks_max),
            "VERIFY_MEMORY": str(policy.memory_max),
            "VERIFY_WORKSPACE_SIZE": str(policy.workspace_size),
            "VERIFY_TMP_SIZE": str(policy.tmp_size),
            "VERIFY_OPEN_FILES": str(policy.open_files),
            "VERIFY_LISTENER_TOKEN": self.token,
            "VERIFY_GUEST_AGENT": GUESTD_SOCKET,
        }

    @contextlib.contextmanager
    def prepared(self) -> Iterator[None]:
        self.progress("preparing the guest for verify")
        _, out, _ = self.root(["hostname", "-I"])
        addresses = [a for a in out.decode(errors="replace").split() if "." in a]
        if not addresses:
            raise VmsbxError("the guest has no IPv4 address", hint="`vmsbx reset` restores the guest")
        self.guest_ip = addresses[0]
        # A decoy "other run's workspace": something for other_workspaces to find, or not.
        self.root(["mkdir", "-p", "-m", "0700", GUEST_DIR, self.dir, self.decoy])
        for name in FILES:
            self.client.put(f"{self.dir}/{name}", (data_dir() / "provision" / "verify" / name).read_bytes())
        host = socket.create_server(("127.0.0.1", 0))
        self.host_port = host.getsockname()[1]
        unit = f"vmsbx-verify-{self.token}.service"
        try:
            # The fake credential travels in the listener's argv and environment on purpose:
            # that is where the attempts must not be able to find it.
            self.root([
                "systemd-run", f"--unit={unit}", "--collect", "--quiet",
                "-p", f"RuntimeMaxSec={LISTENER_SECONDS}", "-E", f"ANTHROPIC_API_KEY={self.canary}",
                "/usr/bin/python3", f"{self.dir}/listener.py", str(self.port), self.token, self.canary,
                str(LISTENER_SECONDS),
            ])  # fmt: skip
            self.root([
                "python3", "-c", _WAIT_FOR_LISTENER, self.guest_ip, str(self.port),
            ])  # fmt: skip
            yield
        finally:
            host.close()
            with contextlib.suppress(VmsbxError, OSError):
                self.root(["systemctl", "stop", unit], check=False)
                self.root(["rm", "-rf", self.dir, self.decoy], check=False)

    def control(self, *, only: tuple[str, ...] | None = None) -> dict[str, Observation]:
        """Every attempt (or those in `only`) as root in the guest, outside any sandbox: each
        must work there."""
        self.progress("control: the attempts as root outside the sandbox")
        token = self.token + "c"
        env = {**self.env("control", token), "ANTHROPIC_API_KEY": self.canary}
        if only is not None:
            env["VERIFY_ONLY"] = " ".join(only)
        _, out, _ = self.root(
            ["sh", "-c", 'cd "$1" && shift && exec env "$@" python3 ./attempts.py run', "sh", self.dir,
             *(f"{k}={v}" for k, v in env.items())],
            check=False,
        )  # fmt: skip
        return merge_aftermath(parse(out), self.aftermath(token, control=True))

    def aftermath(self, token: str, *, control: bool = False) -> dict[str, Observation]:
        ctl = self.token + "c"
        _, out, _ = self.root(
            ["env", f"VERIFY_CONTROL_TOKEN={ctl}", "VERIFY_CLEAN=1", "python3", f"{self.dir}/attempts.py",
             "aftermath", token],
            check=False,
        )  # fmt: skip
        return parse(out)

    def healthy(self) -> tuple[bool, str]:
        """The guest answers as root, the host agent answers, and a fresh sandboxed run works."""
        try:
            if not self.client.ping():
                return False, "the host agent does not answer"
            code, _, err = self.client.run(["true"])
            if code != 0:
                return False, f"the guest did not run `true`: {err.decode(errors='replace')[-200:]}"
            out = self.sandboxed(["echo", "vmsbx-verify-alive"], {}, only=None)[0]
        except (VmsbxError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"[:300]
        if b"vmsbx-verify-alive" not in out:
            return False, "a fresh run did not print what it was asked to"
        return True, "the guest, its agent and a fresh sandboxed run work"

    def sandboxed(
        self, argv: list[str], env: dict[str, str], *, only: tuple[str, ...] | None,
        loosening: Loosening | None = None,
    ) -> tuple[bytes, int, RunRecord]:  # fmt: skip
        """One real run of the sandbox; its output and exit code (and the record vmsbx kept)."""
        with tempfile.TemporaryDirectory(prefix="vmsbx-verify-") as work:
            project = Path(work)
            for name in ("attempts.py",):
                (project / name).write_bytes((data_dir() / "provision" / "verify" / name).read_bytes())
            if only is not None:
                env = {**env, "VERIFY_ONLY": " ".join(only)}
            adjust = (lambda request: loosen_request(request, loosening)) if loosening else None
            with _planted_in_environment("ANTHROPIC_API_KEY", self.canary):
                record, guest = lifecycle.start(
                    self.settings, argv, project=project, tty=False, env=env, adjust=adjust
                )
            out, err = io.BytesIO(), io.BytesIO()
            try:
                # A dropped stream is fine: the record below says how the run ended.
                with contextlib.suppress(TransportError):
                    guest.attach(record.id, stdin=b"", stdout=out, stderr=err)
            except KeyboardInterrupt:
                guest.stop(record.id)
                lifecycle.finish(record, guest, interrupted=True)
                raise
            code = lifecycle.finish(record, guest)
        return out.getvalue(), code, record

    def attack(
        self, *, only: tuple[str, ...] | None, loosening: Loosening | None
    ) -> tuple[dict[str, Observation], RunFacts, str]:
        what = f"with {loosening.name} loosened" if loosening else "inside a real run of the sandbox"
        self.progress(f"attempts {what}")
        healthy_before, _ = (True, "") if only is not None else self.healthy()
        out, code, record = self.sandboxed(
            ["python3", "attempts.py", "run"], self.env("attack", self.token), only=only, loosening=loosening
        )
        inside = merge_aftermath(parse(out), self.aftermath(self.token))
        if only is None:
            self.progress("checking that the guest and vmsbx are healthy")
            healthy_after, detail = self.healthy()
        else:
            healthy_after, detail = True, ""
        resources = record.resources
        facts = RunFacts(
            exit_code=code,
            reason=record.reason or "",
            oom_kills=resources.oom_kills if resources else 0,
            memory_peak=resources.memory_peak if resources else None,
            memory_max=self.settings.sandbox.memory_max,
            healthy_before=healthy_before,
            healthy_after=healthy_after,
            health_detail=detail,
        )
        return inside, facts, record.id


@contextlib.contextmanager
def _planted_in_environment(name: str, value: str) -> Iterator[None]:
    """The canary in this (the launching) process's environment: a launch that forwarded the
    host's environment into the run would hand it to the attempts."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def run_verify(settings: Settings, *, progress: Progress) -> VerifyReport:
    """The control, then every attempt in one sandboxed run, judged."""
    started = time.monotonic()
    session = _Session(settings, progress)
    with session.prepared():
        control = session.control()
        inside, facts, run_id = session.attack(only=None, loosening=None)
    return VerifyReport(
        vm=session.vm,
        sandbox=settings.sandbox.mode,
        network=settings.sandbox.network,
        run_id=run_id,
        seconds=round(time.monotonic() - started, 1),
        results=judge(inside, control, facts),
    )


def run_self_test(
    settings: Settings, loosenings: tuple[Loosening, ...], *, progress: Progress
) -> list[SelfTestResult]:
    """Take one wall down at a time; the attempts that wall stops must then be reported FAIL."""
    session = _Session(settings, progress)
    outcomes = []
    with session.prepared():
        control = session.control(only=tuple(sorted({n for lo in loosenings for n in lo.catches})))
        for loosening in loosenings:
            inside, facts, _ = session.attack(only=loosening.catches, loosening=loosening)
            results = {r.attempt: r for r in judge(inside, control, facts)}
            failing = [name for name in loosening.catches if results[name].verdict == "FAIL"]
            outcomes.append(
                SelfTestResult(
                    loosening=loosening.name,
                    removes=loosening.removes,
                    must_fail=list(loosening.catches),
                    reported_failing=failing,
                    caught=failing == list(loosening.catches),
                )
            )
    return outcomes
