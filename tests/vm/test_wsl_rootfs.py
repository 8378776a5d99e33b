"""`vmsbx image rootfs`: the WSL2 tar is the CI-tested image, and its sshd takes vmsbx's setup.

WSL itself cannot run here. What can: the tar is made from the session's cached image build, it
is unpacked as `wsl.exe --import` would, the very script the wsl2 provider runs after the import
(`render_wsl_setup`) runs in it (chrooted, as in a fresh distro before systemd is PID 1), and the
image's own sshd then serves vmsbx's endpoint, reached over SSH with the pinned host key.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmcli import Cli

from vmsbx.errors import HostKeyMismatch
from vmsbx.providers.guest_setup import render_wsl_setup
from vmsbx.providers.guestkeys import CLIENT_KEY, create_vm_keys, host_key_alias
from vmsbx.providers.rootfs import WSL_EXCLUDES
from vmsbx.sshinfo import SSHInfo
from vmsbx.transport import Connection

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "vm-templates" / "wsl2"


@pytest.fixture(scope="module")
def rootfs(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wsl") / "vmsbx-bookworm-wsl.tar"
    done = cli.ok("image", "rootfs", "--out", str(out), timeout=1800)
    assert str(out) in done.stdout.decode()
    return out


def _members(tar: Path) -> dict[str, str]:
    listing = subprocess.run(["tar", "-tvf", str(tar)], capture_output=True, check=True, text=True).stdout
    members = {}
    for line in listing.splitlines():
        fields = line.split(None, 5)
        name = fields[5].split(" -> ")[0]
        members[name] = fields[1]  # owner/group, numeric
    return members


def test_the_tar_is_the_image_minus_what_only_qemu_needs(rootfs: Path) -> None:
    members = _members(rootfs)
    for needed in ("./usr/lib/systemd/systemd", "./usr/sbin/sshd", "./usr/bin/socat",
                   "./etc/ssh/sshd_config.d/10-vmsbx.conf", "./etc/fstab", "./usr/bin/python3"):  # fmt: skip
        assert needed in members, needed
    for left_out in WSL_EXCLUDES:
        if left_out != "./etc/fstab":
            assert left_out not in members, left_out
    assert list(members).count("./etc/fstab") == 1
    assert not [name for name in members if name.startswith("./etc/ssh/ssh_host_")]  # each VM has its own
    # Numeric owners only: the names would be looked up in the importing system's tables.
    assert all(re.fullmatch(r"\d+/\d+", owner) for owner in members.values())
    assert members["./usr/lib/systemd/systemd"] == "0/0"
    fstab = subprocess.run(["tar", "-xOf", str(rootfs), "./etc/fstab"], capture_output=True, check=True)
    assert b"/dev/vda" not in fstab.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _distro(rootfs: Path, where: Path) -> Iterator[Path]:
    """The tar unpacked as an imported distro, with a /proc and a /dev as WSL gives it."""
    tree = where / "distro"
    tree.mkdir()
    subprocess.run(
        ["tar", "-xpf", str(rootfs), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(tree)],
        check=True,
    )
    mounted: list[Path] = []
    try:
        # A tmpfs /dev with the few nodes sshd opens, never a bind of the host's /dev: the
        # tree is deleted after the test, and a bind mount left behind would take /dev with it.
        proc = ["mount", "-t", "proc", "proc", str(tree / "proc")]
        dev = ["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid", "tmpfs", str(tree / "dev")]
        for argv in (proc, dev):
            subprocess.run(argv, check=True)
            mounted.append(Path(argv[-1]))
        for name, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
            subprocess.run(["mknod", "-m", "666", str(tree / "dev" / name), "c", "1", str(minor)], check=True)
        yield tree
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)


def test_the_wsl_setup_gives_the_images_sshd_vmsbx_pinned_endpoint(rootfs: Path, tmp_path: Path) -> None:
    vm_dir = tmp_path / "vm"
    keys = create_vm_keys(vm_dir, "wsltest")
    port = _free_port()
    script = render_wsl_setup(
        keys,
        wsl_conf=(TEMPLATES / "wsl.conf").read_text(),
        sshd_config=(TEMPLATES / "sshd_config").read_text(),
        sshd_unit=(TEMPLATES / "vmsbx-sshd.service").read_text(),
        port=port,
    )
    with _distro(rootfs, tmp_path) as tree:
        # A freshly imported distro: systemd is not PID 1 yet, so the script enables by links.
        subprocess.run(["chroot", str(tree), "sh", "-s"], input=script.encode(), check=True)
        wants = tree / "etc/systemd/system/multi-user.target.wants"
        assert (wants / "vmsbx-sshd.service").is_symlink()
        assert not (wants / "ssh.service").exists()  # the stock endpoint is off for the next boot
        conf = (tree / "etc/wsl.conf").read_text()
        for line in ("systemd=true", "enabled=false", "appendWindowsPath=false"):
            assert line in conf
        (tree / "run/sshd").mkdir(parents=True, exist_ok=True)
        sshd_test = ["chroot", str(tree), "/usr/sbin/sshd", "-t", "-f", "/etc/ssh/vmsbx/sshd_config"]
        check = subprocess.run(sshd_test, capture_output=True, check=False)
        assert check.returncode == 0, check.stderr
        sshd = subprocess.Popen(
            ["chroot", str(tree), "/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/vmsbx/sshd_config"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            info = SSHInfo(
                host="127.0.0.1", port=port, user="root", key_file=vm_dir / "keys" / CLIENT_KEY,
                known_hosts=vm_dir / "known_hosts", host_key_alias=host_key_alias("wsltest"),
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while True:
                try:
                    with Connection(info) as conn:
                        conn.open()
                        done = conn.run(["sh", "-c", "id -u; . /etc/os-release; echo $VERSION_CODENAME"])
                    break
                except HostKeyMismatch:
                    raise
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            assert done.exit_code == 0 and done.stdout.split() == [b"0", b"bookworm"]
            # Control: another host key under the same alias is refused (the pin is real).
            other = create_vm_keys(tmp_path / "other", "wsltest")
            assert other.host_public != keys.host_public
            wrong_pin = info.model_copy(update={"known_hosts": tmp_path / "other" / "known_hosts"})
            with pytest.raises(HostKeyMismatch), Connection(wrong_pin) as bad:
                bad.open()
        finally:
            sshd.terminate()
            sshd.wait(timeout=10)
