"""compute(): what the agent changed, classified; the digest pins it; the diff is safe to print."""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

import pytest

from vmsbx.errors import SyncError
from vmsbx.sync import changeset as changeset_module
from vmsbx.sync.blobs import BlobStore
from vmsbx.sync.changeset import Changeset, compute, entries_digest
from vmsbx.sync.diff import render_diff, render_summary
from vmsbx.sync.manifest import Manifest, ManifestEntry


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def f(path: str, data: bytes = b"x", mode: int = 0o644) -> ManifestEntry:
    return ManifestEntry(path=path, kind="file", mode=mode, size=len(data), sha256=sha(data))


def d(path: str) -> ManifestEntry:
    return ManifestEntry(path=path, kind="dir", mode=0o755)


def ln(path: str, target: str) -> ManifestEntry:
    return ManifestEntry(path=path, kind="symlink", target=target)


def m(*entries: ManifestEntry) -> Manifest:
    return Manifest(entries=entries)


def by_path(changeset: Changeset) -> dict[str, tuple[str, str, str]]:
    return {e.path: (e.change, e.classification, e.reason) for e in changeset.entries}


BASE = m(
    d("src"), f("src/a.py", b"old"), f("README.md"), f("run.sh"), f("vmsbx.toml"), d(".git"), f(".git/HEAD")
)


def test_changes_are_found_and_classified() -> None:
    after = m(
        d("src"),
        f("src/a.py", b"new"),
        f("src/b.py"),
        f("run.sh", mode=0o4755),
        f("vmsbx.toml", b"[sandbox]\nnetwork='open'\n"),
        d(".git"),
        f(".git/HEAD"),
        d(".git/hooks"),
        f(".git/hooks/pre-commit", mode=0o755),
        d(".claude"),
        f(".claude/settings.json"),
        f(".envrc"),
        d(".github"),
        d(".github/workflows"),
        f(".github/workflows/ci.yml"),
        ln("home", "/root/.bashrc"),
        ln("up", "../../outside"),
        ln("inside", "src/../README.md"),
        ln("sneaky", "src/../../x"),
        ManifestEntry(path="fifo", kind="special"),
        f("../escape"),
        f("bad\x1bname"),
    )
    changes = by_path(compute(BASE, after))
    assert changes["src/a.py"][:2] == ("modified", "apply")
    assert changes["src/b.py"][:2] == ("added", "apply")
    assert changes["README.md"][:2] == ("deleted", "apply")
    assert changes["run.sh"][:2] == ("mode", "apply")
    assert changes["vmsbx.toml"][:2] == ("modified", "sensitive")
    for path in (
        ".claude",
        ".claude/settings.json",
        ".envrc",
        ".github/workflows",
        ".github/workflows/ci.yml",
    ):
        assert changes[path][1] == "sensitive", path
    assert changes[".git/hooks/pre-commit"][1] == "git"
    assert changes[".git/hooks"][1] == "git"
    assert changes["inside"][:2] == ("added", "apply")
    for path in ("home", "up", "sneaky"):
        assert changes[path][1] == "refused" and "outside the project" in changes[path][2], path
    assert changes["fifo"][1:] == ("refused", "special file (fifo, socket or device)")
    assert changes["../escape"][1] == "refused"
    assert changes["bad\x1bname"][1:] == ("refused", "control character in name")


def test_setuid_setgid_and_sticky_bits_are_dropped() -> None:
    changeset = compute(m(), m(f("tool", mode=0o6755), d("tmp")))
    entry = changeset.entries[1]
    assert (entry.path, entry.new_mode, entry.mode_dropped) == ("tool", 0o755, True)


def test_a_change_of_only_dropped_bits_is_no_change() -> None:
    assert compute(m(f("tool", mode=0o755)), m(f("tool", mode=0o4755))).entries == ()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Readme.md", "README.md"),
        (unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")),
        ("STRASSE", "straße"),
    ],
)
def test_names_that_collide_on_macos_or_windows_are_refused(first: str, second: str) -> None:
    changes = by_path(compute(m(), m(f(first), f(second))))
    assert changes[first][1] == changes[second][1] == "refused"
    assert "collides" in changes[first][2]


