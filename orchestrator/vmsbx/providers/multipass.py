"""The multipass provider: an Ubuntu LTS VM run by Canonical's Multipass (macOS, Windows, Linux).

Each VM is an instance `vmsbx-<vm>` (never `primary`, which mounts the home folder), launched
with the user-data of `vm-templates/multipass/cloud-init.yaml` plus vmsbx's pinned host key and
client key. vmsbx connects as root to `ipv4[0]:22` from `multipass info --format json`.
Exit codes: 2 the command failed (e.g. no such instance), 3 the daemon is unreachable, 5 the
client's --timeout fired (the instance keeps booting: vmsbx polls it instead of failing).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.config.models import VMSettings
from vmsbx.errors import BootTimeout, ProviderError, ToolMissing, VMNotRunning
from vmsbx.paths import data_dir, ensure_private_dir, vm_dir, write_private
from vmsbx.providers import multipass_argv as argv
from vmsbx.providers.base import ProbeResult, ProviderFeatures, VMState
from vmsbx.providers.guest_setup import sshd_drop_in
from vmsbx.providers.guestkeys import client_key_file, create_vm_keys, host_key_alias, now_iso
from vmsbx.providers.hosttool import ToolResult, format_version, parse_version, run_tool
from vmsbx.providers.multipass_template import render_user_data
from vmsbx.sshinfo import SSHInfo

MIN_VERSION = (1, 7, 0)  # client-side --timeout with its own exit code 5
IMAGE = "24.04"  # Ubuntu LTS: systemd 255
EXIT_FAILED, EXIT_DAEMON, EXIT_TIMEOUT = 2, 3, 5
_INSTALL_HINT = {
    "darwin": "brew install --cask multipass",
    "win32": "winget install Canonical.Multipass",
}.get(sys.platform, "sudo snap install multipass")
_DAEMON_HINT = {
    "darwin": "start Multipass.app (or `sudo launchctl kickstart -k system/com.canonical.multipassd`)",
    "win32": "start the Multipass service (`Restart-Service Multipass` in an admin PowerShell)",
}.get(sys.platform, "`sudo snap restart multipass`, and check you are in the group that owns its socket")
_STATES = {
    "Running": VMState.RUNNING,
    "Stopped": VMState.STOPPED,
    "Suspended": VMState.STOPPED,
    "Starting": VMState.STARTING,
    "Restarting": VMState.STARTING,
    "Delayed Shutdown": VMState.STOPPING,
    "Suspending": VMState.STOPPING,
    # A deleted but not purged instance still holds its name; vmsbx purges and relaunches it.
    "Deleted": VMState.ABSENT,
}
_POLL_SECONDS = 1.0


class MultipassVMRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    provider: str = "multipass"
    instance: str
    image: str
    cpus: int
    memory_mib: int
    disk_gib: int
    created_at: str


class MultipassInfo(BaseModel):
    """The fields vmsbx reads from `info --format json` (types vary between versions)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    state: str
    ipv4: list[str] = Field(default_factory=list)
    release: str = ""


def parse_info_json(stdout: bytes, instance: str) -> MultipassInfo:
    try:
        document: Any = json.loads(stdout)
        return MultipassInfo.model_validate(document["info"][instance])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProviderError(
            f"cannot read `multipass info` for {instance}: {exc}", hint="run `multipass info` by hand"
        ) from exc


