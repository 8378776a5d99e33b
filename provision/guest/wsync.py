#!/usr/bin/python3
"""vmsbx workspace sync, guest side: list, fill and pack the run workspace.

Runs as root in the guest, but the workspace it works on was written by the agent in earlier
runs, so every tree in it is hostile: a planted symlink must never redirect a read or a write
out of ROOT. Every path is therefore walked from ROOT with directory descriptors opened with
O_NOFOLLOW, and every file is opened relative to its parent's descriptor with O_NOFOLLOW.
Standard library only (the guest's python3 is 3.11: no tarfile extraction filters, and none
needed: members are written by hand, never extracted).

  wsync.py manifest ROOT [--cache FILE] [--stable-before NS] [--purge-bad-names]
                         [--max-new-bytes N]
                                          -> manifest JSON on stdout (names that are not
                                             UTF-8 are listed as "special" with backslash
                                             escapes, or removed with --purge-bad-names);
                                             exit 5 before any file is read when the files
                                             that are surely new add up to more than N
  wsync.py apply ROOT [--owner UID:GID]   <- one JSON header line, then a tar of files, on stdin
  wsync.py pack ROOT                      <- JSON list of paths on stdin; -> tar on stdout,
                                             one JSON line of problems on stderr
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile

VERSION = 1
TOO_LARGE = 5  # exit code of `manifest --max-new-bytes` when the changes exceed the cap
CHUNK = 1 << 20
MAX_DEPTH = 256
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Refused(Exception):
    """A path that cannot be handled safely (reported, never followed)."""


def check_path(path: object) -> list[str]:
    """Split a relative POSIX path into components; refuse anything that could leave ROOT."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path:
        raise Refused(f"bad path {path!r}")
    parts = path.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        raise Refused(f"bad path {path!r}")
    return parts


def open_root(root: str) -> int:
    return os.open(root, DIR_FLAGS)


