"""`vmsbx doctor` on this real host: everything CI installed is found; a missing tool is named
with the command that installs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def _doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmsbx", "doctor", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def test_doctor_finds_the_installed_prerequisites(tmp_path: Path) -> None:
    env = dict(os.environ, VMSBX_HOME=str(tmp_path / "home"))
    done = _doctor(env)
    checks = {row["check"]: row for row in json.loads(done.stdout)}
    assert done.returncode == 0, done.stdout
    for tool in ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4", "ssh"):
        assert checks[tool]["ok"] is True
        assert checks[tool]["detail"] == shutil.which(tool)
    assert "acceleration" in checks


def test_doctor_names_the_fix_for_a_missing_tool(tmp_path: Path) -> None:
    # A PATH with everything but QEMU: link the other tools into a private bin folder.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qemu-img", "mmdebstrap", "mkfs.ext4", "ssh"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    env = dict(os.environ, VMSBX_HOME=str(tmp_path / "home"), PATH=str(bin_dir))
    done = _doctor(env)
    assert done.returncode == 3
    checks = {row["check"]: row for row in json.loads(done.stdout)}
    assert checks["qemu-system-x86_64"]["ok"] is False
    assert checks["qemu-system-x86_64"]["fix"] == "apt-get install qemu-system-x86"
    assert checks["qemu-img"]["ok"] is True


def test_up_without_qemu_says_what_to_install(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        VMSBX_HOME=str(tmp_path / "home"),
        VMSBX_CONFIG=str(tmp_path / "none.toml"),
        PATH=str(tmp_path / "empty-bin"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "vmsbx", "up"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert done.returncode == 3
    assert "qemu-system-x86_64" in done.stderr
    assert "apt-get install qemu-system-x86" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "home" / "vms" / "default").exists()  # nothing half-made
