"""The WSL2 root filesystem: the qemu provider's own Debian image, as the tar `wsl.exe --import` takes.

Made from a complete image build (never a second bootstrap), so a WSL guest runs the very
packages the CI walls were proven on. What only a QEMU boot needs is left out: the fstab line
for /dev/vda (WSL mounts the root itself), the fw_cfg key loader (keys arrive through the WSL
setup script), and systemd-networkd (WSL configures eth0). Everything else is kept byte for
byte, with numeric owners, modes, ACLs and extended attributes (file capabilities).

Needs root on a Linux host: the image's filesystem is mounted read-only to be read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vmsbx.errors import ImageBuildError
from vmsbx.providers.image import ImageInfo, Progress

# Left out of the tar, as member names (`./` + path in the image).
WSL_EXCLUDES = (
    "./etc/fstab",
    "./etc/systemd/system/vmsbx-keys.service",
    "./etc/systemd/system/multi-user.target.wants/vmsbx-keys.service",
    "./usr/local/lib/vmsbx/load-keys",
    "./etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
    "./etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
    "./etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service",
    "./etc/systemd/system/dbus-org.freedesktop.network1.service",
    "./etc/systemd/network/20-vmsbx.network",
)

# Put in instead (member name, content).
WSL_FILES = (("./etc/fstab", "# vmsbx: WSL mounts the root filesystem itself; nothing to mount here.\n"),)


def render_convert_raw_argv(qcow2: Path, raw: Path) -> list[str]:
    return ["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)]


def render_mount_argv(raw: Path, mountpoint: Path) -> list[str]:
    # noload: a read-only mount must not replay the journal (the image is never written).
    return ["mount", "-o", "loop,ro,noload", str(raw), str(mountpoint)]


def render_tar_argv(tree: Path, out: Path) -> list[str]:
    return [
        "tar", "--create", "--file", str(out), "--numeric-owner", "--acls", "--xattrs",
        "--xattrs-include=*", "--sparse", "--one-file-system", "--anchored",
        *(f"--exclude={member}" for member in WSL_EXCLUDES),
        "-C", str(tree), ".",
    ]  # fmt: skip


def render_append_argv(staging: Path, out: Path) -> list[str]:
    return [
        "tar", "--append", "--file", str(out), "--numeric-owner", "--owner=0", "--group=0",
        "-C", str(staging), *(member for member, _content in WSL_FILES),
    ]  # fmt: skip


def export_wsl_rootfs(image: ImageInfo, out: Path, progress: Progress) -> Path:
    """Write the WSL tar of `image` to `out` (atomically: a partial file never has its name)."""
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building the WSL root filesystem needs root: the image is mounted read-only to be read",
            hint="run it with sudo on a Linux host: `sudo vmsbx image rootfs`",
        )
    missing = [tool for tool in ("qemu-img", "mount", "umount", "tar") if not shutil.which(tool)]
    if missing:
        raise ImageBuildError(
            f"cannot build the WSL root filesystem: {', '.join(missing)} not found",
            hint="apt-get install qemu-utils mount tar",
        )
    out = out.absolute()
    partial = out.with_name(f".{out.name}.partial")
    try:
        with tempfile.TemporaryDirectory(prefix=".vmsbx-rootfs-", dir=out.parent) as work_dir:
            work = Path(work_dir)
            raw, mountpoint, staging = work / "disk.raw", work / "mnt", work / "staging"
            progress("unpacking the image")
            _run(render_convert_raw_argv(image.disk, raw))
            mountpoint.mkdir()
            for member, content in WSL_FILES:
                path = staging / member
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
                path.chmod(0o644)
            with _mounted(raw, mountpoint):
                progress("writing the tar")
                _run(render_tar_argv(mountpoint, partial))
            _run(render_append_argv(staging, partial))
        partial.chmod(0o644)
        partial.rename(out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out


@contextlib.contextmanager
def _mounted(raw: Path, mountpoint: Path) -> Iterator[None]:
    _run(render_mount_argv(raw, mountpoint))
    try:
        yield
    finally:
        _run(["umount", str(mountpoint)])


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()[-1500:]
        raise ImageBuildError(
            f"{argv[0]} failed with exit code {done.returncode}: {message}",
            hint="check the disk has room for the image unpacked (~2x its size), then try again",
        )
