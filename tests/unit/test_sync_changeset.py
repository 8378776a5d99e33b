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


# --- issue 16: names that are the sensitive ones on another file system ----------------------


@pytest.mark.parametrize(
    ("path", "classification"),
    [
        (".Claude/settings.json", "sensitive"),
        (".VSCode/tasks.json", "sensitive"),
        (".NPMRC", "refused"),  # also a secret pattern: never brought back
        (".Yarnrc", "sensitive"),
        (".Cargo/config.toml", "sensitive"),
        (".GIT/config", "git"),
        (".Git/hooks/pre-commit", "git"),
        ("sub/.gIt/config", "git"),
        (".git./config", "git"),  # Windows drops trailing dots and spaces
        (".git /config", "git"),
        (".git::$INDEX_ALLOCATION/config", "git"),  # an NTFS stream of .git
        ("git~1/config", "git"),  # the 8.3 short name of .git
        (".g\u200cit/config", "git"),  # HFS+ ignores zero-width joiners (CVE-2014-9390)
        (".git\u200d/config", "git"),
        ("\ufeff.git/config", "git"),
        (".g\u0131t/config", "git"),  # NTFS upper-cases dotless i to I
        (".claude\u200c/settings.json", "sensitive"),
        (".ENVRC", "sensitive"),
        (".envrc.", "sensitive"),
        ("VMSBX.TOML", "sensitive"),
        (".GitHub/Workflows/ci.yml", "sensitive"),
        (".GITLAB-CI.YML", "sensitive"),
        (unicodedata.normalize("NFD", ".hu\u017fky") + "/pre-commit", "sensitive"),  # long s folds to s
        ("\uff0evscode/tasks.json", "sensitive"),  # a fullwidth full stop: compatibility-equal
        ("CLAUDE~1/settings.json", "refused"),  # an 8.3 short name can stand for any long name
        ("PRE-CO~1.YAM", "refused"),
    ],
)
def test_case_and_unicode_variants_of_sensitive_names_are_classified_as_those_names(
    path: str, classification: str
) -> None:
    changes = by_path(compute(m(), m(f(path))))
    assert changes[path][1] == classification, changes[path]


def test_the_sensitive_classifier_is_public_and_folds_names() -> None:
    from vmsbx.sync.changeset import classify_path, sensitive_reason

    assert sensitive_reason(".husky/pre-commit")
    assert sensitive_reason(".HUSKY/pre-commit")
    assert sensitive_reason("src/app.py") == ""
    assert classify_path(".GIT/config")[0] == "git"
    assert classify_path("a/.Github/workflows/x.yml")[0] == "sensitive"
    assert classify_path(".env") == ("refused", classify_path(".env")[1])
    assert classify_path("src/app.py") == ("apply", "")


def test_ordinary_names_that_merely_resemble_sensitive_ones_are_applied() -> None:
    changes = by_path(compute(m(), m(f("gitignore.md"), f("my.git.txt"), f("claude.md"), f("a~b"))))
    assert {path: value[1] for path, value in changes.items()} == dict.fromkeys(changes, "apply")


# --- issue 16: link chains -------------------------------------------------------------------


def test_a_chain_of_links_that_resolves_outside_the_project_is_refused() -> None:
    after = m(ln("a", "."), ln("b", "a/.."), ln("c", "b/.."), ln("keys", "c/.ssh"))
    changes = by_path(compute(m(), after))
    for path in ("b", "c", "keys"):
        assert changes[path][1] == "refused", (path, changes[path])
        assert "link" in changes[path][2]
    # `a -> .` itself: other links of the tree pass through it, so it is refused too.
    assert changes["a"][1] == "refused"


