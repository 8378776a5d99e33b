"""The guest launcher's `record` tells the host whether the session holder ever ran, on real
files: a jail that nsjail could not build left nothing in the run's tmp, and the host then
reports exit 125 with nsjail's reason instead of its 255 as the command's own code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

GUEST = Path(__file__).resolve().parents[2] / "provision" / "guest"


def _launcher() -> ModuleType:
    sys.path.insert(0, str(GUEST))
    try:
        spec = importlib.util.spec_from_file_location("launcher_under_test", GUEST / "launcher.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GUEST))


def test_holder_started_follows_the_holders_folder_on_the_runs_tmp(tmp_path: Path) -> None:
    launcher = _launcher()
    p = launcher.paths("0123456789ab")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = {**p, "tmp": str(tmp)}
    assert launcher._holder_started(p) is False  # nsjail failed before the holder ran
    (tmp / ".vmsbx").mkdir(mode=0o700)
    assert launcher._holder_started(p) is True
    # A run that swapped its folder for a dangling link still ran: lstat, never followed.
    (tmp / ".vmsbx").rmdir()
    (tmp / ".vmsbx").symlink_to(tmp_path / "nowhere")
    assert launcher._holder_started(p) is True
