"""The image recipe and its hash: the cache key that decides when a new base image is built."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from vmsbx.errors import UsageError
from vmsbx.providers import image
from vmsbx.providers.image import load_recipe, recipe_hash, templates_dir


@pytest.fixture
def templates_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of vm-templates/qemu that load_recipe and recipe_hash read instead."""
    copy = tmp_path / "qemu"
    shutil.copytree(templates_dir(), copy)
    monkeypatch.setattr(image, "templates_dir", lambda: copy)
    return copy


def test_hash_is_stable_across_calls() -> None:
    first = recipe_hash(load_recipe("bookworm"))
    assert recipe_hash(load_recipe("bookworm")) == first
    assert recipe_hash(load_recipe("bookworm")) == first
    assert re.fullmatch(r"[0-9a-f]{16}", first)


def test_hash_differs_between_images() -> None:
    assert recipe_hash(load_recipe("bookworm")) != recipe_hash(load_recipe("trixie"))


def test_a_copy_of_the_templates_hashes_like_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Guards the tests below: where the templates live is not part of the hash, only content.
    shipped = recipe_hash(load_recipe("bookworm"))
    copy = tmp_path / "elsewhere"
    shutil.copytree(templates_dir(), copy)
    monkeypatch.setattr(image, "templates_dir", lambda: copy)
    assert recipe_hash(load_recipe("bookworm")) == shipped


def test_hash_changes_when_the_recipe_changes(templates_copy: Path) -> None:
    before = recipe_hash(load_recipe("bookworm"))
    recipe_file = templates_copy / "recipe.toml"
    text = recipe_file.read_text()
    assert '"less",\n]' in text
    recipe_file.write_text(text.replace('"less",\n]', '"less", "vim-tiny",\n]', 1))
    changed = load_recipe("bookworm")
    assert "vim-tiny" in changed.packages
    assert recipe_hash(changed) != before


def test_hash_changes_when_the_disk_size_changes(templates_copy: Path) -> None:
    before = recipe_hash(load_recipe("bookworm"))
    recipe_file = templates_copy / "recipe.toml"
    recipe_file.write_text(recipe_file.read_text().replace('disk_size = "8G"', 'disk_size = "9G"', 1))
    assert recipe_hash(load_recipe("bookworm")) != before


@pytest.mark.parametrize("script", ["customize.sh", "load-keys.sh", "sshd-vmsbx.conf"])
def test_hash_changes_when_a_build_script_changes(templates_copy: Path, script: str) -> None:
    recipe = load_recipe("bookworm")
    before = recipe_hash(recipe)
    with (templates_copy / script).open("a") as handle:
        handle.write("# a change\n")
    assert recipe_hash(recipe) != before


@pytest.mark.parametrize("name", ["bookworm", "trixie"])
def test_recipe_installs_the_walls_and_a_kernel(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.suite == name
    for package in ("systemd", "openssh-server", "linux-image-amd64"):
        assert package in recipe.packages
    assert all(source.startswith("deb http") for source in recipe.sources)


def test_unknown_image_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as caught:
        load_recipe("sid")
    assert caught.value.exit_code == 2
    assert "sid" in caught.value.message
    assert caught.value.hint is not None
    assert "bookworm" in caught.value.hint
    assert "trixie" in caught.value.hint