def test_a_link_through_a_link_is_refused_and_a_link_to_a_link_inside_is_kept() -> None:
    after = m(
        d("lib"),
        f("lib/libfoo.so.1.2"),
        ln("lib/libfoo.so.1", "libfoo.so.1.2"),
        ln("lib/libfoo.so", "libfoo.so.1"),
        ln("vendor", "lib"),
        ln("deep", "vendor/libfoo.so"),
        ln("up", "lib/../lib/libfoo.so"),
    )
    changes = by_path(compute(m(), after))
    assert changes["lib/libfoo.so"][1] == changes["lib/libfoo.so.1"][1] == "apply"
    assert changes["up"][1] == "apply"
    assert changes["deep"][1] == "refused" and "passes through the link 'vendor'" in changes["deep"][2]
    assert changes["vendor"][1] == "refused"


def test_a_new_link_that_an_existing_link_would_pass_through_is_refused() -> None:
    base = m(d("a"), ln("x", "a/.."))
    after = m(ln("a", "."), ln("x", "a/.."))
    changes = by_path(compute(base, after))
    assert changes["a"][1] == "refused" and "'x'" in changes["a"][2]


def test_a_link_to_an_outside_link_or_a_loop_is_refused() -> None:
    base = m(ln("data", "/mnt/data"))
    after = m(ln("data", "/mnt/data"), ln("x", "data"), ln("p", "q"), ln("q", "p"))
    changes = by_path(compute(base, after))
    assert changes["x"][1] == "refused" and "'data'" in changes["x"][2]
    assert changes["p"][1] == changes["q"][1] == "refused"


def test_going_up_out_of_a_folder_the_tree_does_not_hold_is_refused() -> None:
    # `.venv` may be a link on the host (excluded, so the guest never saw it).
    changes = by_path(compute(m(), m(ln("x", ".venv/../README.md"), ln("y", "build/out.json"))))
    assert changes["x"][1] == "refused"
    assert changes["y"][1] == "apply"


# --- issue 16: excluded and secret-pattern paths ---------------------------------------------


def test_paths_the_sync_rules_leave_out_are_never_applied() -> None:
    from vmsbx.sync.rules import exclude_rules

    rules = exclude_rules(None, (".venv", "/build"))
    after = m(
        d(".venv"),
        d(".venv/lib"),
        f(".venv/lib/zzz.pth"),
        f(".env"),
        f("sub/.ENV"),
        f("sub/.env.local"),
        f(".env.example"),
        d("build"),
        f("build/x"),
        f(".VENV.txt"),
        f("id_rsa"),
        d(".SSH"),
        f(".SSH/authorized_keys"),
    )
    changes = by_path(compute(m(), after, rules=rules))
    for path in (".venv", ".venv/lib", ".venv/lib/zzz.pth", ".env", "sub/.env.local", "build", "build/x"):
        assert changes[path][1] == "refused", (path, changes[path])
        assert "never" in changes[path][2]
    assert "exclude '.venv'" in changes[".venv/lib/zzz.pth"][2]
    assert "secret pattern '.env'" in changes[".env"][2]
    for path in ("sub/.ENV", "id_rsa", ".SSH/authorized_keys"):
        assert changes[path][1] == "refused", path
    assert changes[".env.example"][1] == "apply"
    assert changes[".VENV.txt"][1] == "apply"


def test_without_rules_the_default_secret_patterns_still_hold() -> None:
    assert by_path(compute(m(), m(f(".env"))))[".env"][1] == "refused"


def test_content_of_refused_paths_is_not_fetched() -> None:
    from vmsbx.sync.blobs import wanted_paths

    assert wanted_paths(compute(m(), m(f(".env"), f("ok")))) == {"ok": sha(b"x")}


# --- issue 16: modes -------------------------------------------------------------------------


def test_setuid_keeps_the_rest_of_the_mode() -> None:
    changes = compute(m(f("run.sh", mode=0o644)), m(f("run.sh", mode=0o4755)))
    (entry,) = changes.entries
    assert (entry.change, entry.new_mode, entry.guest_mode) == ("mode", 0o755, 0o4755)


