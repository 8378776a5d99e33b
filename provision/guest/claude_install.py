#!/usr/bin/python3
"""vmsbx Claude Code installer: the guest side of both ways Claude Code reaches the guest.
Pushed with guest.py; run as root by the host:

  receive VERSION PLATFORM INTEGRITY SIZE
        stdin: exactly SIZE bytes, the platform package's tarball, which the host verified
        against INTEGRITY and which is checked again here (the guest has no network: the push
        path). The tarball travels, not the program: 186 MB instead of 402 MB over SSH, and
        under TCG the bytes through sshd cost more than gunzip in the guest.
  fetch VERSION PLATFORM INTEGRITY REGISTRY
        downloads the platform package from the npm registry at REGISTRY (http or https; a
        mirror is fine) and refuses it unless its sha512 equals INTEGRITY (which the host took
        from its pinned lock, never from this registry).

Either way only `package/claude` comes out of the verified tarball, only if it is a regular
file within the size cap: no other member is written, so no member name can lead anywhere.

Then the program lands at /usr/local/lib/vmsbx/claude/VERSION/claude (root-owned, 0755,
written to a temporary name and renamed, so a half-written file is never run), `claude
--version` is run as the unprivileged user `nobody` (Claude Code refuses to run as root with
--dangerously-skip-permissions, and must work without root anyway), then the marker
/usr/local/lib/vmsbx/claude/INSTALLED records "VERSION PLATFORM INTEGRITY" and older versions
are removed. Prints one JSON object; exits non-zero with {"error": ...} on any failure.

Standard library only (python 3.11 in Debian 12).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

from contract import (
    BINARY_MAX,
    CLAUDE_MARKER,
    METADATA_MAX,
    TARBALL_MAX,
    ContractError,
    claude_binary,
    claude_marker,
    sha512_digest,
)
from contract import CLAUDE_MEMBER as MEMBER
from contract import CLAUDE_ROOT as ROOT

CHUNK = 1 << 20
VERSION = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]{1,64})?$")
PLATFORMS = ("linux-x64", "linux-arm64")


class InstallError(Exception):
    """Claude Code could not be installed; the message says why."""


def _sha512(integrity: str) -> bytes:
    try:
        return sha512_digest(integrity)  # the host checks the same integrity the same way
    except ContractError as exc:
        raise InstallError(str(exc)) from None


def _check(version: str, platform: str) -> str:
    if not VERSION.fullmatch(version):
        raise InstallError(f"invalid version {version!r}")
    if platform not in PLATFORMS:
        raise InstallError(f"invalid platform {platform!r}")
    return claude_binary(version)


def _stage(folder: str) -> tuple[int, str]:
    os.makedirs(ROOT, mode=0o755, exist_ok=True)
    os.makedirs(folder, mode=0o755, exist_ok=True)
    for path in (ROOT, folder):
        os.chown(path, 0, 0)
        os.chmod(path, 0o755)  # noqa: S103 - every run's dynamic user must reach the binary
    fd, partial = tempfile.mkstemp(prefix=".claude-", dir=folder)
    return fd, partial


def _copy(source, fd: int, size: int | None, cap: int) -> int:  # type: ignore[no-untyped-def]
    """Copy `source` to `fd` (exactly `size` bytes when given, at most `cap`); returns the count."""
    done = 0
    while size is None or done < size:
        chunk = source.read(CHUNK if size is None else min(CHUNK, size - done))
        if not chunk:
            break
        done += len(chunk)
        if done > cap:
            raise InstallError(f"more than {cap} bytes")
        _write_all(fd, chunk)
    if size is not None and done != size:
        raise InstallError(f"received {done} of {size} bytes")
    return done


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _commit(fd: int, partial: str, binary: str) -> None:
    os.fchown(fd, 0, 0)
    os.fchmod(fd, 0o755)
    os.fsync(fd)
    os.close(fd)
    os.replace(partial, binary)


def _version_check(binary: str) -> str:
    """`claude --version` as `nobody`, with a scratch HOME: it must run without root."""
    with tempfile.TemporaryDirectory(prefix="vmsbx-claude-check-") as home:
        os.chmod(home, 0o777)  # noqa: S103 - nobody's scratch HOME; runs cannot see this /tmp
        result = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", binary, "--version"],
            capture_output=True,
            env={"HOME": home, "PATH": "/usr/bin:/bin", "DISABLE_AUTOUPDATER": "1"},
            cwd=home,
            timeout=300,
            check=False,
        )
    output = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0 or not output:
        error = result.stderr.decode(errors="replace").strip()[-500:]
        raise InstallError(f"`claude --version` as nobody failed (exit {result.returncode}): {error}")
    return output[:200]


def _finish(binary: str, version: str, platform: str, integrity: str) -> dict[str, object]:
    reported = _version_check(binary)
    if version not in reported:
        raise InstallError(f"`claude --version` says {reported!r}, expected {version}")
    fd, partial = tempfile.mkstemp(prefix=".marker-", dir=ROOT)
    with os.fdopen(fd, "w") as handle:
        handle.write(claude_marker(version, platform, integrity) + "\n")
    os.chmod(partial, 0o644)
    os.replace(partial, CLAUDE_MARKER)
    for entry in os.listdir(ROOT):
        path = f"{ROOT}/{entry}"
        if entry != version and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
    return {"installed": binary, "version": version, "platform": platform, "reported": reported}


def _spool(source, integrity: str, label: str, size: int | None):  # type: ignore[no-untyped-def]
    """Copy the tarball from `source` into a temporary file (at most TARBALL_MAX bytes, exactly
    `size` when given) and refuse it unless its sha512 is `integrity`."""
    expected = _sha512(integrity)
    spool = tempfile.TemporaryFile(dir=ROOT if os.path.isdir(ROOT) else None)  # noqa: SIM115 - returned open
    digest = hashlib.sha512()
    done = 0
    while size is None or done < size:
        chunk = source.read(CHUNK if size is None else min(CHUNK, size - done))
        if not chunk:
            break
        done += len(chunk)
        if done > TARBALL_MAX:
            raise InstallError(f"{label} is larger than {TARBALL_MAX} bytes")
        digest.update(chunk)
        spool.write(chunk)
    if size is not None and done != size:
        raise InstallError(f"received {done} of {size} bytes of {label}")
    if digest.digest() != expected:
        raise InstallError(
            f"the tarball from {label} does not match the pinned integrity {integrity}: refused"
        )
    spool.seek(0)
    return spool


def _unpack(tarball, binary: str) -> None:  # type: ignore[no-untyped-def]
    """Install `package/claude` from a verified tarball as `binary`: only that member, only a
    regular file."""
    fd, partial = _stage(os.path.dirname(binary))
    try:
        with tarfile.open(fileobj=tarball, mode="r|gz") as archive:
            for member in archive:
                if member.name != MEMBER:
                    continue
                if not member.isreg() or not 0 < member.size <= BINARY_MAX:
                    raise InstallError(f"{MEMBER} is not a plain file of sane size")
                source = archive.extractfile(member)
                if source is None:
                    raise InstallError(f"{MEMBER} cannot be read from the tarball")
                _copy(source, fd, member.size, BINARY_MAX)
                break
            else:
                raise InstallError(f"the tarball has no {MEMBER}")
        _commit(fd, partial, binary)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise


def receive(version: str, platform: str, integrity: str, size: str) -> dict[str, object]:
    binary = _check(version, platform)
    expected = int(size)
    if not 0 < expected <= TARBALL_MAX:
        raise InstallError(f"invalid size {size!r}")
    with _spool(sys.stdin.buffer, integrity, "the host", expected) as tarball:
        _unpack(tarball, binary)
    return _finish(binary, version, platform, integrity)


def _get(url: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    if not url.startswith(("http://", "https://")):
        raise InstallError(f"refusing {url!r}: not http(s)")
    # The scheme is checked above: http(s) only, never file: or custom handlers.
    request = urllib.request.Request(url, headers={"User-Agent": "vmsbx-guest"})  # noqa: S310
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310


def fetch(version: str, platform: str, integrity: str, registry: str) -> dict[str, object]:
    binary = _check(version, platform)
    _sha512(integrity)
    name = urllib.parse.quote(f"@anthropic-ai/claude-code-{platform}", safe="@")
    meta_url = f"{registry.rstrip('/')}/{name}/{version}"
    with _get(meta_url) as response:
        body = response.read(METADATA_MAX + 1)
    if len(body) > METADATA_MAX:
        raise InstallError(f"{meta_url} is larger than {METADATA_MAX} bytes")
    try:
        tarball_url = str(json.loads(body)["dist"]["tarball"])
    except (ValueError, KeyError, TypeError):
        raise InstallError(f"{meta_url} has no dist.tarball") from None
    with _get(tarball_url) as response, _spool(response, integrity, tarball_url, None) as tarball:
        _unpack(tarball, binary)
    return _finish(binary, version, platform, integrity)


def main(argv: list[str]) -> int:
    commands = {"receive": receive, "fetch": fetch}
    try:
        if len(argv) != 5 or argv[0] not in commands:
            raise InstallError(
                "usage: claude_install.py receive|fetch VERSION PLATFORM INTEGRITY SIZE|REGISTRY"
            )
        result = commands[argv[0]](*argv[1:])
    except (InstallError, OSError, ValueError, tarfile.TarError, subprocess.SubprocessError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