def test_colliding_with_a_synced_host_name_is_refused_deletion_included() -> None:
    changes = by_path(compute(m(f("readme.md")), m(f("README.md"))))
    assert changes["README.md"][:2] == ("added", "refused")
    assert changes["readme.md"][:2] == ("deleted", "refused")


def test_digest_is_stable_and_pins_every_field() -> None:
    after = m(f("a", b"1"), f("b", b"2"))
    first, again = compute(m(), after), compute(m(), after)
    assert first.digest == again.digest == entries_digest(first.entries)
    assert len(first.digest) == 64
    assert compute(m(), m(f("a", b"1"), f("b", b"3"))).digest != first.digest
    assert compute(m(), m(f("a", b"1", mode=0o600), f("b", b"2"))).digest != first.digest


def test_stored_changeset_round_trips_and_tampering_is_detected(tmp_path: Path) -> None:
    changeset = compute(BASE, m(f("new")))
    path = tmp_path / "changeset.json"
    changeset_module.save(changeset, path)
    assert changeset_module.load(path) == changeset
    path.write_text(path.read_text().replace('"new"', '"evil"'))
    with pytest.raises(SyncError, match="digest"):
        changeset_module.load(path)


def test_diff_shows_text_binary_links_and_modes_without_escapes(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "a.txt").write_bytes(b"one\ntwo\n")
    (project / "img.bin").write_bytes(b"\0\1\2")
    store = BlobStore(tmp_path / "blobs")
    store.folder.mkdir()
    new_text = b"one\nTWO \x1b]0;pwned\x07\x1b[31mred\n"
    (store.folder / sha(new_text)).write_bytes(new_text)
    new_bin = b"\0\1\2\3"
    (store.folder / sha(new_bin)).write_bytes(new_bin)
    base = m(f("a.txt", b"one\ntwo\n"), f("img.bin", b"\0\1\2"), f("run.sh"))
    after = m(f("a.txt", new_text), f("img.bin", new_bin), f("run.sh", mode=0o755), ln("l", "/etc/passwd"))
    text = render_diff(compute(base, after), store, project)
    assert "\x1b" not in text and "\x07" not in text
    assert "-two\n" in text and "+TWO red\n" in text
    assert "--- a/a.txt" in text and "+++ b/a.txt" in text
    assert "binary file changed (3 -> 4 bytes)" in text
    assert "mode 644 -> 755" in text
    assert "added symlink l [refused]" in text and "'/etc/passwd'" in text


def test_diff_quotes_names_that_could_forge_lines(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    text = render_diff(compute(m(), m(ln("a\n+++ b/fake", "x"))), store, tmp_path)
    assert "\n+++ b/fake" not in text
    assert '"a\\n+++ b/fake"' in text


def test_diff_against_a_host_file_that_changed_says_so(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"edited on the host\n")
    store = BlobStore(tmp_path / "blobs")
    store.folder.mkdir()
    (store.folder / sha(b"agent\n")).write_bytes(b"agent\n")
    text = render_diff(compute(m(f("a.txt", b"base\n")), m(f("a.txt", b"agent\n"))), store, tmp_path)
    assert "changed since the run started" in text and "+agent" in text


def test_summary_groups_paths_by_what_apply_will_do() -> None:
    base = m(f("a.py"), f("run.sh"))
    after = m(
        f("a.py", b"2"), f("run.sh", mode=0o755), f("vmsbx.toml"), ln("x", "/etc"), d(".git"), f(".git/HEAD")
    )
    text = render_summary(compute(base, after))
    assert text.index("Changes `vmsbx apply` brings back: 2") < text.index("  M a.py")
    assert "  m run.sh (mode 644 -> 755)" in text
    assert "--include-sensitive): 1\n  A vmsbx.toml" in text
    assert "Git metadata" in text and "  A .git/" in text
    assert "Refused (never applied): 1\n  A x - symlink pointing outside the project" in text
    assert render_summary(compute(base, base)) == "No changes.\n"
