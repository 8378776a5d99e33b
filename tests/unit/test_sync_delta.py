"""plan_sync: exactly what travels to make the guest a mirror of the host."""

from __future__ import annotations

from vmsbx.sync.delta import plan_sync
from vmsbx.sync.manifest import Manifest, ManifestEntry

A = "a" * 64
B = "b" * 64


def _m(*entries: ManifestEntry) -> Manifest:
    return Manifest(entries=entries)


def d(path: str, mode: int = 0o755) -> ManifestEntry:
    return ManifestEntry(path=path, kind="dir", mode=mode)


def f(path: str, sha: str = A, mode: int = 0o644, size: int = 1) -> ManifestEntry:
    return ManifestEntry(path=path, kind="file", mode=mode, size=size, sha256=sha)


def ln(path: str, target: str) -> ManifestEntry:
    return ManifestEntry(path=path, kind="symlink", target=target)


def test_empty_guest_gets_everything() -> None:
    host = _m(d("src"), f("src/a.py"), ln("l", "src/a.py"))
    plan = plan_sync(host, _m())
    assert plan.delete == ()
    assert plan.dirs == (("src", 0o755),)
    assert plan.links == (("l", "src/a.py"),)
    assert [entry.path for entry in plan.files] == ["src/a.py"]
    assert plan.send_bytes == 1


def test_identical_trees_need_nothing() -> None:
    tree = _m(d("src"), f("src/a.py"), ln("l", "x"))
    plan = plan_sync(tree, tree)
    assert (plan.delete, plan.dirs, plan.links, plan.files, plan.modes) == ((), (), (), (), ())


def test_only_changes_travel_and_guest_only_paths_go() -> None:
    host = _m(d("src"), f("src/a.py", B), f("src/b.py"), f("run.sh", mode=0o755), ln("l", "new"))
    guest = _m(
        d("src"),
        f("src/a.py"),
        f("src/b.py"),
        f("run.sh"),
        ln("l", "old"),
        d("junk"),
        f("junk/x"),
        f("junk/y"),
        f("stray"),
    )
    plan = plan_sync(host, guest)
    assert plan.delete == ("junk", "stray")
    assert [entry.path for entry in plan.files] == ["src/a.py"]
    assert plan.modes == (("run.sh", 0o755),)
    assert plan.links == (("l", "new"),)
    assert plan.dirs == ()


def test_kind_changes_delete_first_and_planted_links_are_replaced() -> None:
    host = _m(d("a"), f("a/x"), f("b"), d("c"))
    guest = _m(ln("a", "/tmp/outside"), d("b"), f("b/inner"), ManifestEntry(path="c", kind="special"))
    plan = plan_sync(host, guest)
    assert plan.delete == ("a", "b", "c")
    assert plan.dirs == (("a", 0o755), ("c", 0o755))
    assert [entry.path for entry in plan.files] == ["a/x", "b"]


def test_impossible_guest_paths_are_never_deleted() -> None:
    guest = _m(f("../outside"), f("/etc/passwd"), f("a//b"), f("ok"))
    assert plan_sync(_m(), guest).delete == ("ok",)
