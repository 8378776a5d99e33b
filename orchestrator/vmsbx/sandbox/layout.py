"""Where one run lives in the guest. Shared by the host renderers and the guest launcher.

  /var/lib/vmsbx/runs/<id>/            root-only (0700): workspace image, result, transcript copy
  /var/lib/vmsbx/runs/<id>/tmp         per-run tmpfs (size-capped), bound over /tmp and /var/tmp;
                                       holds the spec (root-owned, read-only to the run), the
                                       holder's socket and transcript, and the run's HOME
  /var/lib/private/vmsbx-ws-<id>       the workspace image mounted here; systemd's
                                       StateDirectory= hands it to the run's dynamic user

Everything a run can write lands on one of its two size-capped filesystems (workspace image,
tmpfs): no RuntimeDirectory= or LogsDirectory=, which would let it fill /run or the guest disk.
"""

from __future__ import annotations

import re
import secrets

from pydantic import BaseModel, ConfigDict, Field

GUEST_LIB = "/usr/local/lib/vmsbx"
RUNS_ROOT = "/var/lib/vmsbx/runs"
# Keep in step with the launcher's PROJECTS: each project's mirror is <root>/<key>/mnt.
PROJECTS_ROOT = "/var/lib/vmsbx/projects"
_RUN_ID = re.compile(r"^[a-z0-9]{12}$")
# Host services a run may reach, and the loopback port each has inside the run's own network
# namespace (a small forwarder there leads to the bridge socket).
BRIDGES = {"relay": 8787, "proxy": 8788, "socks": 8789}


def new_run_id() -> str:
    return secrets.token_hex(6)


def is_run_id(value: str) -> bool:
    return bool(_RUN_ID.fullmatch(value))


class RunLayout(BaseModel):
    """Names and paths of one run, derived from its id alone."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    run_id: str = Field(pattern=_RUN_ID.pattern, description="12 lowercase hex characters.")

    @property
    def unit(self) -> str:
        return f"vmsbx-run-{self.run_id}.service"

    @property
    def run_dir(self) -> str:
        return f"{RUNS_ROOT}/{self.run_id}"

    @property
    def started_stamp(self) -> str:
        """Written by root after systemd's chown of the workspace, before the run's first
        process: the unit's invocation ID, and by its mtime the time of that moment."""
        return f"{self.run_dir}/started"

    @property
    def tmp_dir(self) -> str:
        return f"{self.run_dir}/tmp"

    @property
    def state_name(self) -> str:
        """StateDirectory= name of the workspace."""
        return f"vmsbx-ws-{self.run_id}"

    @property
    def workspace(self) -> str:
        """The workspace as the run sees it (systemd mode)."""
        return f"/var/lib/{self.state_name}"

    @property
    def workspace_mount(self) -> str:
        """Where the launcher mounts the workspace image (the real path behind the symlink)."""
        return f"/var/lib/private/{self.state_name}"

    @property
    def holder_dir(self) -> str:
        """The holder's private directory, as seen inside the run."""
        return "/tmp/.vmsbx"

    @property
    def holder_dir_outside(self) -> str:
        return f"{self.tmp_dir}/.vmsbx"

    @property
    def spec_inside(self) -> str:
        return "/tmp/.vmsbx-spec.json"

    @property
    def spec_outside(self) -> str:
        return f"{self.tmp_dir}/.vmsbx-spec.json"

    @property
    def home(self) -> str:
        """A fresh HOME per run, on the run's tmpfs."""
        return "/tmp/.vmsbx-home"

    def bridge_socket_inside(self, name: str) -> str:
        """A host service (the API relay, the egress proxy) as the run reaches it: a Unix
        socket on the run's tmpfs, owned by root (the run cannot replace it), listened on by a
        root forwarder outside the sandbox that leads to the SSH reverse tunnel."""
        if name not in BRIDGES:
            raise ValueError(f"unknown bridge {name!r}")
        return f"/tmp/.vmsbx-{name}.sock"

    def bridge_unit(self, name: str) -> str:
        if name not in BRIDGES:
            raise ValueError(f"unknown bridge {name!r}")
        return f"vmsbx-bridge-{self.run_id}-{name}.service"
