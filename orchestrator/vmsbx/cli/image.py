"""`vmsbx image`: the base images vmsbx builds from Debian packages."""

from __future__ import annotations

from pathlib import Path

import click

from vmsbx.cli.common import json_option, print_json, progress


@click.group("image")
def command() -> None:
    """List, rebuild or export the cached base images (qemu provider; lima and wsl2 exports)."""


@command.command("list")
@json_option
def list_images(as_json: bool) -> None:
    """Show each image: recipe hash, when it was built, its kernel."""
    from vmsbx.providers.image import current_image, image_record, load_recipe, recipe_names

    rows = []
    for name in recipe_names():
        info = current_image(load_recipe(name))
        rows.append(image_record(info) if info else {"name": name, "built_at": None})
    if as_json:
        print_json(rows)
        return
    for row in rows:
        built = row.get("built_at") or "not built"
        click.echo(
            f"{row['name']:14} {row.get('recipe_hash', '-'):16} {built:25} {row.get('kernel_release', '')}"
        )


@command.command("rebuild")
@click.option(
    "--image",
    default="bookworm",
    type=click.Choice(["bookworm", "trixie", "bookworm-lima"]),
    help="Which image.",
)
def rebuild(image: str) -> None:
    """Build the image again from its recipe (picks up security updates).

    Existing VMs keep the build they were made from; `vmsbx reset` moves a VM onto the new one.
    """
    from vmsbx.providers.image import ensure_image, load_recipe

    with progress(f"building image {image}") as report:
        info = ensure_image(load_recipe(image), report, rebuild=True)
    click.echo(f"image {info.name} rebuilt at {info.built_at} (kernel {info.kernel_release})")


@command.command("rootfs")
@click.option("--image", default="bookworm", type=click.Choice(["bookworm", "trixie"]), help="Which image.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the tar (default: ./vmsbx-IMAGE-wsl.tar).",
)
def rootfs(image: str, out: Path | None) -> None:
    """Write the image as the root filesystem tar the wsl2 provider imports (Linux, root).

    The same Debian build the qemu provider boots, minus what only a QEMU boot needs. Copy it to
    the Windows host and point vm.wsl_rootfs (or VMSBX_VM_WSL_ROOTFS) at it.
    """
    from vmsbx.providers.image import ensure_image, load_recipe
    from vmsbx.providers.rootfs import export_wsl_rootfs

    target = out or Path(f"vmsbx-{image}-wsl.tar")
    with progress(f"writing the WSL root filesystem of {image}") as report:
        info = ensure_image(load_recipe(image), report)
        written = export_wsl_rootfs(info, target, report)
    size_mb = written.stat().st_size / 1e6
    click.echo(f"wrote {written} ({size_mb:.0f} MB) from the {image} build of {info.built_at}")
    click.echo("next: copy it to the Windows host, set vm.wsl_rootfs to its path there, `vmsbx up`")


@command.command("lima")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write (must not exist; default: ./vmsbx-bookworm-lima).",
)
def lima(out: Path | None) -> None:
    """Write the lima provider's guest image to a folder, to copy to a Mac (Linux host).

    The qemu provider's Debian build plus cloud-init and sudo for Lima's boot, with its kernel
    and initrd. On the Mac, set vm.lima_image to the copied folder, then `vmsbx up --provider lima`.
    On a Linux host the lima provider builds this image itself; no export is needed there.
    """
    from vmsbx.providers.image import ensure_image, load_recipe
    from vmsbx.providers.lima_image import export_lima_image, lima_recipe_name

    name = lima_recipe_name("bookworm")
    target = out or Path(f"vmsbx-{name}")
    with progress(f"writing the Lima image {name}") as report:
        info = ensure_image(load_recipe(name), report)
        written = export_lima_image(info, target, report)
    size_mb = sum(path.stat().st_size for path in written.iterdir()) / 1e6
    click.echo(f"wrote {written} ({size_mb:.0f} MB) from the {name} build of {info.built_at} ({info.arch})")
    click.echo(
        "next: copy the folder to the Mac, set vm.lima_image to its path there, `vmsbx up --provider lima`"
    )
