"""The qemu provider: vmsbx drives QEMU itself on Linux hosts (and in CI).

Each VM is a directory under the state dir (0700):
  vm.json            what the VM was created from (image build, cpus, memory, network, accel)
  disk.qcow2         copy-on-write overlay on the cached base image
  keys/              the VM's own SSH host key and vmsbx's client key (both made by vmsbx)
  known_hosts        the pinned host key, under the alias vmsbx-<name>
  runtime.json       while running: QEMU's pid and the forwarded SSH port
  qmp.sock           QMP control socket (Unix only, never TCP)
  serial.log         the guest console; its tail is shown when boot fails
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.config.models import VMSettings
from vmsbx.errors import ProviderError, ToolMissing, VMNotFound, VMNotRunning
from vmsbx.paths import cache_root, ensure_private_dir, state_root, vm_dir, write_private
from vmsbx.providers import image as images
from vmsbx.providers.accel import choose_accel
from vmsbx.providers.base import ProbeResult, ProviderFeatures, VMState
from vmsbx.providers.qemu_argv import (
    Accel,
    FwCfgItem,
    GuestNetwork,
    QemuLaunch,
    parse_qemu_version,
    render_overlay_argv,
    render_qemu_argv,
)
from vmsbx.providers.qmp import QMPError, qmp_command
from vmsbx.sshinfo import SSHInfo
from vmsbx.sshkeys import generate_keypair, write_known_hosts
from vmsbx.textsafe import strip_control

_log = logging.getLogger("vmsbx.provider.qemu")
QEMU_BINARY = "qemu-system-x86_64"
_INSTALL_HINT = "apt-get install qemu-system-x86 qemu-utils mmdebstrap e2fsprogs openssh-client"
_GRACEFUL_SECONDS = 60.0
_PORT_ATTEMPTS = 3


class QemuVMRecord(BaseModel):
    """vm.json: the decisions made when the VM was created; later starts reuse them."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    provider: str = "qemu"
    image: str = Field(description="Image name (recipe table).")
    image_dir: Path = Field(description="The exact base build the overlay sits on.")
    cpus: int
    memory_mib: int
    disk_size: str
    accel: str = Field(description="auto|kvm|tcg as configured; resolved at each start.")
    network: GuestNetwork
    created_at: str


