"""The fake `limactl`'s boot mode (VMSBX_TEST_FAKE_LIMA_BOOT=qemu): what Lima's host agent does
with the qemu driver, reduced to the contract a guest image has to meet.

From the instance's lima.yaml it takes the first image of the instance's arch, checks each
file's `digest`, copies the kernel, initrd and `kernel.cmdline` into the instance folder and puts
a qcow2 overlay (`diffdisk`) of the instance's disk size over a copy of the image (`basedisk`),
as Lima does. Each start writes a NoCloud `cidata.iso` shaped like Lima's (shared/reference/
providers.md; Lima's pkg/cidata): `user-data` creating the Lima user with the key in
$LIMA_HOME/_config/user and a per-boot script that mounts the disk labelled cidata and runs its
`boot.sh`; `meta-data` with a fresh instance id; `network-config` v2 for the slirp NIC; `lima.env`;
the `provision.system/NNNNNNNN` scripts. The `boot.sh` here is the fake's own: plain mode runs
only the provision scripts, then writes the instance id to /run/lima-boot-done.

It boots QEMU (TCG, restricted user network: the guest reaches nothing, SSH is forwarded to
127.0.0.1 only) and waits, as Lima's host agent does, until SSH as the Lima user works and
`sudo cat /run/lima-boot-done` prints this boot's instance id. The guest's host key is pinned to
the one the template's provision script installs: until that script ran, the guest's sshd shows
cloud-init's throwaway key and the check is simply retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_SLIRP_MAC = "52:55:55:12:34:56"


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _bytes(size: str) -> int:
    match = re.fullmatch(r"([0-9.]+)\s*([KMGT]i?B?)?", size.strip())
    if not match:
        raise ValueError(f"bad size {size!r}")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    unit = (match.group(2) or " ")[0]
    return int(float(match.group(1)) * units.get(unit, 1))


def _fetch(entry: dict[str, Any], dest: Path, fatal: Any) -> None:
    """Lima's download of a local location: copy, then the digest must match."""
    source = Path(str(entry["location"]).removeprefix("file://")).expanduser()
    if not source.is_file():
        fatal(f"failed to download {json.dumps(str(source))}: no such file")
    shutil.copyfile(source, dest)
    digest = str(entry.get("digest") or "")
    if digest:
        algorithm, _, expected = digest.partition(":")
        actual = _sha256(dest)
        if algorithm != "sha256" or actual != expected:
            dest.unlink()
            fatal(f"expected digest {json.dumps(digest)}, got {json.dumps('sha256:' + actual)}")


def prepare_disk(directory: Path, config: dict[str, Any], fatal: Any) -> None:
    """First start: basedisk, diffdisk, kernel, initrd, kernel.cmdline (Lima's instance files)."""
    if (directory / "diffdisk").is_file():
        return
    arch = config.get("arch") or "x86_64"
    images = [image for image in config.get("images") or [] if image.get("arch", arch) == arch]
    if not images:
        fatal(f"no image found for {arch}")
    image = images[0]
    _fetch(image, directory / "basedisk", fatal)
    if image.get("kernel"):
        _fetch(image["kernel"], directory / "kernel", fatal)
        (directory / "kernel.cmdline").write_text(str(image["kernel"].get("cmdline", "")))
    if image.get("initrd"):
        _fetch(image["initrd"], directory / "initrd", fatal)
    disk = str(_bytes(str(config.get("disk") or "100GiB")))
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(directory / "basedisk"),
         str(directory / "diffdisk"), disk],
        check=True,
    )  # fmt: skip


def user_key(lima_home: Path) -> str:
    """$LIMA_HOME/_config/user: Lima's own key for its user, made on first use."""
    config = lima_home / "_config"
    config.mkdir(mode=0o700, exist_ok=True)
    key = config / "user"
    if not key.is_file():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lima", "-f", str(key)], check=True
        )
    return (config / "user.pub").read_text().strip()


