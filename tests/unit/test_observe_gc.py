"""gc planning: which runs, leftovers and image builds go, and which never do."""

from __future__ import annotations

from pathlib import Path

from vmsbx.observe.gc import GcItem, ImageBuild, Inventory, RunEntry, collect_images, plan

DAY = 86400.0
NOW = 100 * DAY


def _run(run_id: str, age_days: float, size: int, live: bool = False) -> RunEntry:
    return RunEntry(id=run_id, path=Path("/runs") / run_id, live=live, ended=NOW - age_days * DAY, size=size)


def _paths(items: list[GcItem], kind: str) -> list[str]:
    return [item.path.name for item in items if item.kind == kind]


def test_old_runs_go_then_the_oldest_until_the_size_fits_and_live_runs_never() -> None:
    inventory = Inventory(
        runs=[
            _run("old", 10, 100),
            _run("mid", 3, 500),
            _run("new", 1, 500),
            _run("live", 30, 900, live=True),
        ],
        leftovers=[],
        images=[],
    )
    assert _paths(plan(inventory, now=NOW, older_than=7 * DAY, max_size=None), "run") == ["old"]
    items = plan(inventory, now=NOW, older_than=7 * DAY, max_size=1500)
    assert _paths(items, "run") == ["old", "mid"]  # 900 + 500 fits 1500
    assert _paths(plan(inventory, now=NOW, older_than=None, max_size=0), "run") == ["old", "mid", "new"]


def test_images_in_use_or_current_stay(tmp_path: Path) -> None:
    images = tmp_path / "images"
    builds = {
        "bookworm-aaaa": ["20260101T000000Z", "20260201T000000Z", "20260301T000000Z", "20260401T000000Z"],
        "bookworm-old0": ["20250101T000000Z"],
    }
    for family, stamps in builds.items():
        for stamp in stamps:
            (images / family / stamp).mkdir(parents=True)
            (images / family / stamp / "image.json").write_text("{}")
            (images / family / stamp / "base.qcow2").write_bytes(b"x" * 1000)
        (images / family / "current").write_text(stamps[-2 if len(stamps) > 1 else 0] + "\n")
    (images / "bookworm-aaaa" / "20260401T000000Z" / "image.json").unlink()  # a build in progress
    in_use = {(images / "bookworm-aaaa" / "20260101T000000Z").resolve()}
    found = collect_images(images, {"bookworm-aaaa"}, in_use)
    assert {b.path.name: (b.current, b.in_use) for b in found if b.family == "bookworm-aaaa"} == {
        "20260101T000000Z": (False, True),
        "20260201T000000Z": (False, False),
        "20260301T000000Z": (True, False),
    }
    items = plan(Inventory(runs=[], leftovers=[], images=found), now=NOW, older_than=None, max_size=None)
    assert {(i.path.parent.name, i.path.name, i.reason) for i in items} == {
        ("bookworm-aaaa", "20260201T000000Z", "superseded by a newer build"),
        ("bookworm-old0", "20250101T000000Z", "built from an older recipe"),
    }
    assert all(i.size >= 1000 for i in items)


def test_image_build_of_an_older_recipe_in_use_stays() -> None:
    build = ImageBuild(
        path=Path("/i/x/1"), family="x", current=True, current_recipe=False, in_use=True, size=1
    )
    assert (
        plan(Inventory(runs=[], leftovers=[], images=[build]), now=NOW, older_than=None, max_size=None) == []
    )


def test_ages_take_days_and_weeks_and_the_usual_durations() -> None:
    from vmsbx.observe.gc import parse_age

    assert parse_age("7d") == 7 * DAY and parse_age("2w") == 14 * DAY and parse_age("1.5d") == 1.5 * DAY
    assert parse_age("36h") == 36 * 3600 and parse_age("1h30m") == 5400
