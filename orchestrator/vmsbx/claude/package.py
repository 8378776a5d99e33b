"""Claude Code's platform package from the npm registry: pinned, fetched once, verified on every use.

`@anthropic-ai/claude-code-linux-x64` and `-linux-arm64` each hold the whole program as
`package/claude` (a self-contained native binary: no Node in the guest). The registry publishes
each tarball's sha512 as `dist.integrity`; `lock.toml` beside this module pins it for the default
version, and that pin is the trust root. Another configured version is checked against the
registry's metadata instead, read over verified HTTPS only, and the log says so.

The tarball is cached at `cache_root()/claude/<version>/<platform>/package.tgz` and its sha512
is checked every time it is used, not only after the download: a cache that does not match is
refused (never silently replaced), with the command that clears it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import tarfile
import tempfile
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.contract import BINARY_MAX, CLAUDE_MEMBER, METADATA_MAX, TARBALL_MAX, ContractError, sha512_digest
from vmsbx.errors import ToolMissing
from vmsbx.paths import cache_root

log = logging.getLogger(__name__)

SCOPE = "@anthropic-ai"
PACKAGE_PREFIX = "claude-code-"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
BINARY_MEMBER = CLAUDE_MEMBER
_CHUNK = 1 << 20

_PLATFORMS = {"x86_64": "linux-x64", "amd64": "linux-x64", "aarch64": "linux-arm64", "arm64": "linux-arm64"}

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a long transfer runs."""

FetchJson = Callable[[str], object]
"""Returns the parsed JSON document at a URL."""

Download = Callable[[str, IO[bytes], Progress], None]
"""Writes the body at a URL into an open binary file, reporting progress."""


class ClaudePackageError(ToolMissing):
    """Claude Code's package could not be fetched or did not verify; nothing unverified is used."""


