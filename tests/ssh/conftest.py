"""A real OpenSSH server on loopback, started once per session for the `ssh` tests.

Nothing here is mocked: sshd is Debian's /usr/sbin/sshd with a throwaway config, host key and
authorized key, so the tests exercise the same handshake, host-key check and channels a guest's
sshd would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd_server import HOST_KEY_ALIAS, SSHD, Sshd, free_port, wait_for_banner

from vmsbx.sshinfo import SSHInfo
from vmsbx.transport import generate_keypair, write_known_hosts


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not SSHD.exists():
        pytest.fail("needs /usr/sbin/sshd: apt-get install openssh-server")
    if os.geteuid() != 0:
        pytest.fail("the test sshd logs in as root; run the ssh tests as root")
    root = tmp_path_factory.mktemp("sshd")
    host_key = root / "ssh_host_ed25519_key"
    host_public_line = generate_keypair(host_key, "vmsbx-test-host")
    client_key = root / "client_ed25519"
    client_public_line = generate_keypair(client_key, "vmsbx-test-client")
    authorized_keys = root / "authorized_keys"
    authorized_keys.write_text(client_public_line + "\n")
    log = root / "sshd.log"
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized_keys}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "PidFile none",
                "Subsystem sftp internal-sftp",
                "AllowTcpForwarding yes",
                # The tmp dirs are not root-owned 0755 all the way up; the test keys are throwaway.
                "StrictModes no",
                "LogLevel VERBOSE",
                "MaxSessions 50",
                "",
            ]
        )
    )
    # sshd refuses to start without its privilege-separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    check = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    with log.open("wb") as log_handle:
        proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdout=log_handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_banner(port, proc, log)
        yield Sshd(
            port=port,
            root=root,
            host_key=host_key,
            host_public_line=host_public_line,
            client_key=client_key,
            log=log,
            user="root",
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def ssh_info(sshd: Sshd, tmp_path: Path) -> SSHInfo:
    """SSHInfo for the test sshd with its real host key pinned in a fresh known_hosts file."""
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, HOST_KEY_ALIAS, sshd.host_public_line)
    return SSHInfo(
        host="127.0.0.1",
        port=sshd.port,
        user=sshd.user,
        key_file=sshd.client_key,
        known_hosts=known_hosts,
        host_key_alias=HOST_KEY_ALIAS,
    )


@pytest.fixture
def ssh_binary() -> str:
    path = shutil.which("ssh")
    if path is None:
        pytest.fail("needs the OpenSSH client: apt-get install openssh-client")
    return path
