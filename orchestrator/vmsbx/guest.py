"""Facts about a guest, gathered in one command, and the checks that refuse a guest that
cannot hold vmsbx's second wall (fail closed: never carry on with less isolation)."""

from __future__ import annotations

import io
import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vmsbx.agent.client import AgentClient
from vmsbx.errors import GuestCheckFailed
from vmsbx.paths import data_dir

MIN_SYSTEMD = 247  # DynamicUser + the hardening properties vmsbx renders


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
            hint="use a guest with systemd >= 247 as PID 1 and cgroup v2 (the vmsbx image has both)",
        )
