"""`vmsbx gc`: what can go, planned purely from an inventory, then removed on approval.

Three kinds of garbage:
- runs: ended runs older than the age limit, then the oldest ended runs until all runs fit the
  size limit. Live runs (starting/running) are never touched.
- leftovers: files a stopped VM no longer needs (stale sockets and pid files, old serial and
  QEMU logs, the agent's log) and half-created VM folders (`vms/.…`).
- images: base image builds other than the `current` one of their recipe family, and whole
  families of an older recipe, unless a VM's overlay still sits on them.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.observe import fmt

GcKind = Literal["run", "leftover", "image"]
# Files of a VM folder that only matter while it runs, or only as history of earlier boots.
STOPPED_VM_LEFTOVERS = (
    "agent.sock", "agent.endpoint", "agent.pid", "agent.json", "agent.log", "qmp.sock", "qemu.pid",
    "runtime.json", "qemu.log", "serial.log.1",
)  # fmt: skip


class RunEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    path: Path
    live: bool
    ended: float = Field(description="Unix time it ended (or started, or its folder changed).")
    size: int


class ImageBuild(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: Path
    family: str = Field(description="<image>-<recipe hash>")
    current: bool = Field(description="Named by its family's `current` file.")
    current_recipe: bool = Field(description="Its family is the recipe vmsbx would build today.")
    in_use: bool = Field(description="A VM's overlay sits on it.")
    size: int


class Inventory(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    runs: list[RunEntry]
    leftovers: list[tuple[Path, int]] = Field(description="Paths with sizes.")
    images: list[ImageBuild]


class GcItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: GcKind
    path: Path
    size: int
    reason: str


def parse_age(text: str) -> float:
    """Seconds in an age such as "7d", "2w", "36h", "1h30m" (days and weeks on top of the
    settings' duration syntax)."""
    from vmsbx.config.models import parse_duration

    value = text.strip().lower()
    for suffix, factor in (("w", 7 * 86400.0), ("d", 86400.0)):
        number = value.removesuffix(suffix)
        if number != value and number.replace(".", "", 1).isdigit():
            return float(number) * factor
    return parse_duration(value)


def plan(inventory: Inventory, *, now: float, older_than: float | None, max_size: int | None) -> list[GcItem]:
    """Pure: what to remove, and why."""
    items: list[GcItem] = []
    ended = sorted((r for r in inventory.runs if not r.live), key=lambda r: r.ended)
    chosen: set[str] = set()
    if older_than is not None:
        for run in ended:
            if now - run.ended > older_than:
                chosen.add(run.id)
                age = fmt.duration(now - run.ended)
                items.append(GcItem(kind="run", path=run.path, size=run.size, reason=f"ended {age} ago"))
    if max_size is not None:
        total = sum(r.size for r in inventory.runs if r.id not in chosen)
        for run in ended:
            if total <= max_size:
                break
            if run.id in chosen:
                continue
            chosen.add(run.id)
            total -= run.size
            items.append(
                GcItem(kind="run", path=run.path, size=run.size, reason="runs exceed the size limit")
            )
    for path, size in inventory.leftovers:
        items.append(GcItem(kind="leftover", path=path, size=size, reason="not needed by a stopped VM"))
    for build in inventory.images:
        if build.in_use or (build.current and build.current_recipe):
            continue
        reason = "superseded by a newer build" if build.current_recipe else "built from an older recipe"
        items.append(GcItem(kind="image", path=build.path, size=build.size, reason=reason))
    return items


def tree_size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def collect_runs(runs_root: Path) -> list[RunEntry]:
    import json

    from vmsbx.sandbox.layout import is_run_id

    entries: list[RunEntry] = []
    if not runs_root.is_dir():
        return entries
    for folder in runs_root.iterdir():
        if not is_run_id(folder.name) or folder.is_symlink() or not folder.is_dir():
            continue
        live, when = False, None
        try:
            data = json.loads((folder / "run.json").read_text())
            live = data.get("state") in ("starting", "running")
            when = _timestamp(data.get("ended_at")) or _timestamp(data.get("started_at"))
        except (OSError, ValueError, AttributeError):
            pass
        if when is None:
            when = folder.stat().st_mtime
        entries.append(RunEntry(id=folder.name, path=folder, live=live, ended=when, size=tree_size(folder)))
    return entries


def collect_leftovers(vms_root: Path, stopped: Iterable[str]) -> list[tuple[Path, int]]:
    found: list[tuple[Path, int]] = []
    for vm in stopped:
        for name in STOPPED_VM_LEFTOVERS:
            path = vms_root / vm / name
            if path.exists() or path.is_symlink():
                found.append((path, path.lstat().st_size))
    if vms_root.is_dir():
        for folder in vms_root.iterdir():
            if folder.name.startswith(".") and folder.is_dir() and not folder.is_symlink():
                found.append((folder, tree_size(folder)))
    return found


def collect_images(images_root: Path, current_families: set[str], in_use: set[Path]) -> list[ImageBuild]:
    builds: list[ImageBuild] = []
    if not images_root.is_dir():
        return builds
    for family in sorted(images_root.iterdir()):
        if not family.is_dir() or family.is_symlink():
            continue
        pointer = family / "current"
        current = pointer.read_text().strip() if pointer.is_file() else ""
        for build in sorted(family.iterdir()):
            # Only complete builds (with image.json): a build in progress is not garbage.
            if not build.is_dir() or build.is_symlink() or not (build / "image.json").is_file():
                continue
            builds.append(
                ImageBuild(
                    path=build,
                    family=family.name,
                    current=build.name == current,
                    current_recipe=family.name in current_families,
                    in_use=build.resolve() in in_use,
                    size=tree_size(build),
                )
            )
    return builds


def remove(item: GcItem) -> None:
    """Delete one planned item; already gone is fine. Never follows a link out."""
    path = item.path
    if path.is_symlink() or path.is_file() or path.is_socket():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)
