"""Choose QEMU acceleration by probing, never by assuming that /dev/kvm means KVM works."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from vmsbx.providers.qemu_argv import Accel, render_accel_probe_argv

_PROBE_SECONDS = 8.0


def kvm_device_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def probe_kvm_boots(binary: str, kernel: Path, *, seconds: float = _PROBE_SECONDS) -> bool:
    """Boot `kernel` under KVM for a few seconds and report whether it printed its banner."""
    if not kvm_device_usable():
        return False
    argv = render_accel_probe_argv(binary, kernel)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            chunk = proc.stdout.read(65536)
            if chunk:
                seen = (seen + chunk)[-65536:]
                if b"Linux version" in seen:
                    return True
            else:
                time.sleep(0.1)
        return False
    finally:
        proc.kill()
        proc.wait()


def choose_accel(wanted: str, binary: str, kernel: Path, *, cache_file: Path | None = None) -> Accel:
    """`wanted` is auto|kvm|tcg. auto probes once and remembers the answer in `cache_file`.

    The cache key is the host kernel release, so a host upgrade triggers a new probe.
    """
    if wanted == "tcg":
        return "tcg"
    if wanted == "kvm":
        return "kvm"
    key = os.uname().release
    if cache_file is not None and cache_file.is_file():
        cached_key, _, cached = cache_file.read_text().partition("=")
        if cached_key == key and cached.strip() in ("kvm", "tcg"):
            return "kvm" if cached.strip() == "kvm" else "tcg"
    result: Accel = "kvm" if probe_kvm_boots(binary, kernel) else "tcg"
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(f"{key}={result}\n")
    return result
