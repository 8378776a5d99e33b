"""Key files: formats OpenSSH itself accepts, modes, and the pinned-key lookup."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from vmsbx.errors import ConfigError, HostKeyMismatch
from vmsbx.transport import (
    fingerprint,
    generate_keypair,
    public_key_line,
    read_pinned_key,
    read_pinned_keys,
    write_known_hosts,
)

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(60)]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_keypair_writes_0600_openssh_pair(tmp_path: Path) -> None:
    private = tmp_path / "keys" / "id_ed25519"
    line = generate_keypair(private, "vm-one@vmsbx")

    assert line.startswith("ssh-ed25519 ")
    assert line.endswith(" vm-one@vmsbx")
    assert _mode(private) == 0o600
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    pub = private.with_name("id_ed25519.pub")
    assert pub.read_text() == line + "\n"
    assert public_key_line(private) == line
    assert not list(tmp_path.glob("keys/.*vmsbx-tmp"))


def test_public_key_line_derives_from_private_key_when_pub_is_stale(tmp_path: Path) -> None:
    private = tmp_path / "id"
    line = generate_keypair(private, "c")
    other = generate_keypair(tmp_path / "other", "x")
    private.with_name("id.pub").write_text(other + "\n")

    assert public_key_line(private) == " ".join(line.split()[:2])


def test_generate_keypair_replaces_existing_pair(tmp_path: Path) -> None:
    private = tmp_path / "id"
    first = generate_keypair(private, "c")
    second = generate_keypair(private, "c")
    assert first != second
    assert public_key_line(private) == second


def test_ssh_keygen_reads_generated_key_and_agrees_on_fingerprint(tmp_path: Path) -> None:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        pytest.fail("needs ssh-keygen: apt-get install openssh-client")
    private = tmp_path / "id"
    line = generate_keypair(private, "c")

    derived = subprocess.run([keygen, "-y", "-f", str(private)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == line.split()[:2]
    listed = subprocess.run(
        [keygen, "-l", "-E", "sha256", "-f", str(private.with_name("id.pub"))],
        capture_output=True,
        text=True,
        check=True,
    )
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, "alias", line)
    assert fingerprint(read_pinned_key(known_hosts, "alias")) == listed.stdout.split()[1]


def test_known_hosts_is_one_alias_entry_0600(tmp_path: Path) -> None:
    line = generate_keypair(tmp_path / "host", "comment is dropped")
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, "vmsbx-vm-one", line)

    keytype, blob = line.split()[:2]
    assert known_hosts.read_text() == f"vmsbx-vm-one {keytype} {blob}\n"
    assert _mode(known_hosts) == 0o600
    key = read_pinned_key(known_hosts, "vmsbx-vm-one")
    assert key.get_name() == "ssh-ed25519"
    assert key.get_base64() == blob


def test_write_known_hosts_replaces_previous_pin(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, "a", generate_keypair(tmp_path / "h1", "x"))
    second = generate_keypair(tmp_path / "h2", "x")
    write_known_hosts(known_hosts, "a", second)

    assert [k.get_base64() for k in read_pinned_keys(known_hosts, "a")] == [second.split()[1]]


def test_hashed_known_hosts_entry_matches_alias(tmp_path: Path) -> None:
    line = generate_keypair(tmp_path / "host", "x")
    keytype, blob = line.split()[:2]
    hashed = paramiko.HostKeys.hash_host("vmsbx-vm-one")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{hashed} {keytype} {blob}\n")

    assert read_pinned_key(known_hosts, "vmsbx-vm-one").get_base64() == blob


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "does not exist"),
        ("", "no entry"),
        ("# only a comment\n", "no entry"),
        ("someone-else ssh-ed25519 {blob}\n", "no entry"),
    ],
)
def test_unpinned_alias_is_refused(tmp_path: Path, content: str | None, why: str) -> None:
    blob = generate_keypair(tmp_path / "host", "x").split()[1]
    known_hosts = tmp_path / "known_hosts"
    if content is not None:
        known_hosts.write_text(content.format(blob=blob))

    with pytest.raises(HostKeyMismatch) as caught:
        read_pinned_key(known_hosts, "vmsbx-vm-one")
    assert why in str(caught.value)
    assert "vmsbx-vm-one" in str(caught.value)
    assert caught.value.exit_code == 7


@pytest.mark.parametrize("alias", ["has space", "a,b", "", "|1|x", "@revoked", "new\nline"])
def test_write_known_hosts_rejects_unsafe_alias(tmp_path: Path, alias: str) -> None:
    line = generate_keypair(tmp_path / "host", "x")
    with pytest.raises(ConfigError):
        write_known_hosts(tmp_path / "known_hosts", alias, line)


def test_write_known_hosts_rejects_garbage_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_known_hosts(tmp_path / "known_hosts", "a", "ssh-ed25519 not-base64!")
    with pytest.raises(ConfigError):
        write_known_hosts(tmp_path / "known_hosts", "a", "justonefield")


def test_generate_keypair_rejects_multiline_comment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        generate_keypair(tmp_path / "id", "a\nb")