def _user_data(user: str, uid: int, home: str, public_key: str) -> str:
    return f"""#cloud-config
# vim:syntax=yaml

growpart:
  mode: auto
  devices: ['/']

users:
  - name: "{user}"
    uid: "{uid}"
    homedir: "{home}"
    shell: /bin/bash
    sudo: ALL=(ALL) NOPASSWD:ALL
    lock_passwd: true
    ssh-authorized-keys:
      - {json.dumps(public_key)}

write_files:
 - content: |
      #!/bin/sh
      set -eux
      LIMA_CIDATA_MNT="/mnt/lima-cidata"
      LIMA_CIDATA_DEV="/dev/disk/by-label/cidata"
      mkdir -p -m 700 "${{LIMA_CIDATA_MNT}}"
      opts=ro,mode=0700,dmode=0700,overriderockperm,exec,uid=0
      mount -o "$opts" "${{LIMA_CIDATA_DEV}}" "${{LIMA_CIDATA_MNT}}"
      export LIMA_CIDATA_MNT
      exec "${{LIMA_CIDATA_MNT}}"/boot.sh
   owner: root:root
   path: /var/lib/cloud/scripts/per-boot/00-lima.boot.sh
   permissions: '0755'
"""


# The fake's boot.sh (Lima's own runs its boot scripts first; plain mode skips all but the
# Alpine-only essential ones): export lima.env, run the system provision scripts in order,
# then signal this boot's instance id.
_BOOT_SH = """#!/bin/sh
set -eu
rm -f /run/lima-boot-done
while read -r line; do [ -n "$line" ] && export "$line"; done <"${LIMA_CIDATA_MNT}"/lima.env
CODE=0
if [ -d "${LIMA_CIDATA_MNT}"/provision.system ]; then
  for f in "${LIMA_CIDATA_MNT}"/provision.system/*; do
    echo "LIMA $(date -Iseconds)| Executing $f"
    if ! "$f"; then
      echo "LIMA $(date -Iseconds)| WARNING: Failed to execute $f"
      CODE=1
    fi
  done
fi
echo "${LIMA_CIDATA_IID}" >/run/lima-boot-done
echo "LIMA $(date -Iseconds)| Exiting with code $CODE"
exit "$CODE"
"""


def write_cidata(directory: Path, name: str, config: dict[str, Any], public_key: str, iid: str) -> Path:
    user, uid, home = "lima", 501, "/home/lima.guest"
    tree = directory / "cidata"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    hostname = "lima-" + name.replace(".", "-").replace("_", "-")
    files = {
        "user-data": _user_data(user, uid, home, public_key),
        "meta-data": f"instance-id: {iid}\nlocal-hostname: {hostname}\n",
        "network-config": (
            "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: '" + _SLIRP_MAC + "'\n"
            "    dhcp4: true\n    set-name: eth0\n    dhcp4-overrides:\n      route-metric: 200\n"
            "    dhcp-identifier: mac\n"
        ),
        "lima.env": "\n".join(
            [
                f"LIMA_CIDATA_NAME={name}",
                f"LIMA_CIDATA_USER={user}",
                f"LIMA_CIDATA_UID={uid}",
                f"LIMA_CIDATA_HOME={home}",
                "LIMA_CIDATA_SHELL=/bin/bash",
                "LIMA_CIDATA_MOUNTS=0",
                f"LIMA_CIDATA_PLAIN={1 if config.get('plain') else 0}",
                f"LIMA_CIDATA_IID={iid}",
                "LIMA_CIDATA_PASSWORDLESS_SUDO=1",
                "",
            ]
        ),
        "param.env": "",
        "etc_environment": "",
        "boot.sh": _BOOT_SH,
    }
    for filename, content in files.items():
        (tree / filename).write_text(content)
    (tree / "boot.sh").chmod(0o755)
    for index, entry in enumerate(config.get("provision") or []):
        if entry.get("mode") == "system":  # Lima numbers entries by their place in the whole list
            script = tree / "provision.system" / f"{index:08d}"
            script.parent.mkdir(exist_ok=True)
            script.write_text(entry["script"])
            script.chmod(0o755)
    iso = directory / "cidata.iso"
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "cidata", "-J", "-R", str(tree)],
        check=True, capture_output=True,
    )  # fmt: skip
    return iso


