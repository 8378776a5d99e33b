"""Key material for one VM: its client keypair and the host key pinned for it.

The known_hosts file is plain OpenSSH format keyed by a host-key alias rather than by
address, so the same file works for paramiko here and for `ssh -o HostKeyAlias=ALIAS`
by hand, and survives the forwarded port changing between boots.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from vmsbx.errors import ConfigError, HostKeyMismatch

__all__ = [
    "fingerprint",
    "generate_keypair",
    "public_key_line",
    "read_pinned_key",
    "read_pinned_keys",
    "write_known_hosts",
]

# An alias is one known_hosts "hostname" field: whitespace would split the line, a comma would
# make it two names, and a leading "|" or "@" would read as a hashed name or a marker.
_ALIAS_RE = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+$")


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the first byte, replacing any old file atomically.

    The file is created 0600 rather than chmod-ed afterwards so a key is never readable by others,
    not even for an instant.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.vmsbx-tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_single_line(value: str, what: str) -> None:
    if "\n" in value or "\r" in value:
        raise ConfigError(f"{what} must be a single line, got {value!r}", hint="remove the newline")


def generate_keypair(private_path: Path, comment: str) -> str:
    """Create a new ed25519 keypair: the private key at `private_path` (0600, OpenSSH format) and
    `private_path.pub` beside it. Replaces any existing pair. Returns the public line
    (`ssh-ed25519 AAAA... comment`)."""
    _check_single_line(comment, "key comment")
    private_key = ed25519.Ed25519PrivateKey.generate()
    private_bytes = private_key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.OpenSSH,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public_raw = private_key.public_key().public_bytes(
        encoding=serialization.Encoding.OpenSSH,
        format=serialization.PublicFormat.OpenSSH,
    )
    public_line = f"{public_raw.decode('ascii')} {comment}".rstrip()
    _write_private(private_path, private_bytes)
    # The public half is not secret, but 0600 keeps the pair uniform and ssh never complains.
    _write_private(_pub_path(private_path), (public_line + "\n").encode("ascii"))
    return public_line


def _pub_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def public_key_line(private_path: Path) -> str:
    """Return the public line (`type base64 [comment]`) of the private key at `private_path`.

    The key itself is derived from the private key, so a stale or missing `.pub` file cannot
    mislead; the comment is taken from `.pub` when that file holds the same key.
    """
    try:
        loaded = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"private key {private_path} does not exist",
            hint="recreate the VM (`vmsbx destroy NAME` then create it) to generate a new key",
        ) from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{private_path} is not an unencrypted OpenSSH private key: {exc}",
            hint="vmsbx only uses the unencrypted keys it generates; recreate the VM",
        ) from exc
    public_raw = (
        loaded.public_key()
        .public_bytes(
            encoding=serialization.Encoding.OpenSSH,
            format=serialization.PublicFormat.OpenSSH,
        )
        .decode("ascii")
    )
    pub_file = _pub_path(private_path)
    if pub_file.is_file():
        fields = pub_file.read_text(encoding="utf-8").strip().split(maxsplit=2)
        if len(fields) == 3 and " ".join(fields[:2]) == public_raw:
            return f"{public_raw} {fields[2]}"
    return public_raw


def _parse_public_line(public_line: str) -> tuple[str, str, paramiko.PKey]:
    """Split `type base64 [comment]` and prove it decodes as a key paramiko understands."""
    fields = public_line.strip().split()
    if len(fields) < 2:
        raise ConfigError(
            f"not an OpenSSH public key line: {public_line!r}",
            hint="pass the guest's host key as `TYPE BASE64`, e.g. the content of "
            "/etc/ssh/ssh_host_ed25519_key.pub",
        )
    keytype, blob = fields[0], fields[1]
    try:
        key = paramiko.PKey.from_type_string(keytype, base64.b64decode(blob, validate=True))
    except (binascii.Error, paramiko.SSHException, ValueError) as exc:
        raise ConfigError(
            f"cannot read public key of type {keytype!r}: {exc}",
            hint="pass an ssh-ed25519, ecdsa-sha2-* or rsa public key line",
        ) from exc
    return keytype, blob, key


def write_known_hosts(path: Path, alias: str, public_line: str) -> None:
    """Pin `public_line` as the only host key of `alias`: (re)write `path` (0600) with exactly one
    entry `alias type base64`. Idempotent; any previous content is replaced."""
    if not _ALIAS_RE.fullmatch(alias):
        raise ConfigError(
            f"host-key alias {alias!r} cannot be a known_hosts name",
            hint="use letters, digits, '.', '-', '_' only",
        )
    keytype, blob, _ = _parse_public_line(public_line)
    _write_private(path, f"{alias} {keytype} {blob}\n".encode("ascii"))


def read_pinned_keys(path: Path, alias: str) -> list[paramiko.PKey]:
    """Every host key pinned for `alias` in the known_hosts file `path`, in file order.

    Hashed names (`|1|...`) match as OpenSSH matches them. Raises `HostKeyMismatch` when nothing
    is pinned: connecting to an unpinned host is refused, never trusted on first use.
    """
    try:
        host_keys = paramiko.HostKeys(str(path))
    except FileNotFoundError as exc:
        raise _unpinned(path, alias, "the file does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _unpinned(path, alias, f"the file cannot be read: {exc}") from exc
    entry = host_keys.lookup(alias)
    if not entry:
        raise _unpinned(path, alias, "it has no entry for that name")
    return list(entry.values())


def read_pinned_key(path: Path, alias: str) -> paramiko.PKey:
    """The host key pinned for `alias` in `path` (the first one, if several types are pinned).
    Raises `HostKeyMismatch` when none is pinned."""
    return read_pinned_keys(path, alias)[0]


def _unpinned(path: Path, alias: str, why: str) -> HostKeyMismatch:
    return HostKeyMismatch(
        f"refusing to connect: no host key is pinned for {alias!r} in {path} ({why})",
        hint="vmsbx pins the guest's host key when it creates the VM; if the file was lost, "
        "run `vmsbx destroy NAME` and create the VM again rather than trusting whatever answers",
    )


def fingerprint(key: paramiko.PKey) -> str:
    """The key's SHA256 fingerprint exactly as `ssh-keygen -l` prints it: `SHA256:<base64>`."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")