class ClaudeTarball(BaseModel):
    """A cached platform tarball whose sha512 has just been checked against its integrity."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: str = Field(description="Claude Code version, e.g. 2.1.332.")
    platform: str = Field(description="npm platform suffix: linux-x64 or linux-arm64.")
    integrity: str = Field(description="npm integrity string (sha512-<base64>) the tarball matched.")
    pinned: bool = Field(description="True if the integrity came from vmsbx's lock, not the registry.")
    path: Path = Field(description="The verified tarball in the host's cache.")
    size: int = Field(ge=0, description="Size of the tarball in bytes.")


def platform_for_arch(arch: str) -> str:
    """The npm platform suffix for a guest architecture (`uname -m` or Debian's name)."""
    try:
        return _PLATFORMS[arch.strip().lower()]
    except KeyError:
        raise ClaudePackageError(
            f"Claude Code has no Linux package for the guest architecture {arch!r}",
            hint="use an x86_64 or aarch64 guest",
        ) from None


def package_name(platform: str) -> str:
    return f"{SCOPE}/{PACKAGE_PREFIX}{platform}"


def metadata_url(registry: str, platform: str, version: str) -> str:
    """The registry document of one version of a platform package (`/@scope%2fname/<version>`)."""
    name = urllib.parse.quote(package_name(platform), safe="@")
    return f"{registry.rstrip('/')}/{name}/{urllib.parse.quote(version, safe='')}"


def parse_integrity(integrity: str) -> bytes:
    """The sha512 digest in an npm integrity string (vmsbx.contract.sha512_digest: the guest's
    installer parses it the same way)."""
    try:
        return sha512_digest(integrity)
    except ContractError as exc:
        raise ClaudePackageError(
            str(exc), hint="vmsbx verifies Claude Code only against a sha512 integrity"
        ) from None


def format_integrity(digest: bytes) -> str:
    return "sha512-" + base64.b64encode(digest).decode()


@cache
def lock() -> dict[str, dict[str, str]]:
    """version -> platform -> integrity, from lock.toml (each value checked to be a sha512)."""
    with (Path(__file__).with_name("lock.toml")).open("rb") as handle:
        versions = tomllib.load(handle)["versions"]
    for pins in versions.values():
        for integrity in pins.values():
            parse_integrity(integrity)
    return {str(version): dict(pins) for version, pins in versions.items()}


def pinned_integrity(version: str, platform: str) -> str | None:
    return lock().get(version, {}).get(platform)


def cache_dir() -> Path:
    return cache_root() / "claude"


def tarball_path(version: str, platform: str, *, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / version / platform / "package.tgz"


def file_sha512(path: Path) -> bytes:
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


def https_json(url: str) -> object:
    """GET a JSON document over verified HTTPS (no other scheme), at most METADATA_MAX bytes."""
    if not url.startswith("https://"):
        raise ClaudePackageError(f"refusing to read {url!r}: not https")
    headers = {"User-Agent": "vmsbx", "Accept": "application/json"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (https only)
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (https only)
        body: bytes = response.read(METADATA_MAX + 1)
    if len(body) > METADATA_MAX:
        raise ClaudePackageError(f"{url} is larger than {METADATA_MAX} bytes")
    parsed: object = json.loads(body)
    return parsed


def http_download(url: str, sink: IO[bytes], progress: Progress) -> None:
    """Stream the body at an http(s) URL into `sink`, refusing more than TARBALL_MAX bytes.
    (Plain http is acceptable here only because the caller checks a pinned or HTTPS-sourced hash.)"""
    if not url.startswith(("https://", "http://")):
        raise ClaudePackageError(f"refusing to download {url!r}: not http(s)")
    request = urllib.request.Request(url, headers={"User-Agent": "vmsbx"})  # noqa: S310 (scheme checked)
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        while chunk := response.read(_CHUNK):
            done += len(chunk)
            if done > TARBALL_MAX:
                raise ClaudePackageError(f"{url} is larger than {TARBALL_MAX} bytes")
            sink.write(chunk)
            progress(done, total)


def _dist(document: object, url: str) -> tuple[str, str]:
    """(tarball URL, integrity) from a registry version document."""
    try:
        dist = document["dist"] if isinstance(document, dict) else None
        tarball, integrity = str(dist["tarball"]), str(dist["integrity"])  # type: ignore[index]
    except (KeyError, TypeError):
        raise ClaudePackageError(
            f"the registry's answer at {url} has no dist.tarball/dist.integrity"
        ) from None
    return tarball, integrity


def resolve(
    version: str, platform: str, *, registry: str = DEFAULT_REGISTRY, fetch_json: FetchJson | None = None
) -> tuple[str, bool]:
    """(integrity, pinned) for a version: the lock's pin when there is one, else the registry's
    metadata, which must then come over verified HTTPS (it is the only trust there is)."""
    pinned = pinned_integrity(version, platform)
    if pinned is not None:
        return pinned, True
    url = metadata_url(registry, platform, version)
    if not url.startswith("https://"):
        raise ClaudePackageError(
            f"Claude Code {version} is not pinned by vmsbx, and {registry} is not an https registry",
            hint="use the pinned version, or set agent.registry to an https registry",
        )
    try:
        _tarball, integrity = _dist((fetch_json or https_json)(url), url)
    except OSError as exc:
        raise ClaudePackageError(
            f"could not read {url}: {exc}", hint="the host needs HTTPS access to the npm registry once"
        ) from exc
    parse_integrity(integrity)
    log.warning(
        "Claude Code %s (%s) is not pinned by vmsbx: trusting the integrity %s from %s",
        version,
        platform,
        integrity,
        url,
    )
    return integrity, False


def verify_tarball(path: Path, integrity: str) -> None:
    """Raise ClaudePackageError unless `path` is a regular file whose sha512 is `integrity`."""
    expected = parse_integrity(integrity)
    if path.is_symlink() or not path.is_file():
        raise ClaudePackageError(f"{path} is not a regular file")
    if file_sha512(path) != expected:
        raise ClaudePackageError(
            f"the cached Claude Code package {path} does not match its integrity {integrity} "
            "(corrupted or tampered with): vmsbx will not use it",
            hint=f"delete it (`rm -r {path.parent}`) and run `vmsbx up` again to fetch a fresh copy",
        )


def ensure_tarball(
    version: str,
    platform: str,
    *,
    registry: str = DEFAULT_REGISTRY,
    cache: Path | None = None,
    fetch_json: FetchJson | None = None,
    download: Download | None = None,
    progress: Progress = lambda _done, _total: None,
) -> ClaudeTarball:
    """The verified tarball of `version` for `platform`: the cached one if it matches its
    integrity, fetched (once) if absent. A cached file that does not match is refused, not
    replaced: something wrote to the cache, and the user should know."""
    integrity, pinned = resolve(version, platform, registry=registry, fetch_json=fetch_json)
    path = tarball_path(version, platform, cache=cache)
    if not path.exists() and not path.is_symlink():
        _fetch(version, platform, integrity, path, registry, fetch_json, download or http_download, progress)
    verify_tarball(path, integrity)
    return ClaudeTarball(
        version=version,
        platform=platform,
        integrity=integrity,
        pinned=pinned,
        path=path,
        size=path.stat().st_size,
    )


def _fetch(
    version: str,
    platform: str,
    integrity: str,
    path: Path,
    registry: str,
    fetch_json: FetchJson | None,
    download: Download,
    progress: Progress,
) -> None:
    url = metadata_url(registry, platform, version)
    try:
        tarball_url, published = _dist((fetch_json or https_json)(url), url)
        if parse_integrity(published) != parse_integrity(integrity):
            raise ClaudePackageError(
                f"{url} publishes integrity {published} for Claude Code {version}, vmsbx pins {integrity}",
                hint="do not use this package; a vmsbx update is the only way to accept a new hash",
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".download-", delete=False) as handle:
            partial = Path(handle.name)
            try:
                download(tarball_url, handle, progress)
                handle.flush()
                os.fsync(handle.fileno())
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
    except OSError as exc:
        raise ClaudePackageError(
            f"could not fetch Claude Code {version} ({platform}) from {registry}: {exc}",
            hint="the host needs HTTPS access to the npm registry once; the package is cached afterwards",
        ) from exc
    if file_sha512(partial) != parse_integrity(integrity):
        partial.unlink(missing_ok=True)
        raise ClaudePackageError(
            f"the download of Claude Code {version} ({platform}) does not match its integrity {integrity}",
            hint="try again; a repeat failure means the download is being tampered with",
        )
    partial.replace(path)


@contextlib.contextmanager
def open_binary(tarball: ClaudeTarball) -> Iterator[tuple[IO[bytes], int]]:
    """The program inside a verified tarball, as (stream, size). Only `package/claude` is read,
    and only if it is a regular file within BINARY_MAX: nothing is written to disk, so no member
    name can lead anywhere."""
    # Stream mode ("r|gz"): one pass of gunzip; random access would decompress the file twice.
    with tarfile.open(tarball.path, "r|gz") as archive:
        for member in archive:
            if member.name != BINARY_MEMBER:
                continue
            if not member.isreg() or not 0 < member.size <= BINARY_MAX:
                raise ClaudePackageError(
                    f"{BINARY_MEMBER} in {tarball.path} is not a plain file of sane size"
                )
            stream = archive.extractfile(member)
            if stream is None:
                break
            with stream:
                yield stream, member.size
            return
    raise ClaudePackageError(f"{tarball.path} has no {BINARY_MEMBER}")
