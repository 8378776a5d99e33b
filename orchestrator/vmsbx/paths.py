"""Where vmsbx keeps its state, configuration and caches.

State (VM disks, keys, logs, run records) lives under the platform data dir, or `VMSBX_HOME`
when set. The image cache follows the platform cache dir (`VMSBX_CACHE` overrides it), so that
test runs with a throw-away `VMSBX_HOME` still share one built image.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import BinaryIO, cast

import platformdirs

_APP = "vmsbx"
# VM and run names become directory names: keep them to a safe, portable alphabet.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def state_root() -> Path:
    override = os.environ.get("VMSBX_HOME")
    # Absolute, so that paths recorded in VM files and QEMU command lines mean one thing.
    return Path(override).resolve() if override else Path(platformdirs.user_data_dir(_APP))


def cache_root() -> Path:
    override = os.environ.get("VMSBX_CACHE")
    return Path(override).resolve() if override else Path(platformdirs.user_cache_dir(_APP))


def user_config_file() -> Path:
    override = os.environ.get("VMSBX_CONFIG")
    return Path(override) if override else Path(platformdirs.user_config_dir(_APP)) / "config.toml"


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.fullmatch(name))


def vm_dir(name: str) -> Path:
    """The VM's private 0700 directory (disks, keys, sockets, logs). `name` must be valid."""
    if not is_valid_name(name):
        raise ValueError(f"invalid VM name {name!r}")
    return state_root() / "vms" / name


def ensure_private_dir(path: Path) -> Path:
    """Create `path` and force mode 0700: sockets, keys and run records live there. Parents it
    creates are 0700 too (mkdir's mode, not the umask's 0755): whatever the umask, no other
    user can list or read vmsbx's state."""
    missing = []
    probe = path
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        folder.chmod(0o700)
    path.chmod(0o700)
    return path


_PRIVATE_FLAGS = (
    os.O_CREAT | os.O_CLOEXEC | int(getattr(os, "O_BINARY", 0)) | int(getattr(os, "O_NOFOLLOW", 0))
)


def open_private(path: Path, mode: str = "wb") -> BinaryIO:
    """Open a state file for writing ("wb", "ab" or "w+b"), created 0600 whatever the umask (a
    file that exists is set to 0600 too). Its folder must exist."""
    flags = {"wb": os.O_WRONLY | os.O_TRUNC, "ab": os.O_WRONLY | os.O_APPEND, "w+b": os.O_RDWR | os.O_TRUNC}
    fd = os.open(path, flags[mode] | _PRIVATE_FLAGS, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        return cast(BinaryIO, os.fdopen(fd, mode))
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, data: bytes | str) -> None:
    """Replace a state file atomically with `data` (text as UTF-8), mode 0600."""
    temp = path.with_name(path.name + ".tmp")
    with open_private(temp) as sink:
        sink.write(data.encode() if isinstance(data, str) else data)
    temp.replace(path)


def data_dir() -> Path:
    """The shipped `vm-templates/` and `provision/` trees, installed or in a source checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "_data"
    if installed.is_dir():
        return installed
    return here.parent.parent
