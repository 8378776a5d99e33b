"""The lima provider: a VM run by Lima (`limactl`), the default on macOS.

Each VM is a Lima instance `vmsbx-<vm>` created from `vm-templates/lima/vmsbx.yaml` (no mounts,
no port forwarding, plain mode), booting vmsbx's own Debian image (lima_image.py), plus a
provision script that installs the SSH host key vmsbx generated and pinned, and vmsbx's client
key for root. vmsbx's own directory holds:
  vm.json       the record (provider, Lima instance name, sizes)
  keys/         host key and client key (vmsbx's, never Lima's)
  known_hosts   the pinned host key, alias vmsbx-<vm>
  lima.yaml     the rendered instance file handed to `limactl create`

From Lima's `ssh.config` vmsbx reads only where the guest's sshd is (Hostname, Port); that file
also says `StrictHostKeyChecking no` and `UserKnownHostsFile /dev/null`, which vmsbx never takes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.config.models import VMSettings
from vmsbx.errors import ProviderError, ToolMissing, VMNotRunning
from vmsbx.paths import data_dir, ensure_private_dir, vm_dir, write_private
from vmsbx.providers import lima_argv as argv
from vmsbx.providers.base import ProbeResult, ProviderFeatures, VMState
from vmsbx.providers.guest_setup import render_stock_sshd_setup
from vmsbx.providers.guestkeys import client_key_file, create_vm_keys, host_key_alias, now_iso
from vmsbx.providers.hosttool import ToolResult, format_version, parse_version, run_tool
from vmsbx.providers.lima_image import image_note, resolve_lima_image
from vmsbx.providers.lima_ssh_config import parse_lima_ssh_config
from vmsbx.providers.lima_template import render_lima_yaml
from vmsbx.sshinfo import SSHInfo
from vmsbx.textsafe import strip_control

MIN_VERSION = (1, 2, 0)  # --mount-none / plain-mode fixes; older Lima mounts /tmp/lima writable
_INSTALL_HINT = (
    "brew install lima" if sys.platform == "darwin" else "see https://lima-vm.io/docs/installation/"
)
_QUICK = 120.0
_STATES = {
    "Running": VMState.RUNNING,
    "Stopped": VMState.STOPPED,
    "Broken": VMState.BROKEN,
    "Installing": VMState.STARTING,
    "Uninitialized": VMState.STARTING,
}


class LimaVMRecord(BaseModel):
    """vm.json of a Lima-backed VM."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    provider: str = "lima"
    instance: str = Field(description="The Lima instance name.")
    cpus: int
    memory_bytes: int
    disk_bytes: int
    created_at: str


