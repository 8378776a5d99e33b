"""The lima provider boots vmsbx's own Debian image, the way Lima boots it, and the walls stand.

Lima cannot run here. What can, and is real: the `bookworm-lima` image build (the session's
cached build; `vmsbx image lima` exports it as a Mac user would copy it), the template vmsbx
renders (image, kernel and initrd pinned by sha256), a NoCloud cidata disk shaped like Lima's
that the image's own cloud-init reads (Lima's user and key, the per-boot script that runs the
template's provision script), QEMU booting it, every SSH connection (pinned), vmsbx's
provisioning and a sandboxed run. What the fake limactl emulates (tests/fakes/lima_boot.py):
Lima's host agent — copying the files, writing the ISO, starting QEMU, waiting for
/run/lima-boot-done, writing ssh.config.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from vmcli import Cli

pytestmark = pytest.mark.vm

FAKES = Path(__file__).resolve().parent.parent / "fakes"
VM = "lvm"


@pytest.fixture(scope="module")
def lima(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Path, Path]]:
    """The exported image folder, and a CLI whose limactl boots it under QEMU."""
    root = tmp_path_factory.mktemp("lima")
    folder = root / "vmsbx-bookworm-lima"
    done = cli.ok("image", "lima", "--out", str(folder), timeout=1800)
    assert str(folder) in done.stdout.decode()
    env = dict(cli.env)
    env.update(
        PATH=f"{FAKES}{os.pathsep}{os.environ['PATH']}",
        VMSBX_TEST_FAKE_STATE=str(root / "fake"),
        VMSBX_TEST_FAKE_LIMA_BOOT="qemu",
        LIMA_HOME=str(root / "L"),  # short: QEMU's QMP socket lives in the instance folder
        VMSBX_VM_LIMA_IMAGE=str(folder),
        VMSBX_VM_MEMORY="2G",
    )
    runner = Cli(env=env, cwd=cli.cwd)
    try:
        yield runner, folder, root / "L" / f"vmsbx-{VM}"
    finally:
        runner.run("destroy", "-y", "--name", VM, timeout=300)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build_dir(cli: Cli) -> Path:
    rows = cli.json("image", "list")
    assert isinstance(rows, list)
    row = next(row for row in rows if row["name"] == "bookworm-lima")
    return Path(row["directory"])


def test_the_exported_folder_is_the_build_compressed(lima: tuple[Cli, Path, Path], cli: Cli) -> None:
    _, folder, _ = lima
    assert sorted(p.name for p in folder.iterdir()) == ["disk.qcow2", "image.json", "initrd", "vmlinuz"]
    record = json.loads((folder / "image.json").read_text())
    assert record["name"] == "bookworm-lima" and record["arch"] == "x86_64"
    build = _build_dir(cli)
    assert (folder / "vmlinuz").read_bytes() == (build / "vmlinuz").read_bytes()
    assert (folder / "initrd").read_bytes() == (build / "initrd").read_bytes()
    assert (folder / "disk.qcow2").stat().st_size < (build / "base.qcow2").stat().st_size / 2
    again = cli.run("image", "lima", "--out", str(folder))
    assert again.returncode == 2 and b"already exists" in again.stderr  # never overwritten


def test_lima_boots_vmsbx_image_and_the_walls_stand(lima: tuple[Cli, Path, Path], cli: Cli) -> None:
    runner, folder, instance = lima
    summary = runner.json("up", "--provider", "lima", "--name", VM)
    assert isinstance(summary, dict)
    assert summary["provider"] == "lima" and str(summary["systemd"]).startswith("252")

    # What vmsbx handed Lima: its own image, kernel and initrd, each pinned by sha256.
    config = yaml.safe_load((runner.home / "vms" / VM / "lima.yaml").read_text())
    assert config["arch"] == "x86_64" and config["mounts"] == [] and config["plain"] is True
    (image,) = config["images"]
    assert image["location"] == str(folder / "disk.qcow2")
    assert image["digest"] == "sha256:" + _sha256(folder / "disk.qcow2")
    assert image["kernel"]["digest"] == "sha256:" + _sha256(folder / "vmlinuz")
    assert image["initrd"]["digest"] == "sha256:" + _sha256(folder / "initrd")
    assert image["kernel"]["cmdline"].startswith("root=/dev/vda ")

    # The guest, in one call: it is the build, cloud-init read Lima's disk, nothing failed.
    iid = yaml.safe_load((instance / "cidata" / "meta-data").read_text())["instance-id"]
    probe = (
        "set -e; ps -p 1 -o comm=; cloud-init status | head -1; id -u lima; cat /run/lima-boot-done; "
        "systemctl --failed --no-legend --plain | wc -l; ls /etc/ssh/ | grep -c '^ssh_host_' || true; "
        "findmnt -rn -o FSTYPE | sort -u | tr '\\n' ' '; echo; "
        "test -f /etc/vmsbx/keys-from-cloud-init && echo lima-variant; "
        "dpkg-query -W -f '${Package} ${Version}\\n' > /tmp/pkgs; sha256sum < /tmp/pkgs | cut -c1-64"
    )
    out = runner.ok("ssh", "--name", VM, "--", "sh", "-c", probe).stdout.decode().splitlines()
    pid1, cloud_init, lima_uid, boot_done, failed, host_keys, fstypes, variant, packages = out
    assert pid1 == "systemd"
    assert cloud_init == "status: done", out
    assert lima_uid == "501" and boot_done == iid  # Lima's user and Lima's readiness signal
    assert failed == "0", "a unit failed in the Lima guest"
    assert host_keys == "2"  # the pinned ed25519 pair only (cloud-init's throwaway key replaced)
    assert not set(fstypes.split()) & {"9p", "virtiofs", "fuse.sshfs", "nfs", "cifs"}, fstypes
    assert variant == "lima-variant"
    recorded = (_build_dir(cli) / "packages.txt").read_bytes()
    assert packages == hashlib.sha256(recorded).hexdigest(), "the guest's packages are not the build's"

    # The second wall in this guest: a DynamicUser unit with the exposure vmsbx checks.
    status = "id -u; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status"
    run = runner.ok("run", "--name", VM, "--", "sh", "-c", status)
    lines = run.stdout.decode().split()
    assert int(lines[0]) >= 61184 and lines[1:] == ["NoNewPrivs:", "1", "Seccomp:", "2"], lines
    assert b"exposure 0.5" in run.stderr

    # Lima runs provision scripts on every boot: after a restart the same pin still holds.
    runner.ok("stop", "--name", VM, timeout=300)
    rows = runner.json("status")
    assert isinstance(rows, list) and next(r for r in rows if r["name"] == VM)["state"] == "stopped"
    runner.ok("up", "--name", VM, timeout=900)
    again = runner.ok("ssh", "--name", VM, "--", "cat", "/run/lima-boot-done").stdout.decode().strip()
    assert again == yaml.safe_load((instance / "cidata" / "meta-data").read_text())["instance-id"] != iid
    runner.ok("destroy", "-y", "--name", VM, timeout=300)
    assert not instance.exists()