class MultipassProvider:
    """VMs as Multipass instances."""

    name = "multipass"
    features = ProviderFeatures(create=True, forced_stop=True, reset=False, restricted_network=False)

    def __init__(self, settings: VMSettings, *, progress: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._progress = progress or (lambda _msg: None)

    # -- probing ---------------------------------------------------------------------------

    def probe(self) -> ProbeResult:
        """Report whether the client is installed, new enough and its daemon answers; never raises."""
        if shutil.which(argv.MULTIPASS) is None:
            return ProbeResult(
                provider=self.name, usable=False, missing=(argv.MULTIPASS,), install_hint=_INSTALL_HINT
            )
        try:
            result = run_tool(argv.render_version_argv(), timeout=30, install_hint=_INSTALL_HINT)
        except (ToolMissing, ProviderError) as exc:
            return ProbeResult(provider=self.name, usable=False, notes=(exc.message,))
        version = None
        try:
            document = json.loads(result.stdout)
            version = parse_version(str(document.get("multipass", "")))
            daemon = document.get("multipassd")
        except ValueError:
            version, daemon = parse_version(result.message), None
        if version is None or version < MIN_VERSION:
            return ProbeResult(
                provider=self.name, usable=False, version=format_version(version) if version else None,
                missing=(f"multipass >= {format_version(MIN_VERSION)}",), install_hint=_INSTALL_HINT,
            )  # fmt: skip
        if not daemon:
            return ProbeResult(
                provider=self.name, usable=False, version=format_version(version),
                notes=(f"the multipass daemon does not answer: {_DAEMON_HINT}",),
            )  # fmt: skip
        return ProbeResult(provider=self.name, usable=True, version=format_version(version))

    def _multipass(
        self, command: list[str], *, timeout: float = 120.0, input: bytes | None = None
    ) -> ToolResult:
        result = run_tool(command, timeout=timeout, install_hint=_INSTALL_HINT, input=input)
        if result.returncode == EXIT_DAEMON:
            raise ProviderError(f"the multipass daemon is unreachable: {result.message}", hint=_DAEMON_HINT)
        return result

    # -- state -----------------------------------------------------------------------------

    def _record(self, vm: str) -> MultipassVMRecord | None:
        path = vm_dir(vm) / "vm.json"
        return MultipassVMRecord.model_validate_json(path.read_text()) if path.is_file() else None

    def _info(self, vm: str) -> MultipassInfo | None:
        instance = argv.instance_name(vm)
        result = self._multipass(argv.render_info_argv(instance))
        if result.returncode == EXIT_FAILED and "does not exist" in result.message:
            return None
        if not result.ok:
            raise ProviderError(
                f"multipass info failed: {result.message}", hint=f"`multipass info {instance}`"
            )
        return parse_info_json(result.stdout, instance)

    def state(self, vm: str) -> VMState:
        """Return the VM's state; ABSENT when it does not exist (or is deleted, not yet purged)."""
        if self._record(vm) is None:
            return VMState.ABSENT
        info = self._info(vm)
        if info is None:
            return VMState.ABSENT
        return _STATES.get(info.state, VMState.BROKEN)

    # -- lifecycle -------------------------------------------------------------------------

    def create(self, vm: str) -> None:
        """Launch the instance (Multipass cannot create without booting). MUST be a no-op when it exists."""
        usable = self.probe()
        if not usable.usable:
            if usable.notes:
                raise ProviderError(usable.notes[0], hint=_DAEMON_HINT)
            raise ToolMissing(
                f"the multipass provider needs {', '.join(usable.missing) or 'multipass'}", hint=_INSTALL_HINT
            )
        instance = argv.instance_name(vm)
        info = self._info(vm)
        if info is not None and info.state != "Deleted":
            if self._record(vm) is None:
                raise ProviderError(
                    f"a Multipass instance {instance} exists that vmsbx did not create",
                    hint=f"`multipass delete --purge {instance}` if it is yours to remove, "
                    "or use another --name",
                )
            return
        if info is not None:  # deleted, not purged: the name is still taken
            self._multipass(argv.render_delete_argv(instance))
        directory = ensure_private_dir(vm_dir(vm))
        keys = create_vm_keys(directory, vm)
        template = (data_dir() / "vm-templates" / "multipass" / "cloud-init.yaml").read_text()
        user_data = render_user_data(template, keys, sshd_drop_in=sshd_drop_in())
        record = MultipassVMRecord(
            name=vm, instance=instance, image=IMAGE, cpus=self._settings.cpus,
            memory_mib=self._settings.memory // (1024 * 1024),
            disk_gib=max(1, self._settings.disk // (1024**3)), created_at=now_iso(),
        )  # fmt: skip
        write_private(directory / "vm.json", record.model_dump_json(indent=2))
        timeout = int(self._settings.boot_timeout)
        self._progress(f"launching Multipass instance {instance} (Ubuntu {IMAGE})")
        result = self._multipass(
            argv.render_launch_argv(
                instance, image=IMAGE, cpus=record.cpus, memory_mib=record.memory_mib,
                disk_gib=record.disk_gib, timeout_seconds=timeout,
            ),
            timeout=timeout + 60,
            input=user_data.encode(),
        )  # fmt: skip
        if result.ok:
            return
        if result.returncode == EXIT_TIMEOUT:
            self._progress("multipass stopped waiting; the instance is still initialising")
            self._wait_running(vm, timeout)
            return
        if "already exists" in result.message:
            return
        raise ProviderError(f"multipass launch failed: {result.message}", hint="read the message above")

    def _wait_running(self, vm: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "unknown"
        while time.monotonic() < deadline:
            info = self._info(vm)
            last = info.state if info else "absent"
            if info is not None and info.state == "Running":
                return
            if info is None or info.state in ("Stopped", "Deleted", "Unknown"):
                break
            time.sleep(_POLL_SECONDS)
        raise BootTimeout(
            f"the Multipass instance {argv.instance_name(vm)} did not come up (state: {last})",
            hint=f"`multipass info {argv.instance_name(vm)}`; "
            f"`vmsbx destroy -y --name {vm}` and `vmsbx up` retry",
        )

    def start(self, vm: str) -> None:
        """Boot the instance. MUST be a no-op when it is already running."""
        current = self.state(vm)
        if current is VMState.RUNNING:
            return
        if current is VMState.ABSENT:
            # Never `multipass start` without a name: that launches `primary`, with the home folder.
            raise ProviderError(f"the Multipass instance {argv.instance_name(vm)} does not exist",
                                hint=f"`vmsbx up --name {vm}` creates it")  # fmt: skip
        if current is VMState.STARTING:
            self._wait_running(vm, self._settings.boot_timeout)
            return
        timeout = int(self._settings.boot_timeout)
        result = self._multipass(
            argv.render_start_argv(argv.instance_name(vm), timeout), timeout=timeout + 60
        )
        if result.returncode == EXIT_TIMEOUT:
            self._wait_running(vm, timeout)
        elif not result.ok:
            raise ProviderError(f"multipass start failed: {result.message}", hint="read the message above")

    def stop(self, vm: str, *, force: bool = False) -> None:
        """Shut the instance down. MUST be a no-op when stopped or absent."""
        if self.state(vm) in (VMState.ABSENT, VMState.STOPPED):
            return
        result = self._multipass(argv.render_stop_argv(argv.instance_name(vm), force=force), timeout=300)
        if not result.ok:
            raise ProviderError(f"multipass stop failed: {result.message}", hint="`vmsbx stop --force`")

    def destroy(self, vm: str) -> None:
        """Delete and purge the instance, and vmsbx's directory. MUST succeed when already gone."""
        if self._record(vm) is not None:
            result = self._multipass(argv.render_delete_argv(argv.instance_name(vm)), timeout=300)
            if not result.ok and "does not exist" not in result.message:
                raise ProviderError(f"multipass delete failed: {result.message}", hint="`multipass list`")
        shutil.rmtree(vm_dir(vm), ignore_errors=True)

    def ssh_info(self, vm: str) -> SSHInfo:
        """The instance's management address (ipv4[0]) on port 22, with vmsbx's pinned key."""
        info = self._info(vm) if self._record(vm) is not None else None
        if info is None or info.state != "Running" or not info.ipv4:
            raise VMNotRunning(f"VM {vm!r} is not running", hint=f"start it with `vmsbx up --name {vm}`")
        try:
            address = str(ipaddress.IPv4Address(info.ipv4[0]))
        except ValueError as exc:
            raise ProviderError(
                f"multipass reported a bad address {info.ipv4[0]!r}", hint="`multipass info`"
            ) from exc
        directory = vm_dir(vm)
        return SSHInfo(
            host=address,
            port=22,
            user="root",
            key_file=client_key_file(directory),
            known_hosts=directory / "known_hosts",
            host_key_alias=host_key_alias(vm),
        )

    def serial_log_tail(self, vm: str, lines: int = 40) -> str:
        """Multipass does not expose the console; '' (its daemon log holds boot problems)."""
        return ""
