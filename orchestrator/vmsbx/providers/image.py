"""The base image of the qemu provider: built by vmsbx from Debian packages, cached by recipe hash.

Layout under the cache dir:  images/<image>-<recipe hash>/<build stamp>/{base.qcow2, vmlinuz,
initrd, image.json} and a `current` file naming the newest complete build. Builds are never
changed in place: VMs' overlays keep pointing at the build they were made from, and
`vmsbx image rebuild` adds a new build beside it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.errors import ImageBuildError, UsageError
from vmsbx.paths import cache_root, data_dir

Progress = Callable[[str], None]


class ImageRecipe(BaseModel):
    """What one guest image is made of (vm-templates/qemu/recipe.toml)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(description="Image name, e.g. bookworm.")
    suite: str = Field(description="Debian suite.")
    variant: str = Field(description="mmdebstrap variant.")
    disk_size: str = Field(description="Size of the root filesystem, e.g. 8G.")
    sources: tuple[str, ...] = Field(description="APT source lines used to bootstrap.")
    packages: tuple[str, ...] = Field(description="Packages installed on top of the variant.")
    hooks: tuple[str, ...] = Field(
        default=("customize.sh",), description="customize hooks (in vm-templates/qemu), run in order."
    )


class ImageInfo(BaseModel):
    """One complete build, as recorded in its image.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    recipe_hash: str
    built_at: str = Field(description="UTC ISO time the build finished.")
    recipe: ImageRecipe
    kernel_release: str
    # Builds run natively (mmdebstrap on the build host): the host's arch. Absent from records
    # written before it was kept, all of which were built on x86_64.
    arch: Literal["x86_64", "aarch64"] = "x86_64"
    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "base.qcow2"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd"


# Files the hooks read beside them (customize.sh installs both): part of the recipe's hash.
HOOK_FILES = ("load-keys.sh", "sshd-vmsbx.conf")


def templates_dir() -> Path:
    return data_dir() / "vm-templates" / "qemu"


def _recipe_table() -> dict[str, dict[str, object]]:
    return tomllib.loads((templates_dir() / "recipe.toml").read_text())


def recipe_names() -> list[str]:
    return sorted(_recipe_table())


def load_recipe(name: str) -> ImageRecipe:
    return resolve_recipe(_recipe_table(), name)


def resolve_recipe(table: dict[str, dict[str, object]], name: str) -> ImageRecipe:
    """The recipe `name` with its `extends` applied: the base's fields, plus `add_packages` and
    `add_hooks` (a variant can only add to its base, so it runs everything the base's walls need)."""
    if name not in table:
        raise UsageError(f"unknown image {name!r}", hint=f"choose one of: {', '.join(sorted(table))}")
    entry = dict(table[name])
    base_name = entry.pop("extends", None)
    add_packages = tuple(_strings(entry.pop("add_packages", ())))
    add_hooks = tuple(_strings(entry.pop("add_hooks", ())))
    if base_name is None:
        if add_packages or add_hooks:
            raise UsageError(f"image {name!r} adds packages or hooks but extends nothing")
        return ImageRecipe.model_validate({"name": name, **entry})
    if not isinstance(base_name, str) or base_name == name or "extends" in table.get(base_name, {}):
        raise UsageError(f"image {name!r} must extend one plain image of recipe.toml")
    base = resolve_recipe(table, base_name).model_dump()
    base.update(entry, name=name)
    base["packages"] = (*base["packages"], *add_packages)
    base["hooks"] = (*base["hooks"], *add_hooks)
    return ImageRecipe.model_validate(base)


def _strings(value: object) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise UsageError(f"expected a list of strings in recipe.toml, got {value!r}")
    return list(value)


def recipe_hash(recipe: ImageRecipe) -> str:
    """Hash of the recipe and of every file the build runs: any change means a new image."""
    digest = hashlib.sha256(recipe.model_dump_json().encode())
    for script in (*recipe.hooks, *HOOK_FILES):
        digest.update(script.encode() + b"\0" + (templates_dir() / script).read_bytes())
    return digest.hexdigest()[:16]


def render_mmdebstrap_argv(recipe: ImageRecipe, target: Path) -> list[str]:
    """argv of the bootstrap into directory `target` (pure)."""
    return [
        "mmdebstrap",
        f"--variant={recipe.variant}",
        "--include=" + ",".join(recipe.packages),
        # Run through sh so the hooks need no executable bit once installed from a wheel.
        *(
            "--customize-hook=sh " + shlex.quote(str(templates_dir() / hook)) + ' "$1"'
            for hook in recipe.hooks
        ),
        recipe.suite,
        str(target),
        *recipe.sources,
    ]


def render_mkfs_argv(tree: Path, raw_disk: Path, size: str) -> list[str]:
    return ["mkfs.ext4", "-q", "-F", "-L", "vmsbx-root", "-d", str(tree), str(raw_disk), size]


def render_convert_argv(raw_disk: Path, qcow2: Path) -> list[str]:
    return ["qemu-img", "convert", "-O", "qcow2", str(raw_disk), str(qcow2)]


def _family_dir(recipe: ImageRecipe) -> Path:
    return cache_root() / "images" / f"{recipe.name}-{recipe_hash(recipe)}"


def current_image(recipe: ImageRecipe) -> ImageInfo | None:
    """The newest complete build of this recipe, or None."""
    family = _family_dir(recipe)
    pointer = family / "current"
    if not pointer.is_file():
        return None
    build = family / pointer.read_text().strip()
    return _read_info(build)


def _read_info(build: Path) -> ImageInfo | None:
    record = build / "image.json"
    if not record.is_file():
        return None
    info = ImageInfo.model_validate_json(record.read_text())
    if not (info.disk.is_file() and info.kernel.is_file() and info.initrd.is_file()):
        return None
    return info


def ensure_image(recipe: ImageRecipe, progress: Progress, *, rebuild: bool = False) -> ImageInfo:
    """Return a complete build of `recipe`, building one if there is none (or if `rebuild`)."""
    family = _family_dir(recipe)
    family.mkdir(parents=True, exist_ok=True)
    with _BuildLock(family / ".lock"):
        existing = current_image(recipe)
        if existing is not None and not rebuild:
            return existing
        _remove_partial_builds(family)
        return _build(recipe, family, progress)


def _remove_partial_builds(family: Path) -> None:
    for leftover in family.glob(".building-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _build(recipe: ImageRecipe, family: Path, progress: Progress) -> ImageInfo:
    missing = [tool for tool in ("mmdebstrap", "mkfs.ext4", "qemu-img") if not shutil.which(tool)]
    if missing:
        raise ImageBuildError(
            f"cannot build the {recipe.name} image: {', '.join(missing)} not found",
            hint="apt-get install mmdebstrap e2fsprogs qemu-utils",
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    work = family / f".building-{stamp}"
    work.mkdir()
    tree = work / "rootfs"
    try:
        progress(f"bootstrapping Debian {recipe.suite} (mmdebstrap)")
        _run_logged(render_mmdebstrap_argv(recipe, tree), work / "build.log", progress)
        kernel_release = _copy_boot_files(tree, work)
        _record_packages(tree, work / "packages.txt")
        progress("writing the root filesystem")
        raw = work / "disk.raw"
        _run_logged(render_mkfs_argv(tree, raw, recipe.disk_size), work / "build.log", progress)
        shutil.rmtree(tree)
        progress("converting to qcow2")
        _run_logged(render_convert_argv(raw, work / "base.qcow2"), work / "build.log", progress)
        raw.unlink()
        (work / "base.qcow2").chmod(0o444)
        info = ImageInfo(
            name=recipe.name,
            recipe_hash=recipe_hash(recipe),
            built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            recipe=recipe,
            kernel_release=kernel_release,
            arch=host_arch(),
            directory=family / stamp,
        )
        (work / "image.json").write_text(info.model_dump_json(indent=2))
        work.rename(family / stamp)
        (family / "current.tmp").write_text(stamp + "\n")
        (family / "current.tmp").rename(family / "current")
        progress(f"image {recipe.name} built ({kernel_release})")
        return info
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def host_arch() -> Literal["x86_64", "aarch64"]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    raise ImageBuildError(
        f"vmsbx builds guest images on x86_64 and aarch64 hosts only, not {machine}",
        hint="build the image on an x86_64 or aarch64 Linux machine",
    )


def _copy_boot_files(tree: Path, work: Path) -> str:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageBuildError(
            "the bootstrapped tree has no kernel in /boot", hint="check the recipe's packages"
        )
    release = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = tree / "boot" / f"initrd.img-{release}"
    if not initrd.is_file():
        raise ImageBuildError(f"no initramfs for kernel {release}", hint="add initramfs-tools to the recipe")
    shutil.copyfile(kernels[-1], work / "vmlinuz")
    shutil.copyfile(initrd, work / "initrd")
    return release


def _record_packages(tree: Path, out: Path) -> None:
    """Keep the exact package versions the image was built from (shown by `vmsbx image list`)."""
    listing = subprocess.run(
        ["chroot", str(tree), "dpkg-query", "-W", "-f", "${Package} ${Version}\\n"],
        capture_output=True,
        check=False,
    )
    out.write_bytes(listing.stdout)


def _run_logged(argv: list[str], log: Path, progress: Progress) -> None:
    """Run a build step, appending its output to the build log and its lines to `progress`."""
    with log.open("ab") as sink:
        sink.write(("$ " + " ".join(argv) + "\n").encode())
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw_line in proc.stdout:
            sink.write(raw_line)
            line = raw_line.decode(errors="replace").strip()
            if line.startswith("I: "):
                progress(line[3:])
        code = proc.wait()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ImageBuildError(
            f"image build step {argv[0]} failed with exit code {code}; last lines of {log}:\n{tail}",
            hint="check that the Debian mirror is reachable and the disk has room, then `vmsbx up` again",
        )


class _BuildLock:
    """An exclusive lock on the image family: one build at a time, across processes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def __enter__(self) -> _BuildLock:
        import fcntl  # POSIX only: the qemu provider runs on Linux hosts.
        import os

        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def image_record(info: ImageInfo) -> dict[str, str]:
    """What `vmsbx image list` shows of one build."""
    return {
        "name": info.name,
        "recipe_hash": info.recipe_hash,
        "built_at": info.built_at,
        "kernel_release": info.kernel_release,
        "directory": str(info.directory),
    }
