"""`vmsbx gc`: remove old runs, stopped-VM leftovers and stale images, after showing them."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

import click

from vmsbx.cli.common import json_option, print_json

if TYPE_CHECKING:
    from vmsbx.observe.gc import GcItem, Inventory


@click.command("gc")
@click.option(
    "--older-than",
    default="7d",
    show_default=True,
    metavar="AGE",
    help="Remove ended runs older than this (e.g. 12h, 7d); 'never' keeps them.",
)
@click.option(
    "--max-size",
    default=None,
    metavar="SIZE",
    help="Then remove the oldest ended runs until all runs take at most SIZE (e.g. 5G).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@json_option
def command(older_than: str, max_size: str | None, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Remove ended runs older than --older-than (and past --max-size), files stopped VMs no
    longer need, and base-image builds no VM uses that are not their recipe's current build.

    Shows what it will free and asks first. Live runs and images under a VM are never removed.
    With --json and without -y nothing is removed (the plan is printed).
    """
    from vmsbx.config.models import parse_size
    from vmsbx.errors import UsageError
    from vmsbx.observe import fmt
    from vmsbx.observe import gc as garbage

    try:
        age = None if older_than == "never" else garbage.parse_age(older_than)
        size_limit = None if max_size is None else parse_size(max_size)
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. --older-than 7d --max-size 5G") from exc
    items = garbage.plan(_inventory(), now=time.time(), older_than=age, max_size=size_limit)
    total = sum(i.size for i in items)
    apply = not dry_run and bool(items) and (yes or (not as_json and _confirm(items, total)))
    if apply:
        log = logging.getLogger("vmsbx.gc")
        for item in items:
            garbage.remove(item)
            log.info("removed", extra={"kind": item.kind, "path": str(item.path), "bytes": item.size})
    if as_json:
        print_json({
            "removed": apply, "bytes": total,
            "items": [i.model_dump(mode="json") for i in items],
        })  # fmt: skip
        return
    if not items:
        click.echo("nothing to remove")
    elif apply:
        click.echo(f"removed {len(items)} items, freed {fmt.size(total)}")
    elif dry_run or yes:
        _show(items, total)
    else:
        click.echo("nothing removed")


def _show(items: list[GcItem], total: int) -> None:
    from vmsbx.observe import fmt

    for item in items:
        click.echo(f"{item.kind:8} {fmt.size(item.size):>6}  {item.path}  ({item.reason})")
    click.echo(f"total {fmt.size(total)} in {len(items)} items")


def _confirm(items: list[GcItem], total: int) -> bool:
    _show(items, total)
    return click.confirm("remove these?", default=False)


def _inventory() -> Inventory:
    from vmsbx.config.models import VMSettings
    from vmsbx.errors import VmsbxError
    from vmsbx.observe import gc as garbage
    from vmsbx.paths import cache_root, state_root
    from vmsbx.providers import existing_provider_name, get_provider
    from vmsbx.providers.base import VMState
    from vmsbx.providers.image import load_recipe, recipe_hash, recipe_names
    from vmsbx.providers.qemu import QemuVMRecord, list_vm_names
    from vmsbx.runs.record import runs_root

    stopped, in_use = [], set()
    for vm in list_vm_names():
        vm_json = state_root() / "vms" / vm / "vm.json"
        with contextlib.suppress(OSError, ValueError):
            in_use.add(QemuVMRecord.model_validate_json(vm_json.read_text()).image_dir.resolve())
        try:
            state = get_provider(existing_provider_name(vm) or "qemu", VMSettings()).state(vm)
        except VmsbxError:
            continue
        if state is VMState.STOPPED:
            stopped.append(vm)
    families = set()
    for name in recipe_names():
        recipe = load_recipe(name)
        families.add(f"{recipe.name}-{recipe_hash(recipe)}")
    return garbage.Inventory(
        runs=garbage.collect_runs(runs_root()),
        leftovers=garbage.collect_leftovers(state_root() / "vms", stopped),
        images=garbage.collect_images(cache_root() / "images", families, in_use),
    )