def qemu_argv(directory: Path, config: dict[str, Any], port: int) -> list[str]:
    """QEMU as Lima's qemu driver runs it, on TCG (the only accelerator these machines boot)."""
    return [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-m", str(_bytes(str(config.get("memory") or "4GiB")) >> 20), "-smp", str(config.get("cpus") or 4),
        "-kernel", str(directory / "kernel"), "-initrd", str(directory / "initrd"),
        "-append", (directory / "kernel.cmdline").read_text(),
        "-drive", f"file={directory / 'diffdisk'},if=virtio,discard=on",
        "-drive", f"id=cdrom0,if=none,format=raw,readonly=on,file={directory / 'cidata.iso'}",
        "-device", "virtio-scsi,id=scsi0", "-device", "scsi-cd,bus=scsi0.0,drive=cdrom0",
        # Lima's slirp network is 192.168.5.0/24; restrict=on keeps the test guest off every
        # network but the SSH forward to host loopback.
        "-netdev", f"user,id=net0,restrict=on,net=192.168.5.0/24,dhcpstart=192.168.5.15,"
        f"hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", f"virtio-net-pci,netdev=net0,mac={_SLIRP_MAC}",
        "-serial", f"file:{directory / 'serial.log'}", "-display", "none", "-monitor", "none",
        "-qmp", f"unix:{directory / 'qmp.sock'},server=on,wait=off",
        "-pidfile", str(directory / "qemu.pid"), "-daemonize",
    ]  # fmt: skip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _pinned_key(config: dict[str, Any]) -> str | None:
    """The host key the template's provision script installs."""
    for entry in config.get("provision") or []:
        match = re.search(r"^(ssh-ed25519 \S+)", entry.get("script", ""), re.MULTILINE)
        if match:
            return match.group(1)
    return None


def wait_ready(directory: Path, lima_home: Path, config: dict[str, Any], port: int, iid: str,
               timeout: float, pid: int, log: Any) -> bool:  # fmt: skip
    pinned = _pinned_key(config)
    if pinned is None:
        log("warning", "the template installs no host key: the fake cannot pin the guest")
        return False
    known = directory / "fake_known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {pinned}\n")
    argv = [
        "ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
        "-i", str(lima_home / "_config" / "user"), "-p", str(port), "lima@127.0.0.1",
        "sudo cat /run/lima-boot-done",
    ]  # fmt: skip
    log("info", '[hostagent] Waiting for the final requirement 1 of 1: "boot scripts must have finished"')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return False
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode == 0 and done.stdout.strip() == iid:
            log("info", "[hostagent] The final requirement 1 of 1 is satisfied")
            return True
        time.sleep(2)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def boot(directory: Path, name: str, lima_home: Path, timeout: float, log: Any, fatal: Any,
         started: Any) -> None:  # fmt: skip
    """Start the instance's QEMU, tell `started(port, pid)`, wait until Lima would call it READY."""
    import yaml  # the fake may use PyYAML; vmsbx itself does not need it

    config = yaml.safe_load((directory / "lima.yaml").read_text()) or {}
    prepare_disk(directory, config, fatal)
    iid = f"iid-{int(time.time())}"
    write_cidata(directory, name, config, user_key(lima_home), iid)
    port = free_port()
    (directory / "serial.log").unlink(missing_ok=True)
    subprocess.run(qemu_argv(directory, config, port), check=True, capture_output=True)
    pid = int((directory / "qemu.pid").read_text().strip())
    started(port, pid)
    log("info", f"SSH Local Port: {port}")
    if not wait_ready(directory, lima_home, config, port, iid, timeout, pid, log):
        fatal("did not receive an event with the `running` status")


def halt(directory: Path, pid: int, *, force: bool) -> None:
    """`limactl stop`: ACPI power-down through QMP, SIGKILL after a grace period (or at once)."""
    if not alive(pid):
        return
    if not force:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(directory / "qmp.sock"))
                sock.recv(4096)
                for command in ({"execute": "qmp_capabilities"}, {"execute": "system_powerdown"}):
                    sock.sendall(json.dumps(command).encode() + b"\n")
                    sock.recv(4096)
        except OSError:
            pass
        deadline = time.monotonic() + 120
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit("lima_boot is imported by the fake limactl")
