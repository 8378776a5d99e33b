"""The wsl2 provider: a WSL2 distro on Windows, imported from vmsbx's Debian root filesystem.

WSL2 is a weaker first wall than a VM of one's own: every WSL2 distro shares one utility VM, one
kernel and one network namespace with the others. vmsbx turns off what it can (see
`vm-templates/wsl2/wsl.conf`: no Windows drives, no interop, no Windows PATH, no \\\\wsl$ share)
and gives the distro its own sshd on 127.0.0.1:<port>, which WSL relays to Windows' localhost.

Each VM is a distro `vmsbx-<vm>`. vmsbx's directory holds vm.json, keys/, known_hosts, the
distro's disk (`wsl/`, given to `--import`) and keepalive.pid: a distro stops ~15 s after its
last process, so vmsbx holds one open (`sleep`) while the VM should run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.config.models import VMSettings
from vmsbx.errors import ConfigError, ProviderError, ToolMissing, VMNotRunning
from vmsbx.paths import data_dir, ensure_private_dir, vm_dir, write_private
from vmsbx.providers import wsl2_argv as argv
from vmsbx.providers.base import ProbeResult, ProviderFeatures, VMState
from vmsbx.providers.guest_setup import render_wsl_setup
from vmsbx.providers.guestkeys import client_key_file, create_vm_keys, host_key_alias, now_iso
from vmsbx.providers.hosttool import ToolResult, decode_tool_text, format_version, parse_version, run_tool
from vmsbx.sshinfo import SSHInfo

MIN_VERSION = (0, 67, 6)  # systemd in WSL; WSL_UTF8 came with 0.64
_INSTALL_HINT = "wsl.exe --install --no-distribution (in an administrator PowerShell, then restart Windows)"
# wsl.exe's own failures exit with DWORD -1: -1, or 4294967295 unsigned, or 255 through a POSIX wait.
_WSL_FAILURE_CODES = frozenset({-1, 255, 0xFFFFFFFF})
_ERROR_CODE_RE = re.compile(r"Error code:\s*(\S+)")
_STATES = {
    "Running": VMState.RUNNING,
    "Stopped": VMState.STOPPED,
    "Installing": VMState.STARTING,
    "Converting": VMState.STARTING,
    "Uninstalling": VMState.STOPPING,
    "Exporting": VMState.STOPPING,
}
_BOOT_SECONDS = 60.0


class WslVMRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    provider: str = "wsl2"
    distro: str
    ssh_port: int = Field(ge=1024, le=65535, description="Loopback port of vmsbx's sshd in the distro.")
    rootfs: str = Field(description="The root filesystem tar the distro was imported from.")
    created_at: str


def wsl_error_code(result: ToolResult) -> str | None:
    """The stable part of a wsl.exe failure (`Wsl/Service/WSL_E_DISTRO_NOT_FOUND`); the message
    before it is localized."""
    text = decode_tool_text(result.stdout + result.stderr)
    match = _ERROR_CODE_RE.search(text)
    return match[1] if match else None


def parse_list_verbose(text: str) -> dict[str, tuple[str, str]]:
    """`wsl --list --verbose` rows as {name: (state, version)}. The header is skipped by position
    (its words may be localized); a leading `*` marks the default distro."""
    rows: dict[str, tuple[str, str]] = {}
    for line in text.replace("\r", "").splitlines()[1:]:
        fields = line.lstrip(" *").split()
        if len(fields) >= 3:
            rows[" ".join(fields[:-2])] = (fields[-2], fields[-1])
    return rows


class Wsl2Provider:
    """VMs as WSL2 distros."""

    name = "wsl2"
    features = ProviderFeatures(create=True, forced_stop=True, reset=False, restricted_network=False)

    def __init__(self, settings: VMSettings, *, progress: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._progress = progress or (lambda _msg: None)

    def _wsl(self, command: list[str], *, timeout: float = 120.0, input: bytes | None = None) -> ToolResult:
        return run_tool(command, timeout=timeout, install_hint=_INSTALL_HINT, input=input, env=argv.WSL_ENV)

    # -- probing ---------------------------------------------------------------------------

    def probe(self) -> ProbeResult:
        """Report whether wsl.exe is there and new enough for systemd; never raises."""
        if shutil.which(argv.WSL) is None:
            return ProbeResult(
                provider=self.name, usable=False, missing=(argv.WSL,), install_hint=_INSTALL_HINT
            )
        try:
            result = self._wsl(argv.render_version_argv(), timeout=30)
        except (ToolMissing, ProviderError) as exc:
            return ProbeResult(provider=self.name, usable=False, notes=(exc.message,))
        text = decode_tool_text(result.stdout + result.stderr)
        version = parse_version(text) if result.ok else None
        if version is None or version < MIN_VERSION:
            # The inbox wsl.exe has no --version at all: it is older than systemd support.
            return ProbeResult(
                provider=self.name, usable=False, version=format_version(version) if version else None,
                missing=(f"WSL >= {format_version(MIN_VERSION)} (the Store version)",),
                install_hint="wsl.exe --update", notes=tuple(filter(None, [wsl_error_code(result)])),
            )  # fmt: skip
        return ProbeResult(
            provider=self.name, usable=True, version=format_version(version),
            notes=("WSL2 is a weaker first wall: all distros share one kernel and one network namespace",),
        )  # fmt: skip

    # -- state -----------------------------------------------------------------------------

    def _record(self, vm: str) -> WslVMRecord | None:
        path = vm_dir(vm) / "vm.json"
        return WslVMRecord.model_validate_json(path.read_text()) if path.is_file() else None

    def _distros(self) -> dict[str, tuple[str, str]]:
        result = self._wsl(argv.render_list_verbose_argv())
        if (
            result.returncode in _WSL_FAILURE_CODES
            and wsl_error_code(result) == "Wsl/WSL_E_DEFAULT_DISTRO_NOT_FOUND"
        ):
            return {}  # no distributions at all
        if not result.ok:
            raise _wsl_failure("wsl.exe --list", result)
        return parse_list_verbose(decode_tool_text(result.stdout))

    def _distro_state(self, distro: str) -> str | None:
        return next(
            (state for name, (state, _v) in self._distros().items() if name.lower() == distro.lower()), None
        )

    def state(self, vm: str) -> VMState:
        """Return the VM's state; ABSENT when vmsbx or WSL does not know the distro."""
        record = self._record(vm)
        if record is None:
            return VMState.ABSENT
        raw = self._distro_state(record.distro)
        if raw is None:
            return VMState.ABSENT
        return _STATES.get(raw, VMState.BROKEN)

    # -- lifecycle -------------------------------------------------------------------------

    def create(self, vm: str) -> None:
        """Import the distro, harden it and give it vmsbx's sshd. MUST be a no-op when it exists."""
        usable = self.probe()
        if not usable.usable:
            raise ToolMissing(
                f"the wsl2 provider needs {', '.join(usable.missing) or 'a working wsl.exe'}"
                + (f" ({'; '.join(usable.notes)})" if usable.notes else ""),
                hint=usable.install_hint or _INSTALL_HINT,
            )
        distro = argv.distro_name(vm)
        if self._record(vm) is not None and self._distro_state(distro) is not None:
            return
        rootfs = self._settings.wsl_rootfs
        if rootfs is None:
            raise ConfigError(
                "the wsl2 provider imports vmsbx's Debian root filesystem, and none is configured",
                hint="build it on Linux (`sudo vmsbx image rootfs`) and set vm.wsl_rootfs "
                "(or VMSBX_VM_WSL_ROOTFS) to the .tar file",
            )
        directory = ensure_private_dir(vm_dir(vm))
        keys = create_vm_keys(directory, vm)
        location = directory / "wsl"
        location.mkdir(exist_ok=True)
        self._progress(f"importing WSL distro {distro}")
        result = self._wsl(argv.render_import_argv(distro, location, rootfs), timeout=900)
        if not result.ok and "ALREADY_EXISTS" not in (wsl_error_code(result) or ""):
            raise _wsl_failure("wsl.exe --import", result)
        port = _free_loopback_port()
        root = data_dir() / "vm-templates" / "wsl2"
        script = render_wsl_setup(
            keys,
            wsl_conf=(root / "wsl.conf").read_text(),
            sshd_config=(root / "sshd_config").read_text(),
            sshd_unit=(root / "vmsbx-sshd.service").read_text(),
            port=port,
        )
        self._progress("hardening the distro (wsl.conf, vmsbx's sshd)")
        setup = self._wsl(argv.render_exec_argv(distro, ["sh", "-s"]), input=script.encode(), timeout=300)
        if not setup.ok:
            raise _wsl_failure("setting up the distro", setup)
        # wsl.conf applies only once the distro has fully stopped.
        terminated = self._wsl(argv.render_terminate_argv(distro))
        if not terminated.ok:
            raise _wsl_failure("wsl.exe --terminate", terminated)
        record = WslVMRecord(name=vm, distro=distro, ssh_port=port, rootfs=str(rootfs), created_at=now_iso())
        write_private(directory / "vm.json", record.model_dump_json(indent=2))

    def start(self, vm: str) -> None:
        """Boot the distro and hold it open. MUST be a no-op when it is already running."""
        record = self._record(vm)
        if record is None or self._distro_state(record.distro) is None:
            raise ProviderError(
                f"the WSL distro for VM {vm!r} does not exist", hint=f"`vmsbx up --name {vm}`"
            )
        if self._keepalive_alive(vm) and self.state(vm) is VMState.RUNNING:
            return
        self._start_keepalive(vm, record.distro)
        deadline = time.monotonic() + _BOOT_SECONDS
        while time.monotonic() < deadline:
            if self.state(vm) is VMState.RUNNING:
                return
            time.sleep(0.5)
        raise ProviderError(
            f"the WSL distro {record.distro} did not start", hint="`wsl.exe --list --verbose`"
        )

    def stop(self, vm: str, *, force: bool = False) -> None:
        """Release the distro and terminate it. MUST be a no-op when stopped or absent."""
        record = self._record(vm)
        self._stop_keepalive(vm)
        if record is None or self._distro_state(record.distro) in (None, "Stopped"):
            return
        result = self._wsl(argv.render_terminate_argv(record.distro))
        if not result.ok and wsl_error_code(result) != "Wsl/Service/WSL_E_DISTRO_NOT_FOUND":
            raise _wsl_failure("wsl.exe --terminate", result)

    def destroy(self, vm: str) -> None:
        """Unregister the distro (its disk goes with it) and vmsbx's directory. MUST succeed when gone."""
        record = self._record(vm)
        self._stop_keepalive(vm)
        if record is not None:
            result = self._wsl(argv.render_unregister_argv(record.distro), timeout=300)
            if not result.ok and "DISTRO_NOT_FOUND" not in (wsl_error_code(result) or ""):
                raise _wsl_failure("wsl.exe --unregister", result)
        shutil.rmtree(vm_dir(vm), ignore_errors=True)

    def ssh_info(self, vm: str) -> SSHInfo:
        """vmsbx's sshd in the distro, reached on Windows' loopback through WSL's relay."""
        record = self._record(vm)
        if record is None or self.state(vm) is not VMState.RUNNING:
            raise VMNotRunning(f"VM {vm!r} is not running", hint=f"start it with `vmsbx up --name {vm}`")
        directory = vm_dir(vm)
        return SSHInfo(
            host="127.0.0.1",
            port=record.ssh_port,
            user="root",
            key_file=client_key_file(directory),
            known_hosts=directory / "known_hosts",
            host_key_alias=host_key_alias(vm),
        )

    def serial_log_tail(self, vm: str, lines: int = 40) -> str:
        """WSL has no console log per distro: ''."""
        return ""

    # -- keeping the distro alive ----------------------------------------------------------

    def _pid_file(self, vm: str) -> Path:
        return vm_dir(vm) / "keepalive.pid"

    def _keepalive_alive(self, vm: str) -> bool:
        try:
            pid = int(self._pid_file(vm).read_text())
        except (OSError, ValueError):
            return False
        return _pid_alive(pid)

    def _start_keepalive(self, vm: str, distro: str) -> None:
        command = argv.render_exec_argv(distro, ["sleep", "2147483647"])
        program = shutil.which(command[0])
        if program is None:
            raise ToolMissing(f"{command[0]} is not installed", hint=_INSTALL_HINT)
        # Detached from vmsbx's terminal and process group: a Ctrl-C must not stop the distro.
        full_argv = [program, *command[1:]]
        env = {**os.environ, **argv.WSL_ENV}
        if os.name == "nt":
            flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(
                subprocess, "DETACHED_PROCESS", 0
            )
            proc = subprocess.Popen(
                full_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=env, close_fds=True, creationflags=flags,
            )  # fmt: skip
        else:
            proc = subprocess.Popen(
                full_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=env, close_fds=True, start_new_session=True,
            )  # fmt: skip
        self._pid_file(vm).write_text(f"{proc.pid}\n")

    def _stop_keepalive(self, vm: str) -> None:
        path = self._pid_file(vm)
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            return
        if _pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        path.unlink(missing_ok=True)


def _wsl_failure(what: str, result: ToolResult) -> ProviderError:
    code = wsl_error_code(result)
    hints = {
        "Wsl/Service/WSL_E_DISTRO_NOT_FOUND": "the distro is gone: `vmsbx destroy -y` then `vmsbx up`",
        "Wsl/WSL_E_WSL_OPTIONAL_COMPONENT_REQUIRED": _INSTALL_HINT,
    }
    return ProviderError(
        f"{what} failed (exit {result.returncode}{', ' + code if code else ''}): {result.message}",
        hint=hints.get(code or "", "run the same wsl.exe command by hand to see more"),
    )


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return _windows_pid_alive(pid)
    with contextlib.suppress(ChildProcessError, OSError):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port if port >= 1024 else _free_loopback_port()


def _windows_pid_alive(pid: int) -> bool:
    # os.kill(pid, 0) would terminate the process on Windows; ask the kernel instead.
    import ctypes

    kernel32 = getattr(ctypes, "windll").kernel32  # noqa: B009 - absent off Windows
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    code = ctypes.c_ulong()
    try:
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
    finally:
        kernel32.CloseHandle(handle)
    return code.value == 259  # STILL_ACTIVE
