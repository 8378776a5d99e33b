"""A minimal copy-in of the project folder: a tar of it, links kept as links.

(The full incremental mirror with secret filtering and review/apply is the agent stage's sync.)
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from vmsbx.errors import UsageError

_MAX_BYTES = 512 * 1024 * 1024
_SKIP_DIRS = {".git", "node_modules", ".venv", "__pycache__"}


def workspace_tar(project: Path) -> bytes:
    """Tar `project` (no owner names, no special files, symlinks never followed)."""
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(project, followlinks=False):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
            for name in [*dirs, *sorted(files)]:
                path = Path(root) / name
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(project)))
                if not (info.isfile() or info.isdir() or info.issym()):
                    continue
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    total += info.size
                    if total > _MAX_BYTES:
                        raise UsageError(
                            f"the project folder is larger than {_MAX_BYTES >> 20} MiB",
                            hint="run vmsbx from the project's own folder",
                        )
                    with path.open("rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    return buffer.getvalue()