def open_dir(root_fd: int, parts: list[str], *, create: bool, owner: tuple[int, int] | None = None) -> int:
    """Open the directory ROOT/parts without following any link.

    With `create`, a missing component is made, and one that is a symlink or a file (planted by
    the agent) is replaced by a directory: the host's tree says it is a directory. Without it,
    such a component raises Refused. The caller closes the returned descriptor.
    """
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise Refused(f"{'/'.join(parts)}: missing") from None
                os.mkdir(name, 0o755, dir_fd=fd)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno not in (errno.ELOOP, errno.ENOTDIR) or not create:
                    raise Refused(f"{'/'.join(parts)}: not a directory") from None
                os.unlink(name, dir_fd=fd)
                os.mkdir(name, 0o755, dir_fd=fd)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def remove(dir_fd: int, name: str) -> None:
    """Remove name (a tree, a file, a link) inside dir_fd; never follows a link."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # rmtree with dir_fd uses its fd-based variant: symlinks inside are unlinked, not followed.
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


# --- manifest ---------------------------------------------------------------------------------


def hash_file(dir_fd: int, name: str, st: os.stat_result) -> str | None:
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or now.st_ino != st.st_ino:
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def cached_digest(cached: object, key: list[object], stable_before: int | None) -> str | None:
    """The cached sha256 of a file whose stat key is `key`, when the cache still vouches for it.

    The key is (size, mtime, ctime, inode): mtime can be set back by the file's owner, ctime
    cannot. A run's start changes every file's ctime (systemd chowns the workspace to the run's
    new user), so a file also counts as unchanged when only its ctime moved and moved to before
    `stable_before`: the moment, stamped by root before any process of the run started, up to
    which only root touched the workspace since the launcher checked the cache against it.
    """
    if not isinstance(cached, list) or len(cached) != 5 or not isinstance(cached[4], str):
        return None
    if cached[:4] == key:
        return cached[4]
    same_but_ctime = cached[0] == key[0] and cached[1] == key[1] and cached[3] == key[3]
    if stable_before is not None and same_but_ctime and int(cached[2]) <= int(key[2]) < stable_before:  # type: ignore[call-overload]
        return cached[4]
    return None


def scan(
    root_fd: int,
    cache: dict[str, list[object]],
    purge: bool = False,
    stable_before: int | None = None,
    *,
    read: bool = True,
    known: dict[str, str] | None = None,
    unread: list[tuple[str, int, bool]] | None = None,
) -> tuple[list[dict[str, object]], dict[str, list[object]]]:
    """The manifest entries of the tree and the fresh hash cache. `known`: digests of files
    just written and checked; with `read` False no file is read, so a file neither known nor
    vouched for by the cache is left out of the fresh cache (its entry is then meaningless),
    and listed in `unread` as (path, apparent size, surely new: no cached row of that size)."""
    entries: list[dict[str, object]] = []
    fresh: dict[str, list[object]] = {}

    def walk(dir_fd: int, prefix: str, depth: int) -> None:
        with os.scandir(dir_fd) as listing:
            items = sorted(listing, key=lambda item: item.name)
        for item in items:
            try:
                item.name.encode("utf-8")
            except UnicodeEncodeError:
                # Not valid UTF-8: no host file can have this name, and JSON cannot carry it.
                if purge:
                    remove(dir_fd, item.name)
                else:
                    shown = item.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                    entries.append({"path": prefix + shown, "kind": "special"})
                continue
            path = prefix + item.name
            st = item.stat(follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
                entries.append({"path": path, "kind": "dir", "mode": mode})
                child = os.open(item.name, DIR_FLAGS, dir_fd=dir_fd)
                try:
                    walk(child, path + "/", depth + 1)
                finally:
                    os.close(child)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(item.name, dir_fd=dir_fd)
                entries.append({"path": path, "kind": "symlink", "target": target})
            elif stat.S_ISREG(st.st_mode):
                # ctime cannot be set by an unprivileged process, mtime can: key on both.
                key: list[object] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
                digest = (known or {}).get(path) or cached_digest(cache.get(path), key, stable_before)
                if digest is None and not read:
                    if unread is not None:
                        row = cache.get(path)
                        same_size = isinstance(row, list) and len(row) == 5 and row[0] == st.st_size
                        unread.append((path, st.st_size, not same_size))
                    continue
                if digest is None:
                    digest = hash_file(dir_fd, item.name, st)
                if not isinstance(digest, str):
                    entries.append({"path": path, "kind": "special"})
                    continue
                fresh[path] = [*key, digest]
                entries.append(
                    {"path": path, "kind": "file", "mode": mode, "size": st.st_size, "sha256": digest}
                )
            else:
                entries.append({"path": path, "kind": "special"})

    walk(root_fd, "", 0)
    entries.sort(key=lambda entry: str(entry["path"]).split("/"))
    return entries, fresh


def load_cache(path: str | None) -> dict[str, list[object]]:
    if not path:
        return {}
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_cache(path: str | None, cache: dict[str, list[object]]) -> None:
    if not path:
        return
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(cache, handle)
    os.replace(temp, path)


def cmd_manifest(
    root: str,
    cache_path: str | None,
    purge: bool,
    stable_before: int | None = None,
    max_new_bytes: int | None = None,
) -> int:
    root_fd = open_root(root)
    try:
        cache = load_cache(cache_path)
        if max_new_bytes is not None and too_large(root_fd, cache, stable_before, max_new_bytes):
            return TOO_LARGE
        entries, fresh = scan(root_fd, cache, purge, stable_before)
    finally:
        os.close(root_fd)
    save_cache(cache_path, fresh)
    json.dump({"version": VERSION, "entries": entries}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


def too_large(root_fd: int, cache: dict[str, list[object]], stable_before: int | None, cap: int) -> bool:
    """Whether the files that are surely new (no cached row of their size) add up to more than
    `cap` bytes at their apparent size; if so, say so on stderr (one JSON line). Only a stat
    walk: hashing a `truncate -s 20G` file's zeros took 6 minutes under TCG before the host
    could refuse it. The host checks the manifest again (it trusts nothing from here)."""
    unread: list[tuple[str, int, bool]] = []
    scan(root_fd, cache, stable_before=stable_before, read=False, unread=unread)
    # What is under .git/ comes back as a bundle (capped on its own), never as files.
    new = sorted(
        ((size, path) for path, size, surely_new in unread if surely_new and ".git" not in path.split("/")),
        reverse=True,
    )
    total = sum(size for size, _path in new)
    if total <= cap:
        return False
    largest = [[path, size] for size, path in new[:5]]
    json.dump({"ok": False, "too_large": {"bytes": total, "cap": cap, "largest": largest}}, sys.stderr)
    sys.stderr.write("\n")
    return True


def revalidate_cache(root: str, cache_path: str, written: dict[str, str]) -> int:
    """Keep only the cache entries that still match their file exactly, and add the files just
    written (their content was checked against its sha256 as it was written). Run by root right
    before a run's unit starts, with nothing else writing the workspace: from here until the
    run's `stable_before` stamp, only root (systemd's chown) touches it. No file is read.
    Returns the number of entries kept."""
    root_fd = open_root(root)
    try:
        _entries, fresh = scan(root_fd, load_cache(cache_path), read=False, known=written)
    finally:
        os.close(root_fd)
    save_cache(cache_path, fresh)
    return len(fresh)


# --- apply ------------------------------------------------------------------------------------


def in_parent(root_fd: int, path: str, owner: tuple[int, int] | None) -> tuple[int, str]:
    parts = check_path(path)
    return open_dir(root_fd, parts[:-1], create=True, owner=owner), parts[-1]


def set_owner(dir_fd: int, name: str, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)


def apply_delete(root_fd: int, path: str) -> None:
    parts = check_path(path)
    try:
        parent = open_dir(root_fd, parts[:-1], create=False)
    except Refused:
        return  # its parent is gone or is not a real directory: nothing of ours to delete there
    try:
        remove(parent, parts[-1])
    finally:
        os.close(parent)


def apply_dir(root_fd: int, path: str, mode: int, owner: tuple[int, int] | None) -> None:
    fd = open_dir(root_fd, check_path(path), create=True, owner=owner)
    try:
        os.fchmod(fd, mode & 0o7777)
    finally:
        os.close(fd)


def apply_link(root_fd: int, path: str, target: str, owner: tuple[int, int] | None) -> None:
    parent, name = in_parent(root_fd, path, owner)
    try:
        temp = f".wsync-{os.getpid()}-link"
        remove(parent, temp)
        os.symlink(target, temp, dir_fd=parent)
        set_owner(parent, temp, owner)
        replace(parent, temp, name)
    finally:
        os.close(parent)


def replace(parent: int, temp: str, name: str) -> None:
    """Rename temp over name; a directory in the way (a kind change) is removed first."""
    try:
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=parent)
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        shutil.rmtree(name, dir_fd=parent)
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)


def apply_mode(root_fd: int, path: str, mode: int) -> None:
    parent, name = in_parent(root_fd, path, None)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=parent)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused(f"{path}: not a regular file")
            if st.st_nlink > 1:
                # A hard link the agent made may share its inode with a file outside ROOT:
                # give the path its own copy instead of changing the shared inode.
                copy_over(parent, name, fd, mode, (st.st_uid, st.st_gid))
            else:
                os.fchmod(fd, mode & 0o7777)
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def copy_over(parent: int, name: str, source_fd: int, mode: int, owner: tuple[int, int]) -> None:
    temp = f".wsync-{os.getpid()}-copy"
    remove(parent, temp)
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
    )
    try:
        while chunk := os.read(source_fd, CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fchown(fd, *owner)
        os.fchmod(fd, mode & 0o7777)
    finally:
        os.close(fd)
    os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)


def apply_file(
    root_fd: int,
    member: tarfile.TarInfo,
    source: object,
    spec: dict[str, object],
    owner: tuple[int, int] | None,
    parents: dict[str, int],
) -> str:
    """Write one member in place of its path; returns its (checked) sha256."""
    parts = check_path(member.name)
    folder, name = "/".join(parts[:-1]), parts[-1]
    parent = parents.get(folder)
    if parent is None:
        # Files arrive grouped by folder: keep the last few folders open (nothing else writes
        # the workspace during a sync, so a descriptor stays valid).
        if len(parents) > 64:
            for fd in parents.values():
                os.close(fd)
            parents.clear()
        parent = parents[folder] = open_dir(root_fd, parts[:-1], create=True, owner=owner)
    # Guest-only names (planted ones included) were deleted above, and nothing else writes the
    # workspace during a sync; should the name exist anyway, O_EXCL fails the sync closed.
    temp = f".wsync-{os.getpid()}-{member.offset}"
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
    )
    digest = hashlib.sha256()
    try:
        while chunk := source.read(CHUNK):  # type: ignore[attr-defined]
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        if digest.hexdigest() != spec["sha256"]:
            raise Refused(f"{member.name}: content does not match its hash")
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, int(spec["mode"]) & 0o7777)  # type: ignore[call-overload]
    except BaseException:
        os.close(fd)
        os.unlink(temp, dir_fd=parent)
        raise
    os.close(fd)
    replace(parent, temp, name)
    return str(spec["sha256"])


def parse_owner(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    uid, _, gid = text.partition(":")
    return int(uid), int(gid or uid)


def cmd_apply(root: str, owner: tuple[int, int] | None) -> int:
    written = apply_stream(root, owner)
    json.dump({"ok": True, "written": len(written)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


# A first sync into an empty mirror unpacks with GNU tar (C, no per-file Python work: ~10x
# faster under TCG for 10,000 files). Safe there and only there: the directory holds nothing
# a member could be redirected through (the header's links are made after the unpacking), and
# the members are the host's planned files. Smaller syncs are not worth a process start.
TAR_FAST_MIN_FILES = 64
TAR_ARGV = ["tar", "-x", "-f", "-", "--touch", "--no-same-owner", "--no-overwrite-dir", "-C"]


def apply_stream(root: str, owner: tuple[int, int] | None) -> dict[str, str]:
    """Apply the sync on stdin to ROOT; returns the sha256 of each file written, by path."""
    stream = sys.stdin.buffer
    header = json.loads(stream.readline())
    if header.get("version") != VERSION:
        raise Refused("unknown stream version")
    root_fd = open_root(root)
    try:
        for path in header["delete"]:
            apply_delete(root_fd, path)
        files = {spec["path"]: spec for spec in header["files"]}
        fast = owner is None and len(files) >= TAR_FAST_MIN_FILES and not os.listdir(root_fd)
        for path, mode in header["dirs"]:
            apply_dir(root_fd, path, mode, owner)
        if fast:  # links after the unpacking: see TAR_FAST_MIN_FILES
            written = _unpack_with_tar(stream, root, files)
            for path, target in header["links"]:
                apply_link(root_fd, path, target, owner)
        else:
            for path, target in header["links"]:
                apply_link(root_fd, path, target, owner)
            written = _apply_members(stream, root_fd, files, owner)
        for path, mode in header["modes"]:
            apply_mode(root_fd, path, mode)
    finally:
        os.close(root_fd)
    return written


def _apply_members(
    stream: object, root_fd: int, files: dict[str, dict[str, object]], owner: tuple[int, int] | None
) -> dict[str, str]:
    written: dict[str, str] = {}
    parents: dict[str, int] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                spec = files.get(member.name)
                if not member.isreg() or spec is None or member.size != spec["size"]:
                    raise Refused(f"unexpected stream member {member.name!r}")
                written[member.name] = apply_file(
                    root_fd, member, tar.extractfile(member), spec, owner, parents
                )
    finally:
        for fd in parents.values():
            os.close(fd)
    if len(written) != len(files):
        raise Refused(f"stream ended after {len(written)} of {len(files)} files")
    return written


def _unpack_with_tar(stream: object, root: str, files: dict[str, dict[str, object]]) -> dict[str, str]:
    """The rest of the stream through GNU tar into the empty ROOT. The files' hashes are the
    host's: it checks each file against its hash while it streams it and cuts the stream on a
    mismatch, which tar then reports as a truncated archive."""
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as errors:  # a file: tar's complaints can never block it
        tar = subprocess.Popen([*TAR_ARGV, root], stdin=subprocess.PIPE, stderr=errors)
        assert tar.stdin is not None
        try:
            while chunk := stream.read1(CHUNK):  # type: ignore[attr-defined]
                tar.stdin.write(chunk)
            tar.stdin.close()
        except BrokenPipeError:
            pass
        if tar.wait() != 0:
            errors.seek(0)
            said = errors.read(4096).decode(errors="replace").strip()[-400:]
            raise Refused(f"unpacking the workspace failed: {said}")
    return {path: str(spec["sha256"]) for path, spec in files.items()}


# --- pack -------------------------------------------------------------------------------------


def cmd_pack(root: str) -> int:
    paths = json.loads(sys.stdin.buffer.read())
    if not isinstance(paths, list):
        raise Refused("pack expects a JSON list of paths")
    problems: list[list[str]] = []
    root_fd = open_root(root)
    try:
        with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in paths:
                try:
                    pack_one(root_fd, path, tar)
                except (Refused, OSError) as error:
                    problems.append([str(path), str(error)])
    finally:
        os.close(root_fd)
    sys.stdout.flush()
    json.dump({"problems": problems}, sys.stderr)
    sys.stderr.write("\n")
    return 0


def pack_one(root_fd: int, path: object, tar: tarfile.TarFile) -> None:
    parts = check_path(path)
    parent = open_dir(root_fd, parts[:-1], create=False)
    try:
        fd = os.open(parts[-1], FILE_FLAGS, dir_fd=parent)
    finally:
        os.close(parent)
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a regular file")
        info = tarfile.TarInfo("/".join(parts))
        info.size = st.st_size
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        tar.addfile(info, handle)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsync")
    sub = parser.add_subparsers(dest="command", required=True)
    manifest = sub.add_parser("manifest")
    manifest.add_argument("root")
    manifest.add_argument("--cache")
    manifest.add_argument("--stable-before", type=int)
    manifest.add_argument("--purge-bad-names", action="store_true")
    manifest.add_argument("--max-new-bytes", type=int)
    apply = sub.add_parser("apply")
    apply.add_argument("root")
    apply.add_argument("--owner")
    pack = sub.add_parser("pack")
    pack.add_argument("root")
    args = parser.parse_args(argv)
    try:
        if args.command == "manifest":
            return cmd_manifest(
                args.root, args.cache, args.purge_bad_names, args.stable_before, args.max_new_bytes
            )
        if args.command == "apply":
            return cmd_apply(args.root, parse_owner(args.owner))
        return cmd_pack(args.root)
    except (Refused, OSError, ValueError, KeyError, TypeError, tarfile.TarError) as error:
        json.dump({"ok": False, "error": f"{type(error).__name__}: {error}"}, sys.stderr)
        sys.stderr.write("\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
