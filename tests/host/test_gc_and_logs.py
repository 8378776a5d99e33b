"""`vmsbx gc` through the real CLI on a throw-away state and image cache: it shows its plan,
removes nothing without approval, and then removes exactly the old runs, a stopped VM's
leftovers and the image builds no VM uses; it logs each removal to vmsbx's own log (and to
stderr with -v)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from vmsbx.providers.image import load_recipe, recipe_hash

OLD, NEW, LIVE = "0000000000aa", "0000000000bb", "0000000000cc"


def _vmsbx(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmsbx", *args], input=stdin, capture_output=True, text=True, env=env,
        check=False, timeout=120,
    )  # fmt: skip


def _run(home: Path, run_id: str, state: str, days_ago: float) -> Path:
    folder = home / "runs" / run_id
    folder.mkdir(parents=True)
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)).isoformat()
    ended = None if state == "running" else when
    (folder / "run.json").write_text(
        json.dumps({"id": run_id, "state": state, "started_at": when, "ended_at": ended})
    )
    (folder / "journal.jsonl").write_bytes(b"x" * 10_000)
    return folder


def _build(cache: Path, family: str, stamp: str) -> Path:
    build = cache / "images" / family / stamp
    build.mkdir(parents=True)
    (build / "image.json").write_text("{}")
    (build / "base.qcow2").write_bytes(b"q" * 50_000)
    return build


def _world(tmp_path: Path) -> tuple[dict[str, str], dict[str, Path]]:
    home, cache = tmp_path / "home", tmp_path / "cache"
    family = f"bookworm-{recipe_hash(load_recipe('bookworm'))}"
    paths = {
        "old_run": _run(home, OLD, "exited", 10),
        "new_run": _run(home, NEW, "exited", 1),
        "live_run": _run(home, LIVE, "running", 30),
        "used_build": _build(cache, family, "20260101T000000Z"),
        "stale_build": _build(cache, family, "20260201T000000Z"),
        "current_build": _build(cache, family, "20260301T000000Z"),
        "old_recipe_build": _build(cache, "bookworm-0123456789abcdef", "20250101T000000Z"),
    }
    (cache / "images" / family / "current").write_text("20260301T000000Z\n")
    vm = home / "vms" / "box"
    vm.mkdir(parents=True)
    record = {
        "name": "box", "image": "bookworm", "image_dir": str(paths["used_build"]), "cpus": 1,
        "memory_mib": 512, "disk_size": "2G", "accel": "tcg", "network": "restricted",
        "created_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    (vm / "vm.json").write_text(json.dumps(record))
    (vm / "disk.qcow2").write_bytes(b"d" * 1000)
    for leftover in ("agent.log", "serial.log.1", "qemu.pid"):
        (vm / leftover).write_text("stale\n")
        paths[f"leftover {leftover}"] = vm / leftover
    paths["disk"] = vm / "disk.qcow2"
    env = dict(
        os.environ, VMSBX_HOME=str(home), VMSBX_CACHE=str(cache), VMSBX_CONFIG=str(tmp_path / "none.toml")
    )
    return env, paths


GONE = (
    "old_run",
    "stale_build",
    "old_recipe_build",
    "leftover agent.log",
    "leftover serial.log.1",
    "leftover qemu.pid",
)


def test_gc_shows_its_plan_and_removes_nothing_without_approval(tmp_path: Path) -> None:
    env, paths = _world(tmp_path)
    planned = _vmsbx(env, "gc", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["removed"] is False
    assert {Path(item["path"]) for item in plan["items"]} == {paths[name] for name in GONE}
    assert plan["bytes"] >= 10_000 + 2 * 50_000
    refused = _vmsbx(env, "gc", stdin="n\n")
    assert "remove these?" in refused.stdout and "nothing removed" in refused.stdout
    assert str(paths["stale_build"]) in refused.stdout
    assert all(path.exists() for path in paths.values())


def test_gc_removes_exactly_the_garbage_and_logs_it(tmp_path: Path) -> None:
    env, paths = _world(tmp_path)
    done = _vmsbx(env, "-v", "gc", "-y")
    assert done.returncode == 0, done.stderr
    assert "removed 6 items" in done.stdout
    for name, path in paths.items():
        assert path.exists() == (name not in GONE), name
    assert "vmsbx: info: vmsbx.gc: removed" in done.stderr  # -v shows vmsbx's own log
    log_file = Path(_vmsbx(env, "doctor", "--logs").stdout.strip())
    assert log_file == Path(env["VMSBX_HOME"]) / "logs" / "vmsbx.log"
    removed = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {Path(entry["path"]) for entry in removed if entry["msg"] == "removed"} == {paths[n] for n in GONE}
    again = _vmsbx(env, "gc", "-y", "--max-size", "15K")  # the newest ended run must go too
    assert again.returncode == 0, again.stderr
    assert not paths["new_run"].exists() and paths["live_run"].exists()
