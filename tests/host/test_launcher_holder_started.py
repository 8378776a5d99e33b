"""The guest launcher's `record` tells the host whether the session holder ever ran, on real
files: a jail that nsjail could not build left nothing in the run's tmp, and the host then
reports exit 125 with nsjail's reason instead of its 255 as the command's own code."""

from __future__ import annotations

from pathlib import Path

import pytest
from guest_code import load_guest


def test_holder_started_follows_the_holders_folder_on_the_runs_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = load_guest("launcher")
    monkeypatch.setattr(launcher.RunPaths, "tmp_dir", property(lambda _self: str(tmp_path / "tmp")))
    p = launcher.paths("0123456789ab")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    assert launcher._holder_started(p) is False  # nsjail failed before the holder ran
    (tmp / ".vmsbx").mkdir(mode=0o700)
    assert launcher._holder_started(p) is True
    # A run that swapped its folder for a dangling link still ran: lstat, never followed.
    (tmp / ".vmsbx").rmdir()
    (tmp / ".vmsbx").symlink_to(tmp_path / "nowhere")
    assert launcher._holder_started(p) is True
