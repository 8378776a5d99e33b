"""The pinned Claude Code, fetched from the real npm registry: the pins match what the registry
publishes and serves, the program comes out of the tarball, and a corrupted cache is refused.

Not a unit test: it reaches registry.npmjs.org over HTTPS (and nothing else): the metadata of
both platform packages, and the linux-x64 tarball (186 MB for 2.1.332) into a throw-away cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsbx.claude.package import (
    DEFAULT_REGISTRY,
    ClaudePackageError,
    ensure_tarball,
    https_json,
    lock,
    metadata_url,
    open_binary,
    parse_integrity,
)
from vmsbx.config.models import AgentSettings

VERSION = AgentSettings().claude_version


@pytest.mark.parametrize("platform", ["linux-x64", "linux-arm64"])
def test_registry_publishes_the_pinned_integrity(platform: str) -> None:
    document = https_json(metadata_url(DEFAULT_REGISTRY, platform, VERSION))
    assert isinstance(document, dict)
    published = document["dist"]["integrity"]
    assert parse_integrity(published) == parse_integrity(lock()[VERSION][platform])
    assert document["dist"]["tarball"].startswith(f"{DEFAULT_REGISTRY}/@anthropic-ai/claude-code-{platform}/")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("claude-cache")


def test_real_tarball_verifies_and_holds_the_x64_program(cache: Path) -> None:
    calls: list[str] = []

    def counting(url: str) -> object:
        calls.append(url)
        return https_json(url)

    tarball = ensure_tarball(VERSION, "linux-x64", cache=cache, fetch_json=counting)
    assert tarball.pinned
    assert calls == [metadata_url(DEFAULT_REGISTRY, "linux-x64", VERSION)]
    with open_binary(tarball) as (stream, size):
        head = stream.read(20)
    assert size > 100 * 1024 * 1024
    assert head[:4] == b"\x7fELF"
    assert int.from_bytes(head[18:20], "little") == 62  # EM_X86_64


def test_corrupted_cache_byte_is_refused(cache: Path) -> None:
    tarball = ensure_tarball(VERSION, "linux-x64", cache=cache)
    with tarball.path.open("r+b") as handle:
        handle.seek(tarball.size // 2)
        byte = handle.read(1)
        handle.seek(tarball.size // 2)
        handle.write(bytes([byte[0] ^ 0x01]))

    def no_network(url: str) -> object:
        raise AssertionError(f"fetched {url}: a pinned, cached version needs no network")

    with pytest.raises(ClaudePackageError, match="does not match its integrity") as caught:
        ensure_tarball(VERSION, "linux-x64", cache=cache, fetch_json=no_network)
    assert "vmsbx up" in str(caught.value)
