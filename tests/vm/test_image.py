"""The cached base image: built once per recipe hash, records its origin, holds no host keys."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from vmcli import Cli

from vmsbx.providers.image import current_image, load_recipe

pytestmark = pytest.mark.vm


def test_image_is_cached_records_its_origin_and_has_no_host_keys(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path
) -> None:
    info = current_image(load_recipe("bookworm"))
    assert info is not None, "the session's `vmsbx up` should have left a complete build"
    record = json.loads((info.directory / "image.json").read_text())
    assert record["recipe"]["suite"] == "bookworm"
    assert record["built_at"]
    packages = (info.directory / "packages.txt").read_text()
    assert "openssh-server " in packages and "systemd " in packages
    listing = cli.json("image", "list")
    assert isinstance(listing, list)
    assert any(row.get("recipe_hash") == info.recipe_hash for row in listing)
    # The base disk must not carry SSH host keys: each VM gets its own.
    raw = tmp_path / "base.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(info.disk), str(raw)], check=True)
    ssh_dir = subprocess.run(
        ["debugfs", "-R", "ls -l /etc/ssh", str(raw)], capture_output=True, text=True, check=True
    ).stdout
    assert "sshd_config" in ssh_dir  # positive control: we are looking at the right directory
    assert "ssh_host_" not in ssh_dir


def test_image_rebuild_adds_a_build_and_leaves_running_vms_alone(
    cli: Cli, default_vm: dict[str, object]
) -> None:
    before = current_image(load_recipe("bookworm"))
    assert before is not None
    cli.ok("image", "rebuild", "--image", "bookworm", timeout=1200)
    after = current_image(load_recipe("bookworm"))
    assert after is not None
    assert after.directory != before.directory
    assert after.built_at >= before.built_at
    # The old build stays: the running VM's overlay still sits on it.
    assert before.disk.is_file()
    assert cli.ok("ssh", "--", "echo", "still-here").stdout == b"still-here\n"
    listing = cli.json("image", "list")
    assert isinstance(listing, list)
    assert any(row.get("directory") == str(after.directory) for row in listing)