@pytest.mark.parametrize(
    ("guest", "umask", "applied"),
    [
        (0o777, 0o022, 0o755),
        (0o666, 0o022, 0o644),
        (0o777, 0o077, 0o700),
        (0o1777, 0o022, 0o755),
        (0o777, 0, 0o775),
    ],
)
def test_world_writable_modes_are_reduced_to_the_umask(guest: int, umask: int, applied: int) -> None:
    (entry,) = compute(m(), m(f("x", mode=guest)), umask=umask).entries
    assert entry.new_mode == applied and entry.guest_mode == guest


def test_a_group_writable_mode_is_kept_and_plain_modes_carry_no_note() -> None:
    entries = compute(m(), m(f("g", mode=0o775), f("p", mode=0o755)), umask=0o022).entries
    assert [(e.new_mode, e.guest_mode) for e in entries] == [(0o775, None), (0o755, None)]


def test_diff_shows_new_modes_and_says_what_was_reduced(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    store.folder.mkdir()
    (store.folder / sha(b"x")).write_bytes(b"x")
    after = m(d("bin"), f("bin/tool", mode=0o755), f("open", mode=0o777), f("suid", mode=0o4755))
    changeset = compute(m(), after, umask=0o022)
    text = render_diff(changeset, store, tmp_path)
    assert "added dir bin\nnew mode 755\n" in text
    assert "added file bin/tool\nnew mode 755\n" in text
    assert "world-writable mode 777 from the guest reduced to 755 by your umask" in text
    assert "setuid/setgid/sticky bits dropped (4755 in the guest)" in text
    summary = render_summary(changeset)
    assert "A open (mode 755, reduced from 777)" in summary
    assert "A bin/tool (mode 755)" in summary


def test_digest_of_a_changeset_stored_before_guest_mode_is_unchanged() -> None:
    entry = compute(m(), m(f("a"))).entries[0]
    legacy = entry.model_dump(mode="json")
    del legacy["guest_mode"]
    import json as json_module

    canonical = json_module.dumps([legacy], sort_keys=True, separators=(",", ":"))
    assert entries_digest((entry,)) == hashlib.sha256(canonical.encode()).hexdigest()


def test_the_rules_a_run_used_round_trip_as_stored() -> None:
    from vmsbx.sync.rules import exclude_rules, rules_from_json, rules_to_json

    rules = exclude_rules(("*.pem",), (".venv", "!keep"))
    assert rules_from_json(rules_to_json(rules)) == rules
    with pytest.raises(ValueError):
        rules_from_json(b'{"secret_patterns": [1], "exclude": []}')


def test_files_reached_through_a_link_as_a_sensitive_name_are_classified_as_that_name() -> None:
    base = m(
        d("config"),
        d("config/claude"),
        f("config/claude/settings.json"),
        ln(".claude", "config/claude"),
        d("realgit"),
        d("realgit/hooks"),
        ln(".git", "realgit"),
        d("ci"),
        ln(".github", "ci"),
        d("scripts"),
        f("scripts/env.sh"),
        ln(".envrc", "scripts/env.sh"),
    )
    after = m(
        *[entry for entry in base.entries if entry.path != "config/claude/settings.json"],
        f("config/claude/settings.json", b"evil"),
        f("realgit/hooks/pre-commit"),
        d("ci/workflows"),
        f("ci/workflows/x.yml"),
        f("ci/README.md"),
        f("scripts/env.sh", b"evil"),
        f("config/other.txt"),
    )
    changes = by_path(compute(base, after))
    assert changes["config/claude/settings.json"][1] == "sensitive"
    assert "through the link '.claude'" in changes["config/claude/settings.json"][2]
    assert changes["realgit/hooks/pre-commit"][1] == "git"
    assert changes["ci/workflows/x.yml"][1] == "sensitive"
    assert changes["scripts/env.sh"][1] == "sensitive"
    assert changes["ci/README.md"][1] == changes["config/other.txt"][1] == "apply"
