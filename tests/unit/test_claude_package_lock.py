"""Claude Code's package logic against an in-memory stand-in for the npm registry (no network).

The stand-in serves a version document and a small tarball built in the test; a pin for it is
added to the lock for the test's duration. tests/packaging/test_claude_package.py does the same
against the real registry and the real pins.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from vmsbx.claude import package
from vmsbx.claude.install import choose_method
from vmsbx.claude.package import (
    ClaudePackageError,
    ensure_tarball,
    format_integrity,
    lock,
    metadata_url,
    open_binary,
    parse_integrity,
    platform_for_arch,
    resolve,
    tarball_path,
)
from vmsbx.config.loader import load_settings
from vmsbx.contract import claude_binary, claude_marker
from vmsbx.errors import ConfigError

VERSION = "9.9.9"
PROGRAM = b"\x7fELF a fake claude " * 1000


def integrity_of(data: bytes) -> str:
    return format_integrity(hashlib.sha512(data).digest())


def make_tarball(members: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            archive.addfile(info, io.BytesIO(data))
        if symlink is not None:
            info = tarfile.TarInfo("package/claude")
            info.type = tarfile.SYMTYPE
            info.linkname = symlink
            archive.addfile(info)
    return buffer.getvalue()


GOOD = make_tarball({"package/package.json": b"{}", "package/claude": PROGRAM, "../evil": b"x"})
TARBALL_URL = "https://registry.example/@anthropic-ai/claude-code-linux-x64/-/x.tgz"


@dataclass
class FakeRegistry:
    """Serves one version document and its tarball; records every URL asked for."""

    tarball: bytes
    published: str
    served: bytes | None = None
    calls: list[str] = field(default_factory=list)

    def json(self, url: str) -> object:
        self.calls.append(url)
        return {"dist": {"tarball": TARBALL_URL, "integrity": self.published}}

    def download(self, url: str, sink: IO[bytes], progress: package.Progress) -> None:
        self.calls.append(url)
        assert url == TARBALL_URL
        body = self.served if self.served is not None else self.tarball
        sink.write(body)
        progress(len(body), len(body))


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    pins = {**lock(), VERSION: {"linux-x64": integrity_of(GOOD)}}
    monkeypatch.setattr(package, "lock", lambda: pins)
    return FakeRegistry(tarball=GOOD, published=integrity_of(GOOD))


def fetch(registry: FakeRegistry, cache: Path, version: str = VERSION) -> package.ClaudeTarball:
    return ensure_tarball(
        version, "linux-x64", cache=cache, fetch_json=registry.json, download=registry.download
    )


def test_lock_pins_the_default_version_for_both_linux_platforms() -> None:
    from vmsbx.config.models import AgentSettings

    default = AgentSettings().claude_version
    assert set(lock()[default]) == {"linux-x64", "linux-arm64"}
    for integrity in lock()[default].values():
        assert len(parse_integrity(integrity)) == 64


@pytest.mark.parametrize(
    ("arch", "platform"),
    [("x86_64", "linux-x64"), ("amd64", "linux-x64"), ("aarch64", "linux-arm64"), ("arm64", "linux-arm64")],
)
def test_platform_follows_the_guest_architecture(arch: str, platform: str) -> None:
    assert platform_for_arch(arch) == platform


def test_unknown_architecture_is_refused_by_name() -> None:
    with pytest.raises(ClaudePackageError, match="riscv64"):
        platform_for_arch("riscv64")


def test_integrity_parsing() -> None:
    digest = hashlib.sha512(b"x").digest()
    text = "sha512-" + base64.b64encode(digest).decode()
    assert parse_integrity(text) == digest
    assert parse_integrity(f"sha1-AAAA {text}") == digest  # other algorithms are ignored, not trusted
    for bad in (
        "sha1-" + base64.b64encode(hashlib.sha1(b"x").digest()).decode(),
        "sha512-!!!",
        "sha512-AAAA",
        "",
    ):
        with pytest.raises(ClaudePackageError):
            parse_integrity(bad)
    other = "sha512-" + base64.b64encode(hashlib.sha512(b"y").digest()).decode()
    with pytest.raises(ClaudePackageError, match="exactly one"):
        parse_integrity(f"{text} {other}")


def test_metadata_url_escapes_the_scope() -> None:
    assert (
        metadata_url("https://registry.npmjs.org/", "linux-x64", "2.1.332")
        == "https://registry.npmjs.org/@anthropic-ai%2Fclaude-code-linux-x64/2.1.332"
    )


def test_fetch_verifies_and_caches(registry: FakeRegistry, tmp_path: Path) -> None:
    tarball = fetch(registry, tmp_path)
    assert tarball.pinned
    assert tarball.path == tmp_path / VERSION / "linux-x64" / "package.tgz"
    assert tarball.path.read_bytes() == GOOD
    assert registry.calls[-1] == TARBALL_URL
    registry.calls.clear()
    assert fetch(registry, tmp_path) == tarball
    assert registry.calls == []  # pinned and cached: no network at all


def test_only_the_program_is_read_out_of_the_tarball(registry: FakeRegistry, tmp_path: Path) -> None:
    tarball = fetch(registry, tmp_path)
    with open_binary(tarball) as (stream, size):
        assert size == len(PROGRAM)
        assert stream.read() == PROGRAM
    assert not (tmp_path / "evil").exists()
    assert sorted(path.name for path in tarball.path.parent.iterdir()) == ["package.tgz"]


def test_a_symlink_in_place_of_the_program_is_refused(registry: FakeRegistry, tmp_path: Path) -> None:
    evil = make_tarball({"package/package.json": b"{}"}, symlink="/etc/shadow")
    registry.tarball = evil
    registry.published = integrity_of(evil)
    pins = {VERSION: {"linux-x64": integrity_of(evil)}}
    package.lock = lambda: pins  # type: ignore[assignment]  # restored by the fixture's monkeypatch
    with pytest.raises(ClaudePackageError, match="not a plain file"), open_binary(fetch(registry, tmp_path)):
        pass


def test_corrupted_cache_is_refused_with_the_command_that_clears_it(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    tarball = fetch(registry, tmp_path)
    data = bytearray(tarball.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    tarball.path.write_bytes(bytes(data))
    registry.calls.clear()
    with pytest.raises(ClaudePackageError, match="does not match its integrity") as caught:
        fetch(registry, tmp_path)
    assert f"rm -r {tarball.path.parent}" in str(caught.value)
    assert registry.calls == []  # refused, not silently replaced


def test_tampered_download_is_refused_and_not_cached(registry: FakeRegistry, tmp_path: Path) -> None:
    registry.served = make_tarball({"package/claude": b"evil"})
    with pytest.raises(ClaudePackageError, match=r"download .* does not match"):
        fetch(registry, tmp_path)
    assert list((tmp_path / VERSION / "linux-x64").iterdir()) == []


def test_registry_publishing_another_integrity_is_refused(registry: FakeRegistry, tmp_path: Path) -> None:
    registry.published = integrity_of(b"something else")
    with pytest.raises(ClaudePackageError, match="vmsbx pins"):
        fetch(registry, tmp_path)
    assert TARBALL_URL not in registry.calls


def test_unpinned_version_trusts_registry_metadata_over_https_only(registry: FakeRegistry) -> None:
    integrity, pinned = resolve("1.0.0", "linux-x64", fetch_json=registry.json)
    assert (integrity, pinned) == (registry.published, False)
    with pytest.raises(ClaudePackageError, match="not an https registry"):
        resolve("1.0.0", "linux-x64", registry="http://127.0.0.1:1", fetch_json=registry.json)
    # A pinned version needs no registry at all, whatever its scheme.
    assert resolve(VERSION, "linux-x64", registry="http://127.0.0.1:1", fetch_json=registry.json)[1]


def test_cache_path_layout(tmp_path: Path) -> None:
    assert tarball_path("2.1.332", "linux-arm64", cache=tmp_path) == (
        tmp_path / "2.1.332" / "linux-arm64" / "package.tgz"
    )


@pytest.mark.parametrize(
    ("install", "network", "method"),
    [
        ("auto", "restricted", "push"),
        ("auto", "nat", "guest-fetch"),
        ("push", "nat", "push"),
        ("guest-fetch", "restricted", "guest-fetch"),
        ("none", "nat", None),
    ],
)
def test_install_method(install: str, network: str, method: str | None) -> None:
    assert choose_method(install, network) == method


def test_guest_layout_and_marker() -> None:
    assert claude_binary("2.1.332") == "/usr/local/lib/vmsbx/claude/2.1.332/claude"
    assert claude_marker("2.1.332", "linux-x64", "sha512-x") == "2.1.332 linux-x64 sha512-x"


@pytest.mark.parametrize("key", ["install", "registry"])
def test_the_project_file_cannot_choose_how_claude_arrives(tmp_path: Path, key: str) -> None:
    value = '"guest-fetch"' if key == "install" else '"http://evil.example"'
    (tmp_path / "vmsbx.toml").write_text(f"[agent]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"agent.{key}"):
        load_settings(project_dir=tmp_path, flags={}, env={"VMSBX_CONFIG": str(tmp_path / "none.toml")})
