"""The guest-side programs vmsbx pushes, and their content hash: the installed version that the
launcher's facts report and the resident guest agent answers to."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from vmsbx import contract
from vmsbx.errors import GuestCheckFailed
from vmsbx.paths import data_dir


def guest_bundle() -> tuple[str, dict[str, bytes]]:
    """provision/guest/*.py, and the host↔guest contract (vmsbx.contract, this very package's
    file, pushed as contract.py) that the launcher imports; and their hash."""
    files = {
        path.name: path.read_bytes() for path in sorted((data_dir() / "provision" / "guest").glob("*.py"))
    }
    if "contract.py" in files:
        raise GuestCheckFailed("provision/guest/contract.py shadows vmsbx.contract", hint="remove it")
    files["contract.py"] = Path(contract.__file__).read_bytes()
    files = dict(sorted(files.items()))
    digest = hashlib.sha256()
    for name, data in files.items():
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:32], files


@cache
def bundle_version() -> str:
    """The hash of this vmsbx's bundle (read once per process: the files do not change under it)."""
    return guest_bundle()[0]
