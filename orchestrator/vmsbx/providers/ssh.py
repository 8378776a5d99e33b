"""The ssh provider: an existing Linux host with systemd that the user names (host, user, key).

vmsbx neither creates nor destroys such a host: `create` records the target and pins the host
key the user gave (never one learned on first connection), `destroy` forgets it, `stop` leaves
the host alone. The walls are then checked like any guest's: systemd as PID 1 and cgroup v2, or
vmsbx refuses to go on. Login must be root (or a user whose key root accepts): the sandbox
starts transient systemd units.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.config.models import VMSettings
from vmsbx.errors import ConfigError, VMNotFound
from vmsbx.paths import ensure_private_dir, vm_dir, write_private
from vmsbx.providers.base import ProbeResult, ProviderFeatures, VMState
from vmsbx.providers.guestkeys import host_key_alias, now_iso
from vmsbx.sshinfo import SSHInfo
from vmsbx.sshkeys import write_known_hosts


class SSHHostRecord(BaseModel):
    """vm.json of an existing host: where it is and how vmsbx logs in."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    provider: str = "ssh"
    host: str = Field(description="Address or name of the host.")
    port: int = Field(ge=1, le=65535)
    user: str
    key_file: str = Field(description="The private key vmsbx logs in with (the user's choice).")
    created_at: str


class SSHHostProvider:
    """A host vmsbx does not own: verify and use, nothing else."""

    name = "ssh"
    features = ProviderFeatures(create=False, forced_stop=False, reset=False, restricted_network=False)

    def __init__(self, settings: VMSettings, *, progress: Callable[[str], None] | None = None) -> None:
        self._settings = settings

    def probe(self) -> ProbeResult:
        """Usable whenever a target is configured (vmsbx talks SSH itself); never raises."""
        missing = [] if self._settings.ssh_host else ["vm.ssh_host"]
        if not self._settings.ssh_key:
            missing.append("vm.ssh_key")
        if not self._settings.ssh_host_key:
            missing.append("vm.ssh_host_key")
        return ProbeResult(
            provider=self.name,
            usable=not missing,
            missing=tuple(missing),
            install_hint="set vm.ssh_host, vm.ssh_key and vm.ssh_host_key in your user config"
            if missing
            else None,
            notes=("for an existing Linux host with systemd; vmsbx never creates or deletes it",),
        )

    def _record(self, vm: str) -> SSHHostRecord | None:
        path = vm_dir(vm) / "vm.json"
        return SSHHostRecord.model_validate_json(path.read_text()) if path.is_file() else None

    def state(self, vm: str) -> VMState:
        """RUNNING once recorded (a host vmsbx does not run is up as far as it knows; the SSH
        wait tells otherwise), ABSENT before."""
        return VMState.RUNNING if self._record(vm) is not None else VMState.ABSENT

    def create(self, vm: str) -> None:
        """Record the target and pin its host key. MUST be a no-op when recorded."""
        if self._record(vm) is not None:
            return
        settings = self._settings
        if not (settings.ssh_host and settings.ssh_key and settings.ssh_host_key):
            raise ConfigError(
                "the ssh provider needs the host, a key and the host's public key",
                hint="set vm.ssh_host, vm.ssh_key (a private key file) and vm.ssh_host_key (the line "
                "in the host's /etc/ssh/ssh_host_ed25519_key.pub) in your user config, or the "
                "VMSBX_VM_SSH_* variables",
            )
        key_file = Path(settings.ssh_key).expanduser()
        if not key_file.is_file():
            raise ConfigError(
                f"vm.ssh_key {key_file} does not exist", hint="give the path of a private key file"
            )
        directory = ensure_private_dir(vm_dir(vm))
        try:
            write_known_hosts(directory / "known_hosts", host_key_alias(vm), settings.ssh_host_key)
            record = SSHHostRecord(
                name=vm, host=settings.ssh_host, port=settings.ssh_port, user=settings.ssh_user,
                key_file=str(key_file), created_at=now_iso(),
            )  # fmt: skip
            write_private(directory / "vm.json", record.model_dump_json(indent=2))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def start(self, vm: str) -> None:
        """Nothing to boot: the host runs on its own. MUST be a no-op (it always is)."""
        if self._record(vm) is None:
            raise VMNotFound(f"VM {vm!r} is not recorded", hint=f"`vmsbx up --provider ssh --name {vm}`")

    def stop(self, vm: str, *, force: bool = False) -> None:
        """vmsbx never shuts down a host it does not own: a no-op."""

    def destroy(self, vm: str) -> None:
        """Forget the host (its record and pin); the host itself is untouched."""
        shutil.rmtree(vm_dir(vm), ignore_errors=True)

    def ssh_info(self, vm: str) -> SSHInfo:
        record = self._record(vm)
        if record is None:
            raise VMNotFound(f"VM {vm!r} is not recorded", hint=f"`vmsbx up --provider ssh --name {vm}`")
        directory = vm_dir(vm)
        return SSHInfo(
            host=record.host,
            port=record.port,
            user=record.user,
            key_file=Path(record.key_file),
            known_hosts=directory / "known_hosts",
            host_key_alias=host_key_alias(vm),
        )

    def serial_log_tail(self, vm: str, lines: int = 40) -> str:
        """No console of a host vmsbx does not run: ''."""
        return ""
