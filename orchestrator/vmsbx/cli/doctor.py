"""`vmsbx doctor`: what this host has, what it lacks, and the command that installs it."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from vmsbx.cli.common import json_option, print_json

_MIN_FREE_GIB = 10


@click.command("doctor")
@click.option("--logs", "show_logs", is_flag=True, help="Print the path of vmsbx's own log file and exit.")
@json_option
def command(as_json: bool, show_logs: bool) -> None:
    """Check host prerequisites: QEMU, image tools, SSH client, free disk, acceleration."""
    if show_logs:
        from vmsbx.logsetup import log_file

        if as_json:
            print_json({"log_file": str(log_file())})
        else:
            click.echo(str(log_file()))
        return
    from vmsbx.paths import cache_root, state_root
    from vmsbx.providers.accel import kvm_device_usable

    checks: list[dict[str, object]] = []

    def check(name: str, ok: bool, detail: str, fix: str | None = None) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail, "fix": None if ok else fix})

    for tool, package in (
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("ssh", "openssh-client"),
    ):
        path = shutil.which(tool)
        check(tool, path is not None, path or "not found", f"apt-get install {package}")
    for label, where in (("state dir", state_root()), ("cache dir", cache_root())):
        probe = where
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free_gib = shutil.disk_usage(probe).free / 2**30
        check(
            f"free disk ({label})",
            free_gib >= _MIN_FREE_GIB,
            f"{free_gib:.0f} GiB free at {where}",
            f"free at least {_MIN_FREE_GIB} GiB (images are ~1 GiB, each VM grows with use)",
        )
    kvm = kvm_device_usable()
    accel_detail = (
        "/dev/kvm usable; `vmsbx up` probes whether it really boots a guest"
        if kvm
        else ("no usable /dev/kvm: guests run under TCG emulation (slower, still fully isolated)")
    )
    check("acceleration", True, accel_detail)
    probe_file = cache_root() / "accel-probe"
    if probe_file.is_file():
        check(
            "acceleration probe",
            True,
            f"last probe chose {probe_file.read_text().strip().split('=')[-1]}",
        )
    checks.extend(_provider_rows())
    if as_json:
        print_json(checks)
    else:
        for row in checks:
            mark = "ok " if row["ok"] else ("-" if row.get("optional") else "MISSING")
            line = f"{mark:8} {row['check']:28} {row['detail']}"
            if row["fix"]:
                line += f"\n         fix: {row['fix']}"
            click.echo(line)
    if not all(row["ok"] for row in checks if not row.get("optional")):
        raise SystemExit(3)


def _provider_rows() -> list[dict[str, object]]:
    """One row per provider: installed, version, usable, and the install command when not.
    Only the provider `auto` picks on this host decides doctor's exit code."""
    from vmsbx.config import load_settings
    from vmsbx.errors import VmsbxError
    from vmsbx.providers import AUTO_ORDER, AVAILABLE, choose_auto, get_provider, platform_key

    try:
        settings = load_settings(project_dir=Path.cwd(), flags={}).vm
    except VmsbxError:
        from vmsbx.config.models import VMSettings

        settings = VMSettings()
    probes = {name: get_provider(name, settings).probe() for name in AVAILABLE}
    order = AUTO_ORDER[platform_key()]
    chosen = (
        settings.provider if settings.provider != "auto" else choose_auto(order, lambda n: probes[n].usable)
    )
    rows: list[dict[str, object]] = []
    for name, probe in probes.items():
        detail = f"version {probe.version}" if probe.version else ("usable" if probe.usable else "not usable")
        if probe.missing:
            detail += f"; missing {', '.join(probe.missing)}"
        if probe.notes:
            detail += f"; {'; '.join(probe.notes)}"
        if name == chosen:
            detail += " (the provider vmsbx uses here)"
        rows.append({
            "check": f"provider {name}",
            "ok": probe.usable,
            "detail": detail,
            "fix": None if probe.usable else probe.install_hint,
            "optional": name != chosen,
            "provider": probe.model_dump(mode="json"),
        })  # fmt: skip
    return rows
