"""Where vmsbx keeps its state, configuration and caches.

State (VM disks, keys, logs, run records) lives under the platform data dir, or `VMSBX_HOME`
when set. The image cache follows the platform cache dir (`VMSBX_CACHE` overrides it), so that
test runs with a throw-away `VMSBX_HOME` still share one built image.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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
    """Create `path` (and parents) and force mode 0700: sockets and keys live there."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def data_dir() -> Path:
    """The shipped `vm-templates/` and `provision/` trees, installed or in a source checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "_data"
    if installed.is_dir():
        return installed
    return here.parent.parent