class LimaInstance(BaseModel):
    """The fields vmsbx reads from one `limactl list --json` line (the rest are ignored)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)
    name: str
    status: str = ""
    dir: str = ""
    ssh_config_file: str = Field(default="", alias="sshConfigFile")
    ssh_local_port: int = Field(default=0, alias="sshLocalPort")


def parse_list_json(stdout: bytes) -> list[LimaInstance]:
    """`limactl list --json` prints one JSON object per line (JSON Lines), not an array."""
    instances = []
    for line in stdout.decode(errors="replace").splitlines():
        if line.strip():
            instances.append(LimaInstance.model_validate(json.loads(line)))
    return instances


class LimaProvider:
    """VMs as Lima instances (QEMU or Apple's Virtualization.framework underneath)."""

    name = "lima"
    features = ProviderFeatures(create=True, forced_stop=True, reset=False, restricted_network=False)

    def __init__(self, settings: VMSettings, *, progress: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._progress = progress or (lambda _msg: None)

    # -- probing ---------------------------------------------------------------------------

    def probe(self) -> ProbeResult:
        """Report whether limactl is installed, new enough and willing to run; never raises."""
        if shutil.which(argv.LIMACTL) is None:
            return ProbeResult(
                provider=self.name, usable=False, missing=(argv.LIMACTL,), install_hint=_INSTALL_HINT
            )
        try:
            result = run_tool(argv.render_version_argv(), timeout=30, install_hint=_INSTALL_HINT)
        except (ToolMissing, ProviderError) as exc:
            return ProbeResult(
                provider=self.name, usable=False, missing=(argv.LIMACTL,), notes=(exc.message,)
            )
        if _refused_root(result):
            return ProbeResult(provider=self.name, usable=False, notes=(_ROOT_MESSAGE,))
        version = parse_version(result.stdout.decode(errors="replace"))
        if version is None or version < MIN_VERSION:
            shown = format_version(version) if version else "unknown"
            return ProbeResult(
                provider=self.name, usable=False, version=shown,
                missing=(f"limactl >= {format_version(MIN_VERSION)}",), install_hint="brew upgrade lima",
            )  # fmt: skip
        note = image_note(self._settings.image, self._settings.lima_image)
        return ProbeResult(provider=self.name, usable=True, version=format_version(version), notes=(note,))

    def _require_usable(self) -> None:
        result = self.probe()
        if result.usable:
            return
        if result.notes and result.notes[0] == _ROOT_MESSAGE:
            raise ProviderError(_ROOT_MESSAGE, hint="run vmsbx as your own user, without sudo")
        if result.version is not None:
            raise ToolMissing(
                f"Lima {result.version} is too old: vmsbx needs {format_version(MIN_VERSION)} or newer "
                "(earlier versions cannot turn every host mount off)",
                hint=result.install_hint,
            )
        raise ToolMissing("the lima provider needs limactl, which is not installed", hint=result.install_hint)

    def _limactl(self, command: list[str], *, timeout: float = _QUICK) -> ToolResult:
        result = run_tool(command, timeout=timeout, install_hint=_INSTALL_HINT)
        if _refused_root(result):
            raise ProviderError(_ROOT_MESSAGE, hint="run vmsbx as your own user, without sudo")
        return result

    # -- state -----------------------------------------------------------------------------

    def _record(self, vm: str) -> LimaVMRecord | None:
        path = vm_dir(vm) / "vm.json"
        if not path.is_file():
            return None
        return LimaVMRecord.model_validate_json(path.read_text())

    def _instance(self, vm: str) -> LimaInstance | None:
        """The instance as Lima lists it, or None when Lima does not know it."""
        result = self._limactl(argv.render_list_argv(argv.instance_name(vm)))
        if not result.ok:
            if b"unmatched instances" in result.stderr or b"No instance matching" in result.stderr:
                return None
            raise ProviderError(
                f"limactl list failed: {result.message}", hint="run `limactl list` to see why"
            )
        wanted = argv.instance_name(vm)
        return next((inst for inst in parse_list_json(result.stdout) if inst.name == wanted), None)

    def state(self, vm: str) -> VMState:
        """Return the VM's current state; ABSENT when vmsbx or Lima does not know it."""
        if self._record(vm) is None:
            return VMState.ABSENT
        instance = self._instance(vm)
        if instance is None:
            return VMState.ABSENT
        return _STATES.get(instance.status, VMState.BROKEN)

    # -- lifecycle -------------------------------------------------------------------------

    def create(self, vm: str) -> None:
        """Create the instance from vmsbx's template, not started. MUST be a no-op when it exists."""
        self._require_usable()
        directory = vm_dir(vm)
        record = self._record(vm)
        if record is not None and self._instance(vm) is not None:
            return
        ensure_private_dir(directory)
        keys = create_vm_keys(directory, vm)
        image = resolve_lima_image(self._settings.image, self._settings.lima_image, self._progress)
        template = (data_dir() / "vm-templates" / "lima" / "vmsbx.yaml").read_text()
        rendered = render_lima_yaml(
            template,
            image=image,
            cpus=self._settings.cpus,
            memory_bytes=self._settings.memory,
            disk_bytes=self._settings.disk,
            setup_script=render_stock_sshd_setup(keys),
        )
        instance_file = directory / "lima.yaml"
        instance_file.write_text(rendered)
        instance_file.chmod(0o600)  # it carries the guest's host private key
        self._progress(f"creating Lima instance {argv.instance_name(vm)}")
        result = self._limactl(
            argv.render_create_argv(argv.instance_name(vm), instance_file),
            timeout=self._settings.boot_timeout,
        )
        if not result.ok and "already exists" not in result.message:
            raise ProviderError(
                f"limactl create failed: {_last_fatal(result)}",
                hint="run `limactl list` and read the message above",
            )
        new = LimaVMRecord(
            name=vm,
            instance=argv.instance_name(vm),
            cpus=self._settings.cpus,
            memory_bytes=self._settings.memory,
            disk_bytes=self._settings.disk,
            created_at=now_iso(),
        )
        _write_atomic(directory / "vm.json", new.model_dump_json(indent=2))

    def start(self, vm: str) -> None:
        """Boot the instance. MUST be a no-op when it is already running.

        A `limactl start` that times out exits 1 but leaves the VM booting; vmsbx then looks at
        the state instead of reporting failure, and the SSH wait decides.
        """
        current = self.state(vm)
        if current is VMState.RUNNING:
            return
        if current is VMState.ABSENT:
            # Never `limactl start NAME` for a missing instance: Lima would create one from its
            # default template (home folder mounted).
            raise ProviderError(
                f"the Lima instance {argv.instance_name(vm)} does not exist",
                hint=f"`vmsbx up --name {vm}` creates it",
            )
        self._progress(f"starting Lima instance {argv.instance_name(vm)}")
        timeout = int(self._settings.boot_timeout)
        result = self._limactl(argv.render_start_argv(argv.instance_name(vm), timeout), timeout=timeout + 60)
        if result.ok:
            return
        if self.state(vm) in (VMState.RUNNING, VMState.STARTING):
            self._progress("limactl gave up waiting, but the VM is still booting")
            return
        raise ProviderError(
            f"limactl start failed: {_last_fatal(result)}",
            hint=f"see {Path(self._instance_dir(vm)) / 'ha.stderr.log'}",
        )

    def stop(self, vm: str, *, force: bool = False) -> None:
        """Shut the instance down (SIGKILL with `force`). MUST be a no-op when stopped or absent."""
        if self._record(vm) is None:
            return
        instance = self._instance(vm)
        if instance is None or (instance.status != "Running" and not force):
            return
        result = self._limactl(argv.render_stop_argv(instance.name, force=force), timeout=420)
        if not result.ok and self.state(vm) is not VMState.STOPPED:
            raise ProviderError(f"limactl stop failed: {_last_fatal(result)}", hint="`vmsbx stop --force`")

    def destroy(self, vm: str) -> None:
        """Delete the instance and vmsbx's directory. MUST succeed when it is already gone."""
        if self._record(vm) is not None:
            result = self._limactl(argv.render_delete_argv(argv.instance_name(vm)), timeout=300)
            if not result.ok:
                raise ProviderError(
                    f"limactl delete failed: {_last_fatal(result)}", hint="run `limactl list`"
                )
        shutil.rmtree(vm_dir(vm), ignore_errors=True)

    def ssh_info(self, vm: str) -> SSHInfo:
        """Where the running guest's sshd is (from Lima's ssh.config), with vmsbx's pinned key."""
        instance = self._instance(vm) if self._record(vm) is not None else None
        if instance is None or instance.status != "Running":
            raise VMNotRunning(f"VM {vm!r} is not running", hint=f"start it with `vmsbx up --name {vm}`")
        config_path = Path(instance.ssh_config_file or Path(instance.dir) / "ssh.config")
        try:
            endpoint = parse_lima_ssh_config(config_path.read_text(), f"lima-{instance.name}")
        except OSError as exc:
            raise ProviderError(
                f"cannot read Lima's ssh.config for {instance.name}: {exc}",
                hint="`vmsbx stop` then `vmsbx up`",
            ) from exc
        directory = vm_dir(vm)
        return SSHInfo(
            host=endpoint.hostname,
            port=endpoint.port,
            user="root",  # vmsbx's key is authorized for root; Lima's user and key are not used
            key_file=client_key_file(directory),
            known_hosts=directory / "known_hosts",
            host_key_alias=host_key_alias(vm),
        )

    def serial_log_tail(self, vm: str, lines: int = 40) -> str:
        """The last lines of the instance's serial console ('' if none)."""
        try:
            directory = Path(self._instance_dir(vm))
        except Exception:
            return ""
        for name in ("serial.log", "serialv.log", "serialp.log"):
            path = directory / name
            if path.is_file():
                text = strip_control(path.read_bytes()[-65536:].decode(errors="replace"))
                return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
        return ""

    def _instance_dir(self, vm: str) -> str:
        instance = self._instance(vm)
        if instance is not None and instance.dir:
            return instance.dir
        home = os.environ.get("LIMA_HOME") or str(Path.home() / ".lima")
        return str(Path(home) / argv.instance_name(vm))


_ROOT_MESSAGE = "Lima refuses to run as root (limactl: must not run as the root user)"


def _refused_root(result: ToolResult) -> bool:
    return not result.ok and b"must not run as the root user" in result.stderr


def _last_fatal(result: ToolResult) -> str:
    """The message of Lima's last `level=fatal msg="…"` line, or its whole stderr."""
    for line in reversed(result.message.splitlines()):
        if "level=fatal" in line and "msg=" in line:
            raw = line.split("msg=", 1)[1]
            try:
                return str(json.loads(raw)) if raw.startswith('"') else raw
            except ValueError:
                return raw
    return result.message or f"exit {result.returncode}"


def _write_atomic(path: Path, text: str) -> None:
    write_private(path, text)
