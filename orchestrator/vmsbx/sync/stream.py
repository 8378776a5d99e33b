"""The byte stream `wsync.py apply` reads: one JSON header line, then a tar of the files.

Header (one line, UTF-8 JSON, no raw newline inside):

    {"version": 1,
     "delete": ["old", "dir/gone"],                 # removed first (whole trees)
     "dirs":   [["src", 493]],                       # created or re-moded, parents first
     "links":  [["link", "src/a.py"]],
     "files":  [{"path": "src/a.py", "mode": 420, "size": 12, "sha256": "<hex>"}],
     "modes":  [["run.sh", 493]]}                    # content unchanged, mode changed

The tar (PAX) holds exactly the "files", in that order, as regular members; the guest checks
each member's size and sha256 against the header and writes it atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from typing import BinaryIO

from vmsbx.errors import SyncError
from vmsbx.sync.delta import SyncPlan
from vmsbx.sync.manifest import ManifestEntry, Scan, open_regular

STREAM_VERSION = 1


def stream_header(plan: SyncPlan) -> bytes:
    """The first line of the stream."""
    header = {
        "version": STREAM_VERSION,
        "delete": list(plan.delete),
        "dirs": [list(item) for item in plan.dirs],
        "links": [list(item) for item in plan.links],
        "files": [
            {"path": entry.path, "mode": entry.mode, "size": entry.size, "sha256": entry.sha256}
            for entry in plan.files
        ],
        "modes": [list(item) for item in plan.modes],
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n"


def write_stream(scan: Scan, plan: SyncPlan, out: BinaryIO) -> None:
    """Write the header and the tar of `plan.files` to `out`, one file at a time.

    Each file is opened without following links and must still have the size and hash the scan
    saw; otherwise SyncError (the guest also rejects a member whose hash differs).
    """
    out.write(stream_header(plan))
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in plan.files:
            info = tarfile.TarInfo(entry.path)
            info.size = entry.size or 0
            info.mode = entry.mode or 0o644
            override = scan.overrides.get(entry.path)
            if override is not None:
                tar.addfile(info, io.BytesIO(override))
                continue
            with _HashingReader(scan, entry) as reader:
                tar.addfile(info, reader)


class _HashingReader(io.RawIOBase):
    """Reads one project file for tarfile, checking it is what the scan saw."""

    def __init__(self, scan: Scan, entry: ManifestEntry) -> None:
        super().__init__()
        self._entry = entry
        self._digest = hashlib.sha256()
        self._fd = open_regular(scan.root / entry.path)
        if os.fstat(self._fd).st_size != entry.size:
            os.close(self._fd)
            raise _changed(entry)
        self._left = entry.size or 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        data = os.read(self._fd, want) if want else b""
        self._left -= len(data)
        self._digest.update(data)
        if (not data and self._left) or (not self._left and self._digest.hexdigest() != self._entry.sha256):
            raise _changed(self._entry)
        return data

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _changed(entry: ManifestEntry) -> SyncError:
    return SyncError(
        f"{entry.path} changed while it was being synced",
        hint="run again once nothing is writing to the project folder",
    )