class QemuRuntime(BaseModel):
    """runtime.json: facts of the current boot."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pid: int
    ssh_port: int
    accel: Accel
    started_at: str


class QemuProvider:
    """VMs as QEMU processes on this (Linux) host, booted from vmsbx's own Debian image."""

    name = "qemu"
    features = ProviderFeatures(create=True, forced_stop=True, reset=True, restricted_network=True)

    def __init__(self, settings: VMSettings, *, progress: images.Progress | None = None) -> None:
        self._settings = settings
        self._progress: images.Progress = progress or (lambda _msg: None)

    # -- probing ---------------------------------------------------------------------------

    def probe(self) -> ProbeResult:
        """Report whether QEMU and the image tools are installed; never raises for a missing tool."""
        tools = [QEMU_BINARY, "qemu-img", "mmdebstrap", "mkfs.ext4", "ssh"]
        missing = tuple(tool for tool in tools if shutil.which(tool) is None)
        version = None
        if QEMU_BINARY not in missing:
            out = subprocess.run([QEMU_BINARY, "--version"], capture_output=True, text=True, check=False)
            version = parse_qemu_version(out.stdout)
        return ProbeResult(
            provider=self.name,
            usable=not missing,
            version=version,
            missing=missing,
            install_hint=_INSTALL_HINT if missing else None,
        )

    def require_tools(self) -> None:
        result = self.probe()
        if not result.usable:
            raise ToolMissing(
                f"the qemu provider needs {', '.join(result.missing)}, which is not installed",
                hint=result.install_hint,
            )

    # -- state -----------------------------------------------------------------------------

    def state(self, vm: str) -> VMState:
        """Return the VM's current state; ABSENT when it does not exist."""
        directory = vm_dir(vm)
        if not (directory / "vm.json").is_file():
            return VMState.ABSENT
        if not (directory / "disk.qcow2").is_file():
            return VMState.BROKEN
        runtime = self._runtime(vm)
        if runtime is not None and _qemu_alive(runtime.pid, directory):
            return VMState.RUNNING
        return VMState.STOPPED

    def record(self, vm: str) -> QemuVMRecord:
        path = vm_dir(vm) / "vm.json"
        if not path.is_file():
            raise VMNotFound(f"VM {vm!r} does not exist", hint=f"create it with `vmsbx up --name {vm}`")
        return QemuVMRecord.model_validate_json(path.read_text())

    def _runtime(self, vm: str) -> QemuRuntime | None:
        path = vm_dir(vm) / "runtime.json"
        if not path.is_file():
            return None
        try:
            return QemuRuntime.model_validate_json(path.read_text())
        except ValueError:
            return None

    # -- lifecycle -------------------------------------------------------------------------

    def create(self, vm: str) -> None:
        """Create the VM (keys, overlay, record), not started. MUST be a no-op when it exists.

        The VM directory appears atomically (built beside it, then renamed), so an interrupted
        create leaves nothing that the next create would mistake for a VM.
        """
        if self.state(vm) is not VMState.ABSENT:
            return
        self.require_tools()
        recipe = images.load_recipe(self._settings.image)
        image = images.ensure_image(recipe, self._progress)
        final = vm_dir(vm)
        parent = ensure_private_dir(final.parent)
        staging = parent / f".{vm}.creating-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        if final.exists():  # a broken leftover without vm.json
            shutil.rmtree(final)
        ensure_private_dir(staging)
        try:
            self._progress("generating SSH keys")
            keys = ensure_private_dir(staging / "keys")
            host_public = generate_keypair(keys / "ssh_host_ed25519_key", f"vmsbx-{vm}-host")
            client_public = generate_keypair(keys / "client_ed25519", f"vmsbx-{vm}-client")
            (staging / "authorized_keys").write_text(client_public + "\n")
            write_known_hosts(staging / "known_hosts", _alias(vm), host_public)
            _run_tool(render_overlay_argv(image.disk, staging / "disk.qcow2", size=self._disk_size()))
            record = QemuVMRecord(
                name=vm,
                image=recipe.name,
                image_dir=image.directory,
                cpus=self._settings.cpus,
                memory_mib=self._settings.memory // (1024 * 1024),
                disk_size=self._disk_size(),
                accel=self._settings.accel,
                network=self._settings.guest_network,
                created_at=_now(),
            )
            write_private(staging / "vm.json", record.model_dump_json(indent=2))
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def start(self, vm: str) -> None:
        """Boot the VM; returns once QEMU runs (SSH may still be coming up).
        MUST be a no-op when it is already running."""
        current = self.state(vm)
        if current is VMState.RUNNING:
            return
        if current is VMState.ABSENT:
            raise VMNotFound(f"VM {vm!r} does not exist", hint=f"create it with `vmsbx up --name {vm}`")
        if current is VMState.BROKEN:
            raise ProviderError(
                f"VM {vm!r} is broken (its disk is missing)",
                hint=f"`vmsbx destroy -y --name {vm}` then `vmsbx up --name {vm}`",
            )
        self.require_tools()
        record = self.record(vm)
        directory = vm_dir(vm)
        kernel, initrd = record.image_dir / "vmlinuz", record.image_dir / "initrd"
        if not (kernel.is_file() and initrd.is_file()):
            raise ProviderError(
                f"VM {vm!r} was made from an image build that is gone ({record.image_dir})",
                hint=f"`vmsbx reset --name {vm}` puts it on the current image",
            )
        accel = choose_accel(record.accel, QEMU_BINARY, kernel, cache_file=cache_root() / "accel-probe")
        self._progress(f"booting {vm} ({accel})")
        last_error = ""
        for _attempt in range(_PORT_ATTEMPTS):
            port = _free_loopback_port()
            launch = QemuLaunch(
                accel=accel,
                cpus=record.cpus,
                memory_mib=record.memory_mib,
                kernel=kernel,
                initrd=initrd,
                disk=directory / "disk.qcow2",
                ssh_port=port,
                network=record.network,
                qmp_socket=directory / "qmp.sock",
                serial_log=directory / "serial.log",
                pid_file=directory / "qemu.pid",
                fw_cfg=(
                    FwCfgItem(
                        name="ssh_host_ed25519_key",
                        path=directory / "keys" / "ssh_host_ed25519_key",
                    ),
                    FwCfgItem(
                        name="ssh_host_ed25519_key.pub",
                        path=directory / "keys" / "ssh_host_ed25519_key.pub",
                    ),
                    FwCfgItem(name="authorized_keys", path=directory / "authorized_keys"),
                ),
            )
            pid, last_error = _launch(launch, directory)
            if pid is not None:
                runtime = QemuRuntime(pid=pid, ssh_port=port, accel=accel, started_at=_now())
                _write_atomic(directory / "runtime.json", runtime.model_dump_json())
                return
            if "host forwarding rule" not in last_error:
                break
        raise ProviderError(
            f"QEMU did not start VM {vm!r}:\n{last_error}",
            hint="run `vmsbx doctor` to check QEMU and acceleration",
        )

    def stop(self, vm: str, *, force: bool = False) -> None:
        """Power the guest off (ACPI, then quit, then kill), or kill it at once with `force`.
        MUST be a no-op when it is stopped or absent."""
        directory = vm_dir(vm)
        runtime = self._runtime(vm)
        if runtime is None or not _qemu_alive(runtime.pid, directory):
            _clear_runtime(directory)
            return
        qmp = directory / "qmp.sock"
        if not force:
            self._progress(f"shutting {vm} down")
            with contextlib.suppress(QMPError):
                qmp_command(qmp, "system_powerdown")
                _wait_exit(runtime.pid, directory, _GRACEFUL_SECONDS)
        if _qemu_alive(runtime.pid, directory):
            with contextlib.suppress(QMPError):
                qmp_command(qmp, "quit")
                _wait_exit(runtime.pid, directory, 5.0)
        if _qemu_alive(runtime.pid, directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(runtime.pid, signal.SIGKILL)
            _wait_exit(runtime.pid, directory, 5.0)
        _clear_runtime(directory)

    def destroy(self, vm: str) -> None:
        """Remove the VM, its disk and its keys. MUST succeed when it is already gone."""
        directory = vm_dir(vm)
        if not directory.exists():
            return
        self.stop(vm, force=True)
        shutil.rmtree(directory)

    def reset(self, vm: str) -> None:
        """Give the VM a fresh overlay of the current base image (keys kept). Stops it first."""
        record = self.record(vm)
        self.stop(vm)
        recipe = images.load_recipe(record.image)
        image = images.ensure_image(recipe, self._progress)
        directory = vm_dir(vm)
        fresh = directory / "disk.qcow2.new"
        fresh.unlink(missing_ok=True)
        _run_tool(render_overlay_argv(image.disk, fresh, size=record.disk_size))
        fresh.rename(directory / "disk.qcow2")
        updated = record.model_copy(update={"image_dir": image.directory})
        _write_atomic(directory / "vm.json", updated.model_dump_json(indent=2))

    def ssh_info(self, vm: str) -> SSHInfo:
        """Connection details of a running VM; raises VMNotRunning otherwise."""
        runtime = self._runtime(vm)
        directory = vm_dir(vm)
        if runtime is None or not _qemu_alive(runtime.pid, directory):
            raise VMNotRunning(f"VM {vm!r} is not running", hint=f"start it with `vmsbx up --name {vm}`")
        return SSHInfo(
            host="127.0.0.1",
            port=runtime.ssh_port,
            user="root",
            key_file=directory / "keys" / "client_ed25519",
            known_hosts=directory / "known_hosts",
            host_key_alias=_alias(vm),
        )

    def serial_log_tail(self, vm: str, lines: int = 40) -> str:
        """The last lines of the guest console, control sequences stripped ('' if none)."""
        path = vm_dir(vm) / "serial.log"
        if not path.is_file():
            return ""
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = strip_control(handle.read().decode(errors="replace"))
        kept = [line for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def alive(self, vm: str) -> bool:
        runtime = self._runtime(vm)
        return runtime is not None and _qemu_alive(runtime.pid, vm_dir(vm))

    def _disk_size(self) -> str:
        return f"{self._settings.disk // (1024 * 1024)}M"


def list_vm_names() -> list[str]:
    """Names of every VM with a complete record, whatever its provider."""
    root = state_root() / "vms"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "vm.json").is_file() and not p.name.startswith("."))


