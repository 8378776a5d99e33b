"""Where the lima provider's guest image comes from: vmsbx's own Debian build, never a download.

The image is the `<release>-lima` recipe (the qemu provider's image plus cloud-init and sudo for
Lima's boot). mmdebstrap runs on Linux only, so:
  - on a Linux host vmsbx builds it (cached by recipe hash, like the qemu provider's image);
  - elsewhere (macOS) it is built on a Linux machine with `vmsbx image lima --out DIR`, copied
    over, and named by `vm.lima_image` (a trusted-only setting: it chooses the VM's system).
An exported folder holds disk.qcow2, vmlinuz, initrd and image.json (the build's record).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from vmsbx.errors import ImageBuildError, ProviderError, UsageError
from vmsbx.providers.image import ImageInfo, Progress, ensure_image, load_recipe, recipe_names
from vmsbx.providers.lima_template import LimaImage

# Names inside an exported folder (a build's own directory uses base.qcow2 for the disk).
EXPORT_FILES = {"disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd"}
_RECORD = "image.json"


def lima_recipe_name(release: str) -> str:
    name = f"{release}-lima"
    if name not in recipe_names():
        raise UsageError(
            f"the lima provider has no image for {release}",
            hint='set vm.image = "bookworm" (the release the Lima image is built from)',
        )
    return name


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def lima_image(disk: Path, kernel: Path, initrd: Path, info: ImageInfo) -> LimaImage:
    """The template's view of one build's files, each with its sha256."""
    return LimaImage(
        arch=info.arch,
        disk=disk, disk_sha256=sha256_file(disk),
        kernel=kernel, kernel_sha256=sha256_file(kernel),
        initrd=initrd, initrd_sha256=sha256_file(initrd),
    )  # fmt: skip


def load_exported(folder: Path) -> LimaImage:
    """An exported folder (`vmsbx image lima`), checked before Lima is asked to boot it."""
    folder = folder.expanduser()
    hint = "build it on a Linux machine with `sudo vmsbx image lima --out DIR`, copy DIR here whole"
    try:
        info = ImageInfo.model_validate_json((folder / _RECORD).read_text())
    except OSError as exc:
        raise ProviderError(
            f"vm.lima_image: cannot read {folder / _RECORD}: {exc.strerror}", hint=hint
        ) from exc
    except ValidationError as exc:
        raise ProviderError(
            f"vm.lima_image: {folder / _RECORD} is not a vmsbx image record", hint=hint
        ) from exc
    if not info.name.endswith("-lima"):
        raise ProviderError(
            f"vm.lima_image: {folder} holds the {info.name} image, which has no cloud-init for Lima's boot",
            hint=hint,
        )
    paths = {role: folder / name for role, name in EXPORT_FILES.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise ProviderError(f"vm.lima_image: missing {', '.join(missing)}", hint=hint)
    return lima_image(paths["disk"], paths["kernel"], paths["initrd"], info)


def image_note(release: str, configured: str | None) -> str:
    """What `vmsbx doctor` says of the image a new Lima VM would boot (cheap: nothing is hashed)."""
    if configured is not None:
        try:
            info = ImageInfo.model_validate_json((Path(configured).expanduser() / _RECORD).read_text())
        except (OSError, ValidationError):
            return f"vm.lima_image {configured} is not a folder written by `vmsbx image lima`"
        return f"image {info.name} built {info.built_at} ({info.arch}) from {configured}"
    if sys.platform.startswith("linux"):
        return f"image {release}-lima: vmsbx builds it on the first `vmsbx up`"
    return (
        "no image yet: on a Linux machine `sudo vmsbx image lima --out DIR`, copy DIR here, set vm.lima_image"
    )


def resolve_lima_image(release: str, configured: str | None, progress: Progress) -> LimaImage:
    """The image a new Lima instance boots: the configured folder, or (Linux) vmsbx's own build."""
    if configured is not None:
        return load_exported(Path(configured))
    if not sys.platform.startswith("linux"):
        raise ProviderError(
            "the lima provider boots vmsbx's own Debian image, which is built on Linux (mmdebstrap)",
            hint="on a Linux machine run `sudo vmsbx image lima --out vmsbx-lima`, copy the folder "
            "here and set vm.lima_image to its path (in your user config, not in a project's vmsbx.toml)",
        )
    info = ensure_image(load_recipe(lima_recipe_name(release)), progress)
    progress("checking the image's sha256 (Lima verifies it again)")
    return lima_image(info.disk, info.kernel, info.initrd, info)


def render_compress_argv(source: Path, dest: Path) -> list[str]:
    # Compressed qcow2: a third of the size to copy to the Mac; Lima reads it as it is.
    return ["qemu-img", "convert", "-c", "-O", "qcow2", str(source), str(dest)]


def _compress_qcow2(source: Path, dest: Path) -> None:
    done = subprocess.run(render_compress_argv(source, dest), capture_output=True, check=False)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()[-800:]
        raise ImageBuildError(
            f"qemu-img convert failed: {message}", hint="check the folder has room (~400 MB)"
        )


def export_lima_image(info: ImageInfo, out: Path, progress: Progress) -> Path:
    """Copy a build into folder `out` (made whole or not at all; an existing folder is refused)."""
    out = out.absolute()
    if out.exists():
        raise UsageError(f"{out} already exists", hint="choose a new folder with --out, or remove it")
    sources = {"kernel": info.kernel, "initrd": info.initrd}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        progress("compressing the disk (qemu-img convert -c)")
        _compress_qcow2(info.disk, staging / EXPORT_FILES["disk"])
        for role in ("kernel", "initrd"):
            shutil.copyfile(sources[role], staging / EXPORT_FILES[role])
        for name in EXPORT_FILES.values():
            (staging / name).chmod(0o444)
        record = info.model_copy(update={"directory": out})
        (staging / _RECORD).write_text(record.model_dump_json(indent=2) + "\n")
        staging.chmod(0o755)
        staging.rename(out)
    except OSError as exc:
        raise ImageBuildError(
            f"cannot write the Lima image to {out}: {exc.strerror}", hint="check the folder has room (~1 GB)"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename succeeded
    return out