def _alias(vm: str) -> str:
    return f"vmsbx-{vm}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    write_private(path, text)


def _clear_runtime(directory: Path) -> None:
    for leftover in ("runtime.json", "qmp.sock", "qemu.pid"):
        (directory / leftover).unlink(missing_ok=True)


def _run_tool(argv: list[str]) -> None:
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    _log.info(
        "provider command",
        extra={
            "argv": shlex.join(argv),
            "exit_code": result.returncode,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    if result.returncode != 0:
        raise ProviderError(f"{argv[0]} failed: {result.stderr.strip()}", hint="run `vmsbx doctor`")


def _free_loopback_port() -> int:
    # The port is released before QEMU binds it; a lost race shows up as a hostfwd error, retried.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _launch(launch: QemuLaunch, directory: Path) -> tuple[int | None, str]:
    """Start QEMU detached from this process; return (pid, '') or (None, why it failed)."""
    _clear_runtime(directory)
    serial = directory / "serial.log"
    if serial.exists():
        serial.replace(directory / "serial.log.1")
    log_path = directory / "qemu.log"
    _log.info("provider command", extra={"argv": shlex.join(render_qemu_argv(launch)), "detached": True})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            render_qemu_argv(launch),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal must not kill the VM
            close_fds=True,
        )
    deadline = time.monotonic() + 15
    pid_file = directory / "qemu.pid"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, strip_control(log_path.read_text(errors="replace")).strip()
        if pid_file.is_file() and (directory / "qmp.sock").exists():
            return proc.pid, ""
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return None, "QEMU did not come up within 15 s"


def _qemu_alive(pid: int, directory: Path) -> bool:
    """True if `pid` is a live QEMU of this VM (not a recycled pid, not a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child and has exited
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = status.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and str(directory / "disk.qcow2").encode() in cmdline


def _wait_exit(pid: int, directory: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _qemu_alive(pid, directory):
        time.sleep(0.1)
