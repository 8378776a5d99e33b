#!/usr/bin/python3
"""vmsbx guest launcher: the root side of a run, inside the VM. Pushed by `vmsbx up`.

  launch            stdin: one JSON line (the rendered run), then a tar of the workspace.
                    Prepares the size-capped workspace and tmpfs, starts the unit, prints JSON.
  attach ID         relays the run's session holder to stdin/stdout/stderr; exits with the
                    holder's code (which the host double-checks against `result`).
  result ID         waits for the record ExecStopPost= writes, prints it.
  ended ID WAIT INV [CURSOR] [--manifest[=MAX_NEW_BYTES]]
                    result, then (--manifest) the workspace's manifest line, then the journal.
  follow ID WAIT INV [CURSOR] [--manifest[=MAX_NEW_BYTES]]
                    a headless run's attach (its output as frames, then an EXIT frame), then
                    `ended`: the whole run in one guest call.
  record ID         (ExecStopPost=+) records systemd's verdict and the cgroup's peaks.
  stop ID           stops the run's unit.
  journal ID INV    the run's journal as JSON lines (trusted selectors only), after a cursor.
  score             stdin: a unit file; prints its offline exposure score.
  score-live ID     the exposure score of the running unit.
  sessions ID       the Claude Code conversations `record` saved, as JSON lines.
  release ID        after the host recorded an ended run: frees its tmpfs and its hold on the
                    project's workspace.
  wsync run ID manifest|pack @ws … [--max-new-bytes=N]
                    after the run: its workspace's manifest (refused, exit 5, when its surely
                    new files exceed N bytes), or a tar of the paths on stdin.
  wsync project ID manifest @ws … [--size=BYTES]
                    the project's mirror as it is now (what the next sync starts from); with a
                    size (the run's workspace cap) an image of another size is replaced by an
                    empty one.
  bundle ID BASE…   a git bundle of the run's workspace HEAD minus the host's commits (stdout),
                    made by an unprivileged throw-away user (the repository is the agent's).

Standard library only; every path comes from the run id, never from free text.
"""

from __future__ import annotations

# Only what most verbs need is imported here: every import costs each guest call (a Python
# start under TCG); socket, selectors, shutil, tempfile, wsync and nsjail_prep are imported by
# the verbs that use them.
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

# The host↔guest contract (vmsbx.contract, pushed beside this file): paths, ids, codes, records.
from contract import (
    BRIDGES,
    EXIT_BAD_REQUEST,
    EXIT_FAILED,
    EXIT_HOLDER_LOST,
    EXIT_NO_RUN,
    EXIT_NOT_ENDED,
    EXIT_STALE_MIRROR,
    EXIT_UID_IN_USE,
    EXIT_USAGE,
    INVOCATION_ID,
    LAUNCH_REQUEST_MAX,
    PROJECT_ID,
    PROJECTS_ROOT,
    RUN_ID,
    RUNS_ROOT,
    SESSION_FILE,
    SESSIONS_MAX_BYTES,
    SESSIONS_MAX_FILES,
    ContractError,
    Launched,
    LaunchRequest,
    ProjectPaths,
    RunPaths,
    mirror_digest,
)

# The session holder's frames.
from contract import FRAME_EXIT as EXIT
from contract import FRAME_HEADER as HEADER
from contract import FRAME_RESIZE as RESIZE
from contract import FRAME_STDERR as STDERR
from contract import FRAME_STDIN as STDIN
from contract import FRAME_STDIN_EOF as STDIN_EOF
from contract import FRAME_STDOUT as STDOUT

# Annotations only (typing itself is not imported: ~20 ms per guest call under TCG); mypy reads
# any name TYPE_CHECKING as true. The verbs that use sockets import socket themselves.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Iterator

# The bridge forwarder: root, outside the sandbox, but with nothing to do except copy bytes
# between the run's socket and one loopback port of the guest (the SSH reverse tunnel).
BRIDGE_PROPERTIES = [
    "ProtectSystem=strict", "ProtectHome=yes", "PrivateDevices=yes", "NoNewPrivileges=yes",
    "CapabilityBoundingSet=", "RestrictAddressFamilies=AF_UNIX AF_INET",
    "IPAddressDeny=any", "IPAddressAllow=localhost", "SystemCallFilter=@system-service",
    "SystemCallArchitectures=native", "MemoryMax=64M", "TasksMax=64",
]  # fmt: skip
SCORE_RE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def fail(message: str, code: int = EXIT_FAILED) -> int:
    sys.stderr.write(f"vmsbx-guest: {message}\n")
    return code


def paths(run_id: str) -> RunPaths:
    try:
        return RunPaths(run_id)
    except ValueError as exc:
        raise SystemExit(fail(str(exc), EXIT_USAGE)) from None


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


# -- paths the run can write -------------------------------------------------------------------
#
# The run's tmpfs belongs to the run: in it, anything may be a symlink, a FIFO, a device node or
# a sparse file far larger than it looks, planted to make root read, write or connect elsewhere
# (ln -sf /dev/zero /tmp/.vmsbx/transcript once made `record` fill the guest disk). Root reaches
# it only from the tmpfs's mount point, in the root-only run folder (the run cannot rename or
# replace either), one name at a time relative to a directory fd, with O_NOFOLLOW, and checks
# with fstat what it got: the kind it expects, owned by the run's user, read up to a cap.

TRANSCRIPT_CAP = 257 << 20  # the holder stops at 256 MiB; its last frames (the exit) come after
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# O_PATH|O_NOFOLLOW opens a symlink itself (fstat then says so) and never the socket's peer.
OPEN_FLAGS = {"file": FILE_FLAGS, "directory": DIR_FLAGS, "socket": os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC}
KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFSOCK: "socket",
         stat.S_IFLNK: "symbolic link", stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device",
         stat.S_IFBLK: "block device"}  # fmt: skip


class Untrusted(Exception):
    """A path the run could write that root will not use; the message (it goes into the run's
    record) says what it was."""


def _kind(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "special file")


def _check_untrusted(st: os.stat_result, name: str, *, uid: int, kind: str) -> None:
    if _kind(st.st_mode) != kind:
        raise Untrusted(f"{name} is a {_kind(st.st_mode)}, not a {kind}")
    if st.st_uid != uid:
        raise Untrusted(f"{name} belongs to uid {st.st_uid}, not to the run's user ({uid})")


def open_untrusted(dir_fd: int, name: str, *, uid: int, kind: str) -> int:
    """An fd of `name` in `dir_fd` if it is a `kind` ("file", "directory" or "socket") owned by `uid`:
    never through a symlink, never blocking (a FIFO or a device is refused from its lstat, and
    O_NONBLOCK covers one swapped in before the open). A "socket" is an O_PATH fd: connect to
    /proc/self/fd/N, which is that very inode. Raises Untrusted, or FileNotFoundError; the
    caller closes the fd and caps what it reads (see copy_capped)."""
    if "/" in name or name in ("", ".", ".."):
        raise Untrusted(f"{name!r} is not a plain name")
    _check_untrusted(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), name, uid=uid, kind=kind)
    try:
        fd = os.open(name, OPEN_FLAGS[kind], dir_fd=dir_fd)
    except OSError as exc:  # ELOOP, ENOTDIR, ENXIO …: replaced after the lstat
        if isinstance(exc, FileNotFoundError):
            raise
        raise Untrusted(f"{name} changed while root opened it ({exc.strerror})") from None
    try:
        _check_untrusted(os.fstat(fd), name, uid=uid, kind=kind)
    except BaseException:
        os.close(fd)
        raise
    return fd


def copy_capped(source_fd: int, target: str, cap: int) -> tuple[int, int]:
    """Copy at most `cap` bytes of an open regular file into `target` (in a root-only folder,
    replaced whole); returns (bytes copied, the file's size when it was opened)."""
    size = os.fstat(source_fd).st_size
    temp = target + ".new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    copied = 0
    try:
        while copied < cap and (chunk := os.read(source_fd, min(1 << 20, cap - copied))):
            os.write(out, chunk)  # a regular file on a local disk: short writes only on ENOSPC
            copied += len(chunk)
    finally:
        os.close(out)
    os.replace(temp, target)
    return copied, size


def run_uid(p: RunPaths) -> int:
    """The run's user outside its sandbox: the owner its workspace got at the run's start (from
    systemd's StateDirectory= chown, or nsjail_prep's hand-over), which the run cannot change:
    without CAP_CHOWN it cannot give its files to another user."""
    try:
        st = os.stat(p.workspace_mount, follow_symlinks=False)
    except OSError as exc:
        raise Untrusted(f"the run's user is unknown: its workspace is gone ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid == 0:
        raise Untrusted("the run's user is unknown: its workspace was never handed to it")
    return st.st_uid


def open_holder_dir(p: RunPaths, uid: int) -> int:
    """The holder's folder on the run's tmpfs, pinned: later lookups through the fd cannot be
    redirected by renaming or replacing the folder."""
    tmp_fd = os.open(p.tmp_dir, DIR_FLAGS)  # root's own mount point in the root-only run folder
    try:
        if os.fstat(tmp_fd).st_uid != 0:
            raise Untrusted(f"{p.tmp_dir} is not the run's tmpfs")
        return open_untrusted(tmp_fd, p.holder_name, uid=uid, kind="directory")
    finally:
        os.close(tmp_fd)


def open_in_holder_dir(p: RunPaths, name: str, *, kind: str) -> int:
    """An fd of `name` in the run's holder folder, checked by open_untrusted against the run's
    own uid. Raises Untrusted or OSError."""
    uid = run_uid(p)
    holder_fd = open_holder_dir(p, uid)
    try:
        return open_untrusted(holder_fd, name, uid=uid, kind=kind)
    finally:
        os.close(holder_fd)


def save_transcript(p: RunPaths) -> str | None:
    """Copy the holder's transcript into the run's root-only folder, at most TRANSCRIPT_CAP
    bytes. None when it was saved whole, else the note for the run's record: a run's planted
    link or FIFO is refused (never followed, never waited on), a larger file is cut short."""
    try:
        source = open_in_holder_dir(p, "transcript", kind="file")
    except Untrusted as exc:
        return f"transcript not saved: {exc}"
    except FileNotFoundError:
        return "transcript not saved: the run left none"
    except OSError as exc:
        return f"transcript not saved: {exc.strerror}"
    try:
        copied, size = copy_capped(source, p.transcript, TRANSCRIPT_CAP)
    except OSError as exc:  # e.g. a full guest disk: the verdict must still be recorded
        return f"transcript not saved: {exc.strerror}"
    finally:
        os.close(source)
    if size > copied:
        return f"transcript cut at {copied} bytes (it was {size})"
    return None


# A project folder under HOME/.claude/projects: Claude Code's munged cwd (every character not
# [A-Za-z0-9] made '-'), one level, nothing else.
PROJECT_FOLDER = re.compile(r"^[A-Za-z0-9-]{1,255}$")
SESSIONS_SCAN_MAX = 4096  # names looked at per folder
SESSIONS_NOTES_MAX = 20  # notes kept in the run's record; the rest are counted


def save_sessions(p: RunPaths) -> list[str]:
    """Copy the run's Claude Code conversations (HOME/.claude/projects/*/<uuid>.jsonl, one
    folder level) into its root-only folder, the newest first, at most SESSIONS_MAX_FILES files
    and SESSIONS_MAX_BYTES in all; a conversation that does not fit is left out whole (half a
    conversation would resume as another). Every folder and file on the way is the run's and
    checked as open_untrusted does. Returns the notes for the run's record (none when all were
    saved, or when the run kept no conversation: a plain command has none)."""
    try:
        uid = run_uid(p)
        with _pinned(os.open(p.tmp_dir, DIR_FLAGS)) as tmp_fd:
            if os.fstat(tmp_fd).st_uid != 0:
                raise Untrusted(f"{p.tmp_dir} is not the run's tmpfs")
            projects_fd = _open_below(tmp_fd, [p.home_name, ".claude", "projects"], uid)
    except FileNotFoundError:
        return []
    except Untrusted as exc:
        return [f"sessions not saved: {exc}"]
    except OSError as exc:
        return [f"sessions not saved: {exc.strerror}"]
    with _pinned(projects_fd):
        notes, found = _session_candidates(projects_fd, uid)
        os.makedirs(p.sessions_dir, mode=0o700, exist_ok=True)
        saved: set[str] = set()
        room = SESSIONS_MAX_BYTES
        # The newest first: a name in two project folders (the run knew its folder by two
        # paths) is the conversation last written.
        for _mtime, size, folder, name in sorted(found, reverse=True):
            if name in saved:
                continue
            if len(saved) >= SESSIONS_MAX_FILES or size > room:
                notes.append(f"session {name} not saved: over the cap of {SESSIONS_MAX_FILES} files, "
                             f"{SESSIONS_MAX_BYTES} bytes")  # fmt: skip
                continue
            note = _save_session(projects_fd, folder, name, uid, p.sessions_dir, room)
            if note:
                notes.append(note)
                continue
            saved.add(name)
            room -= size
    if len(notes) > SESSIONS_NOTES_MAX:
        notes[SESSIONS_NOTES_MAX - 1 :] = [
            f"sessions: {len(notes) - SESSIONS_NOTES_MAX + 1} more notes left out"
        ]
    return notes


@contextlib.contextmanager
def _pinned(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _open_below(dir_fd: int, names: list[str], uid: int) -> int:
    """The folder `names` below `dir_fd`, each step one of the run's own folders."""
    fd = dir_fd
    for name in names:
        try:
            child = open_untrusted(fd, name, uid=uid, kind="directory")
        finally:
            if fd != dir_fd:
                os.close(fd)
        fd = child
    return fd


def _names_in(dir_fd: int, notes: list[str], where: str) -> list[str]:
    """At most SESSIONS_SCAN_MAX names of a folder the run wrote (it may have made millions to
    keep root busy), sorted."""
    names: list[str] = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if len(names) == SESSIONS_SCAN_MAX:
                notes.append(f"sessions: only the first {SESSIONS_SCAN_MAX} names in {where} were looked at")
                break
            names.append(entry.name)
    return sorted(names)


def _session_candidates(projects_fd: int, uid: int) -> tuple[list[str], list[tuple[int, int, str, str]]]:
    """(mtime, size, project folder, name) of each conversation file the names admit, from its
    lstat (the open checks again); and notes on what was refused."""
    notes: list[str] = []
    found: list[tuple[int, int, str, str]] = []
    for folder in _names_in(projects_fd, notes, "projects"):
        if not PROJECT_FOLDER.fullmatch(folder):
            notes.append(f"sessions: project folder {folder[:80]!r} skipped: not a cwd's name")
            continue
        try:
            with _pinned(open_untrusted(projects_fd, folder, uid=uid, kind="directory")) as folder_fd:
                for name in _names_in(folder_fd, notes, folder):
                    if not SESSION_FILE.fullmatch(name):
                        continue  # Claude Code's other files (a session's own folder of subagents)
                    st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                    found.append((st.st_mtime_ns, st.st_size, folder, name))
        except Untrusted as exc:
            notes.append(f"sessions: {folder} skipped: {exc}")
        except OSError as exc:
            notes.append(f"sessions: {folder} skipped: {exc.strerror}")
    return notes, found


def _save_session(
    projects_fd: int, folder: str, name: str, uid: int, target_dir: str, room: int
) -> str | None:
    """Copy one conversation whole, keeping its mtime (the host orders them by it); the note
    when it is not saved."""
    target = f"{target_dir}/{name}"
    try:
        with _pinned(open_untrusted(projects_fd, folder, uid=uid, kind="directory")) as folder_fd:
            source = open_untrusted(folder_fd, name, uid=uid, kind="file")
        with _pinned(source):
            copied, size = copy_capped(source, target, room + 1)
            mtime = os.fstat(source).st_mtime_ns
    except Untrusted as exc:
        return f"session {name} not saved: {exc}"
    except OSError as exc:
        return f"session {name} not saved: {exc.strerror}"
    if copied != size or copied > room:  # it grew or shrank since its lstat
        with contextlib.suppress(OSError):
            os.unlink(target)
        return f"session {name} not saved: it changed while root copied it"
    os.utime(target, ns=(mtime, mtime))
    return None


def connect_holder(p: RunPaths) -> socket.socket:
    """A connection to the run's session holder: only to a socket the run's user owns in the
    holder's folder, reached through the O_PATH fd of that very socket (a path would follow a
    symlink swapped in after the check). Raises Untrusted or OSError."""
    import socket

    sock_fd = open_in_holder_dir(p, "holder.sock", kind="socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(f"/proc/self/fd/{sock_fd}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(sock_fd)
    return sock


# -- launch ----------------------------------------------------------------------------------


REQUEST_MAX = LAUNCH_REQUEST_MAX  # root reads no more of the request line (the host checks it too)


def parse_request(line: bytes) -> LaunchRequest:
    """The launch request, strictly by the contract (raises ContractError): an unknown or a
    missing field, or a wrong type, refuses the launch before anything is made."""
    if len(line) > REQUEST_MAX or not line.endswith(b"\n"):
        raise ContractError(f"LaunchRequest: not one line of at most {REQUEST_MAX} bytes")
    request: LaunchRequest = LaunchRequest.from_json(line)
    return request


def launch() -> int:
    stdin = sys.stdin.buffer
    try:
        request = parse_request(stdin.readline(REQUEST_MAX + 1))
    except ContractError as exc:
        return fail(
            f"refused the launch request (host and guest disagree: run `vmsbx up`): {exc}", EXIT_BAD_REQUEST
        )
    p = request.paths
    run_id = p.run_id
    os.makedirs(RUNS_ROOT, mode=0o700, exist_ok=True)
    try:
        os.mkdir(p.run_dir, 0o700)
    except FileExistsError:
        return fail(f"run {run_id} already exists")
    except OSError as exc:  # e.g. a full guest disk: say so, no traceback
        return fail(f"preparing the run failed: {exc.strerror}: {p.run_dir}")
    try:
        _prepare(request, p, stdin)
        if request.jail is not None:  # nsjail mode: the config, the outside uid, the workspace handed to it
            import nsjail_prep

            try:
                nsjail_prep.prepare(run_id, request.jail.config, request.jail.outside_uid)
            except nsjail_prep.UidInUse as exc:
                _discard(p)
                return fail(f"preparing the run failed: {exc}", EXIT_UID_IN_USE)
        _start_bridges(p, request.bridges)
        started = run(request.systemd_run)
        if started.returncode != 0:
            _discard(p)
            return fail("the sandbox did not start: " + started.stderr.strip())
        invocation = _invocation_of(p)
        if not INVOCATION_ID.fullmatch(invocation):  # fail closed: the host could not follow it
            run(["systemctl", "stop", p.unit])
            _discard(p)
            return fail(f"the sandbox started, but systemd gave no invocation id for {p.unit}")
        print(Launched(unit=p.unit, invocation_id=invocation).to_json(), flush=True)
        return 0
    except StaleMirror as exc:  # nothing was read of the sync stream: the host plans again
        _discard(p)
        return fail(str(exc), EXIT_STALE_MIRROR)
    except Exception as exc:  # leave nothing half-made behind
        _discard(p)
        return fail(f"preparing the run failed: {exc}")


def _invocation_of(p: RunPaths) -> str:
    """The unit's invocation ID, as its ExecStartPre=+ wrote it (done before systemd-run
    returns); systemctl only if that file is missing or odd (one guest process more)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        with open(p.started_stamp, encoding="ascii") as handle:
            written = handle.read().strip()
        if INVOCATION_ID.fullmatch(written):
            return written
    return run(["systemctl", "show", "-p", "InvocationID", "--value", p.unit]).stdout.strip()


def _prepare(request: LaunchRequest, p: RunPaths, stdin: object) -> None:
    tmp_size, ws_size, project = request.sizes.tmp, request.sizes.workspace, request.project
    os.mkdir(p.tmp_dir, 0o755)
    _mount("tmpfs", p.tmp_dir, MS_NOSUID | MS_NODEV, fstype="tmpfs", data=f"size={tmp_size},mode=1777")
    with open(p.spec_outside, "w", encoding="utf-8") as spec:
        spec.write(request.spec.to_json())
    os.chmod(p.spec_outside, 0o644)
    proj = project_paths(project)
    _ensure_project(proj, ws_size)
    _claim_project(proj, p.run_id, request.mirror)
    with open(p.project_note, "w", encoding="ascii") as note:
        note.write(project)
    # The mirror: exactly the host's project (minus excludes) before the run starts.
    import wsync

    written = wsync.apply_stream(proj.mnt, None)
    print(json.dumps({"ok": True, "written": len(written)}), flush=True)
    # The hash cache, checked against the mirror as it is now (nothing else writes it while
    # this run holds the project): what lets the collect after the run trust files whose only
    # change is systemd's chown to the run's user (see wsync.cached_digest).
    wsync.revalidate_cache(proj.mnt, proj.cache, written)
    # Root-owned top: systemd's StateDirectory= (or nsjail_prep) then hands the whole tree to
    # this run's user, even when the dynamic uid happens to equal the last run's.
    os.chown(proj.mnt, 0, 0)
    os.makedirs("/var/lib/private", mode=0o700, exist_ok=True)
    os.chmod("/var/lib/private", 0o700)
    os.makedirs(p.workspace_mount, exist_ok=True)
    _mount(proj.mnt, p.workspace_mount, MS_BIND)


# -- per-project workspaces ------------------------------------------------------------------
#
# /var/lib/vmsbx/projects/<id>/        root-only (0700)
#     workspace.img                    the size-capped ext4 image (the project's mirror)
#     mnt/                             where it stays mounted while the guest is up
#     owner                            the run that has it (one run per project at a time)


def project_paths(project: str) -> ProjectPaths:
    try:
        return ProjectPaths(project)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None


def _ensure_project(proj: ProjectPaths, size: int) -> None:
    """The project's image exists and is mounted; with a `size`, the image must have it (the
    run's workspace cap): the sync's manifest step has already replaced one of another size."""
    os.makedirs(PROJECTS_ROOT, mode=0o700, exist_ok=True)
    os.makedirs(proj.dir, mode=0o700, exist_ok=True)
    if size and os.path.exists(proj.image) and os.path.getsize(proj.image) != size:
        raise RuntimeError(
            f"the project's workspace image is {os.path.getsize(proj.image)} bytes, not the cap of "
            f"{size} (another run changed it since this sync was planned): run again"
        )
    if not os.path.exists(proj.image):
        with open(proj.image + ".new", "wb") as image:
            image.truncate(size)
        _check(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "root_owner=0:0", proj.image + ".new"])
        os.replace(proj.image + ".new", proj.image)
    os.makedirs(proj.mnt, mode=0o755, exist_ok=True)
    if not os.path.ismount(proj.mnt):
        # Mounting may change it (below); and a stamp from before a reboot proves nothing.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(proj.stamp)
        _check(["mount", "-o", "loop,nosuid,nodev", proj.image, proj.mnt])
        # Written by earlier runs: a `lost+found` there may be the agent's link to an empty
        # folder elsewhere (rmdir would fail on it, and every later launch with it).
        with contextlib.suppress(OSError):
            lost = f"{proj.mnt}/lost+found"
            if stat.S_ISDIR(os.lstat(lost).st_mode) and not os.listdir(lost):
                os.rmdir(lost)


def _owner_of(proj: ProjectPaths) -> str:
    """The run id in the project's owner file ('' if there is none)."""
    try:
        with open(proj.owner, encoding="ascii") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""


def _active_owner(proj: ProjectPaths) -> str:
    """The run that holds the project's workspace and is still running ('' if none)."""
    owner = _owner_of(proj)
    if not RUN_ID.fullmatch(owner):
        return ""
    other = paths(owner)
    if os.path.exists(other.result):  # ended (the common case: no systemctl to start)
        return ""
    # Still running: its unit is up. (After a VM reset or kill it has neither result nor unit.)
    state = run(["systemctl", "is-active", other.unit]).stdout.strip()
    return owner if state in ("active", "activating", "deactivating") else ""


class _ProjectLock:
    """The project's owner lock: a claim and a release may run at once (the host releases an
    ended run after its CLI returned, while the next run of the project may be launching), and
    a release that read "mine" must not unlink the claim a new run wrote just after."""

    def __init__(self, proj: ProjectPaths) -> None:
        self.path = proj.lock
        self.fd = -1

    def __enter__(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing drops the lock


class StaleMirror(Exception):
    """The mirror is not the one the host planned its sync against (EXIT_STALE_MIRROR)."""


def _claim_project(proj: ProjectPaths, run_id: str, mirror: str = "") -> None:
    """One run per project at a time; a run that has ended gives its claim up. `mirror`: the
    digest of the manifest the host planned against without asking; it must be the stamp (the
    last listing, made while no run held the mirror). A claimed mirror has no stamp: the run
    writes it."""
    with _ProjectLock(proj):
        owner = _active_owner(proj)
        if owner and owner != run_id:
            raise RuntimeError(f"the project's workspace is in use by run {owner}, which is still running")
        stamp = _read_stamp(proj)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(proj.stamp)
        if mirror and stamp != mirror:
            raise StaleMirror("the project's mirror changed since the host listed it: plan the sync again")
        with open(proj.owner + ".new", "w", encoding="ascii") as handle:
            handle.write(run_id)
        os.replace(proj.owner + ".new", proj.owner)


def _read_stamp(proj: ProjectPaths) -> str:
    try:
        fd = os.open(proj.stamp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        return handle.read(128).decode("ascii", "replace").strip()


def _stamp_mirror(proj: ProjectPaths, listing: bytes, *, holder: str) -> None:
    """After a listing of the mirror: stamp it with the listing's digest, if nothing can write
    the mirror any more before the next claim (`holder`: the ended run whose workspace it is,
    which must still be the owner; '': no run may hold it)."""
    with _ProjectLock(proj):
        owner = _owner_of(proj)
        if (holder and owner != holder) or (not holder and _active_owner(proj)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(proj.stamp)
            return
        with open(proj.stamp + ".new", "w", encoding="ascii") as handle:
            handle.write(mirror_digest(listing))
        os.replace(proj.stamp + ".new", proj.stamp)


def _release_project(run_id: str) -> None:
    project = _run_project(run_id)
    if not project:
        return
    proj = project_paths(project)
    with _ProjectLock(proj):
        if _owner_of(proj) == run_id:
            os.unlink(proj.owner)


def _run_project(run_id: str) -> str:
    try:
        with open(paths(run_id).project_note, encoding="ascii") as handle:
            project = handle.read().strip()
    except FileNotFoundError:
        return ""
    return project if PROJECT_ID.fullmatch(project) else ""


def workspace_root(run_id: str) -> str:
    """The run's workspace after the run (its own mount is gone by then): the project mirror,
    as long as this run still owns it."""
    project = _run_project(run_id)
    if not project:
        raise RuntimeError(f"run {run_id} has no workspace")
    proj = project_paths(project)
    owner = _owner_of(proj)
    if owner != run_id:
        raise RuntimeError(f"the workspace of run {run_id} has been taken over by run {owner or '(none)'}")
    if not os.path.ismount(proj.mnt):
        _ensure_project(proj, 0)
    return proj.mnt


def _start_bridges(p: RunPaths, bridges: dict[str, int]) -> None:
    """One forwarder unit per host service the run may reach; its socket is on the run's
    tmpfs (seen inside as /tmp/.vmsbx-NAME.sock), root-owned so the run cannot replace it.
    All are started before any is waited for: their start-ups overlap."""
    socks = {}
    for name, port in sorted(bridges.items()):
        sock, unit = p.bridge_socket_outside(name), p.bridge_unit(name)  # the contract checked the names
        argv = ["systemd-run", f"--unit={unit}", "--collect", "--quiet", "--service-type=exec",
                "-p", f"ReadWritePaths={p.tmp_dir}"]  # fmt: skip
        for prop in BRIDGE_PROPERTIES:
            argv += ["-p", prop]
        argv += ["--", "socat", f"UNIX-LISTEN:{sock},fork,mode=0666,unlink-early", f"TCP:127.0.0.1:{port}"]
        _check(argv)
        socks[name] = sock
    deadline = time.monotonic() + 10
    for name, sock in socks.items():
        if not _wait_for(sock, max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"the {name} bridge did not come up")


def _stop_bridges(run_id: str, *, enter: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Stop the run's bridges; the caller waits for the returned systemctl (so that it runs
    beside the unmounts). One systemctl for all of them (it still stops the loaded ones when
    others are not): this runs in ExecStopPost=, under TimeoutStopSec=, where every process
    start counts on a slow guest. --no-block: inside a systemd job, waiting for another job
    could deadlock."""
    units = [RunPaths(run_id).bridge_unit(name) for name in sorted(BRIDGES)]
    argv = [*(enter or []), "systemctl", "stop", "--no-block", *units]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


MS_NOSUID, MS_NODEV, MS_BIND = 0x2, 0x4, 0x1000  # <sys/mount.h>


def _mount(source: str, target: str, flags: int, *, fstype: str = "", data: str = "") -> None:
    """mount(2) itself, not a `mount` process on the launch's critical path (0.1-0.3 s each under
    TCG). ctypes costs an import in a plain `guest.py` call, but the guest agent has it loaded.
    The same flags and data `mount -t tmpfs -o …` and `mount --bind` pass (no MS_REC)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    done = libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if done != 0:
        errno_ = ctypes.get_errno()
        raise RuntimeError(f"mount {source} on {target} failed: {os.strerror(errno_)}")


def _check(argv: list[str]) -> None:
    done = run(argv)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()}")


def _teardown(p: RunPaths, *, host_namespace: bool = False) -> None:
    enter = ["nsenter", "--target", "1", "--mount", "--"] if host_namespace else []
    stopping = _stop_bridges(p.run_id, enter=enter)
    # One umount for both (it goes on past one that is not mounted).
    mounted = [path for path in (p.workspace_mount, p.tmp_dir) if host_namespace or os.path.ismount(path)]
    if mounted:
        run([*enter, "umount", "--lazy", *mounted])
    stopping.wait()
    import nsjail_prep

    nsjail_prep.release(p.run_id)


def _discard(p: RunPaths) -> None:
    """Undo a launch that failed: nothing of it may stay in the guest (the project's mirror
    stays; only the run's hold on it goes)."""
    import shutil

    _teardown(p)
    _remove_mountpoint(p.workspace_mount)
    _release_project(p.run_id)
    shutil.rmtree(p.run_dir, ignore_errors=True)


def _remove_mountpoint(path: str) -> None:
    """rmdir, never rmtree: if the bind mount were somehow still there, rmtree would empty the
    project's mirror through it."""
    if os.path.ismount(path):
        run(["umount", "--lazy", path])
    with contextlib.suppress(OSError):
        os.rmdir(path)


# -- attach ----------------------------------------------------------------------------------


def follow(run_id: str, wait: float, invocation: str, after: str | None, *, manifest: bool, cap: str) -> int:
    """A headless run from its start to its end in one guest process (one round trip instead
    of `attach` and then `ended`): the run's output as the holder's own frames (STDOUT, STDERR,
    then one EXIT frame with attach's code) on stdout, then exactly what `ended` prints. The
    frames are length-prefixed, so nothing the run prints can pass for the verdict after them.
    Exit codes as `ended`'s."""
    if not INVOCATION_ID.fullmatch(invocation):
        return fail("invalid invocation id", EXIT_USAGE)
    sys.stdout.buffer.write(_exit_frame(attach(run_id, framed=True)))
    sys.stdout.flush()
    return ended(run_id, wait, invocation, after, manifest=manifest, cap=cap)


def _exit_frame(code: int) -> bytes:
    payload = json.dumps({"code": code}).encode()
    return HEADER.pack(EXIT, len(payload)) + payload


def attach(run_id: str, *, framed: bool = False) -> int:
    """Relay the run's session holder (see Relay); `framed`: for `follow`, which writes the
    EXIT frame itself."""
    p = paths(run_id)
    deadline = time.monotonic() + 30
    while True:
        try:
            sock = connect_holder(p)
            break
        except (OSError, Untrusted) as exc:
            if os.path.exists(p.result):
                return _replay_finished(p, 0, framed=framed)
            if time.monotonic() > deadline:
                why = f" ({exc})" if isinstance(exc, Untrusted) else ""
                return fail(f"run {run_id} has no session holder to attach to{why}")
            time.sleep(0.05)
    tty_state = _raw_stdin()
    relay = Relay(sock, framed=framed)
    try:
        sock.sendall(b"{}\n")
        code = relay.run()
    except OSError:
        code = None
    finally:
        _restore_stdin(tty_state)
    if code is not None:
        return code
    # The holder ended before it served us everything (a fast command can finish before we
    # connect): the rest is in the transcript that ExecStopPost saves, after what we got.
    if _wait_for(p.result, 30):
        return _replay_finished(p, relay.received, framed=framed)
    return fail("the session holder went away before the command finished", EXIT_HOLDER_LOST)


def _wait_for(path: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _raw_stdin() -> object:
    if not os.isatty(0):
        return None
    import termios
    import tty

    state = termios.tcgetattr(0)
    tty.setraw(0)
    return state


def _restore_stdin(state: object) -> None:
    if state is not None:
        import termios

        termios.tcsetattr(0, termios.TCSADRAIN, state)  # type: ignore[arg-type]


def _send_size(sock: socket.socket) -> None:
    if os.isatty(0):
        size = os.get_terminal_size(0)
        payload = json.dumps({"cols": size.columns, "rows": size.lines}).encode()
        sock.sendall(HEADER.pack(RESIZE, len(payload)) + payload)


class Relay:
    """Copies the holder's frames to stdout/stderr and stdin to the holder; counts what it got
    (the holder's stream is its transcript, byte for byte, so the count is a resume offset).
    `framed`: STDOUT and STDERR frames go to stdout as they are (for `follow`)."""

    def __init__(self, sock: socket.socket, *, framed: bool = False) -> None:
        self.sock = sock
        self.received = 0
        self.framed = framed

    def run(self) -> int | None:
        import selectors

        sock = self.sock
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ, "sock")
        sel.register(0, selectors.EVENT_READ, "stdin")
        _send_size(sock)
        signal.signal(signal.SIGWINCH, lambda *_: _send_size(sock))
        buf = b""
        out, err = sys.stdout.buffer, sys.stderr.buffer
        while True:
            for key, _ in sel.select():
                if key.data == "stdin":
                    data = os.read(0, 65536)
                    if data:
                        sock.sendall(HEADER.pack(STDIN, len(data)) + data)
                    else:
                        sock.sendall(HEADER.pack(STDIN_EOF, 0))
                        sel.unregister(0)
                    continue
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                buf += chunk
                while len(buf) >= HEADER.size:
                    kind, length = HEADER.unpack(buf[: HEADER.size])
                    if len(buf) < HEADER.size + length:
                        break
                    payload, buf = buf[HEADER.size : HEADER.size + length], buf[HEADER.size + length :]
                    self.received += HEADER.size + length
                    if self.framed and kind in (STDOUT, STDERR):
                        out.write(HEADER.pack(kind, length) + payload)
                        out.flush()
                    elif kind == STDOUT:
                        out.write(payload)
                        out.flush()
                    elif kind == STDERR:
                        err.write(payload)
                        err.flush()
                    elif kind == EXIT:
                        return int(json.loads(payload)["code"])


def _replay_finished(p: RunPaths, offset: int, *, framed: bool = False) -> int:
    """The run already ended: print its transcript from `offset`, exit with its recorded code
    (`framed`: its STDOUT and STDERR frames as they are, on stdout)."""
    saved = p.transcript
    code = _recorded_code(p)
    if os.path.exists(saved):
        with open(saved, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        while len(data) >= HEADER.size:
            kind, length = HEADER.unpack(data[: HEADER.size])
            payload, data = data[HEADER.size : HEADER.size + length], data[HEADER.size + length :]
            if framed and kind in (STDOUT, STDERR):
                sys.stdout.buffer.write(HEADER.pack(kind, len(payload)) + payload)
            elif kind == STDOUT:
                sys.stdout.buffer.write(payload)
            elif kind == STDERR:
                sys.stderr.buffer.write(payload)
            elif kind == EXIT:
                code = int(json.loads(payload)["code"])
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _recorded_code(p: RunPaths) -> int:
    """The exit code systemd saw (used when the holder died before writing its own)."""
    try:
        with open(p.result, encoding="utf-8") as handle:
            result = json.load(handle)
    except (OSError, ValueError):
        return 255
    status = str(result.get("exit_status", ""))
    return int(status) if result.get("exit_code") == "exited" and status.isdigit() else 255


# -- after the run ---------------------------------------------------------------------------


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _read_keyed(path: str) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                key, _, value = line.partition(" ")
                if value.strip().isdigit():
                    values[key] = int(value)
    except OSError:
        pass
    return values


def _holder_started(p: RunPaths) -> bool:
    """Whether the session holder ran: its first act is to make its folder (.vmsbx) on the
    run's tmpfs. If nsjail (or systemd) failed to set the sandbox up, nothing did, and the host
    reports exit 125 with the reason instead of nsjail's 255 as if it were the command's.
    lstat of the one name in root's own mount point: nothing the sandbox wrote is followed."""
    try:
        os.lstat(p.holder_dir_outside)
    except OSError:
        return False
    return True


def record(run_id: str) -> int:
    p = paths(run_id)
    cgroup = f"/sys/fs/cgroup/system.slice/{p.unit}"
    memory_events = _read_keyed(f"{cgroup}/memory.events")
    pids_events = _read_keyed(f"{cgroup}/pids.events")
    result: dict[str, object] = {
        "service_result": os.environ.get("SERVICE_RESULT", ""),
        "exit_code": os.environ.get("EXIT_CODE", ""),
        "exit_status": os.environ.get("EXIT_STATUS", ""),
        "memory_peak": _read_int(f"{cgroup}/memory.peak"),
        "cpu_usage_usec": _read_keyed(f"{cgroup}/cpu.stat").get("usage_usec"),
        "tasks_peak": _read_int(f"{cgroup}/pids.peak"),
        "oom_kills": memory_events.get("oom_kill", 0),
        "tasks_limit_hits": pids_events.get("max", 0),
        "ended_at": time.time(),
        "holder_started": _holder_started(p),
    }
    note = save_transcript(p)
    notes = [note] if note else []
    try:
        notes += save_sessions(p)
    except Exception as exc:  # a bug or a full disk: the verdict must still be recorded
        notes.append(f"sessions not saved: {exc}")
    result["notes"] = notes
    tmp = p.result + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    os.replace(tmp, p.result)
    # ExecStopPost=+ still runs in the unit's own mount namespace: unmount in PID 1's, where
    # the launcher mounted them, or every run would leave a tmpfs and a loop device behind.
    _teardown(p, host_namespace=True)
    return 0


def result(run_id: str, wait: float) -> int:
    p = paths(run_id)
    deadline = time.monotonic() + wait
    while not os.path.exists(p.result):
        if not os.path.isdir(p.run_dir):
            return fail(f"run {run_id} is not known in this guest", EXIT_NO_RUN)
        if time.monotonic() > deadline:
            return fail(f"run {run_id} has not ended", EXIT_NOT_ENDED)
        time.sleep(0.05)
    with open(p.result, encoding="utf-8") as handle:
        sys.stdout.write(handle.read() + "\n")
    return 0


def ended(
    run_id: str, wait: float, invocation: str, after: str | None, *, manifest: bool = False, cap: str = ""
) -> int:
    """`result`, then (with `manifest`) the run's workspace manifest as `wsync run ID manifest
    @ws` gives it, or `null` if it cannot, as one line, then the run's journal (as `journal`
    gives it) when it has ended: the end of a run costs one guest process start instead of three.
    The manifest is made while journald drains the run's output. Exit codes as `result`'s."""
    if not INVOCATION_ID.fullmatch(invocation):
        return fail("invalid invocation id", EXIT_USAGE)
    code = result(run_id, wait)
    if code != 0:
        return code
    sys.stdout.flush()
    if manifest:
        try:
            listed = (
                wsync_for("run", run_id, ["manifest", "@ws", *([f"--max-new-bytes={cap}"] if cap else [])])
                == 0
            )
        except Exception as exc:  # the verdict is out: the journal must still follow
            fail(f"the workspace manifest failed: {exc}")
            listed = False
        if not listed:
            print("null")  # the host asks again on its own and reports why
        sys.stdout.flush()
    _wait_journal_drained(paths(run_id).unit, JOURNAL_DRAIN_SECONDS)
    return journal(run_id, invocation, after)


JOURNAL_DRAIN_SECONDS = 60.0
JOURNAL_STREAMS = "/run/systemd/journal/streams"


def _wait_journal_drained(unit: str, seconds: float) -> None:
    """Wait until journald has read the unit's output streams to their end.

    The unit's processes are gone once its result exists, but journald reads their stdout at
    its own pace: on a loaded guest a run that printed 100,000 lines ended with thousands still
    unread, and the journal pulled then missed them. journald keeps a state file per open stream
    (naming the unit) and removes it only after reading the stream to EOF, so none left for the
    unit means every line is in the journal."""
    wanted = f"UNIT={unit}\n"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            names = os.listdir(JOURNAL_STREAMS)
        except FileNotFoundError:
            return
        if not any(_stream_is(os.path.join(JOURNAL_STREAMS, name), wanted) for name in names):
            return
        time.sleep(0.1)


def _stream_is(path: str, wanted: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return wanted in handle.read(4096)
    except OSError:  # gone while we looked: drained
        return False


def stop(run_id: str) -> int:
    p = paths(run_id)
    run(["systemctl", "stop", p.unit])
    return 0


def journal(run_id: str, invocation: str, after: str | None) -> int:
    if not INVOCATION_ID.fullmatch(invocation):
        return fail("invalid invocation id", EXIT_USAGE)
    paths(run_id)
    # Only trusted fields select entries: the unit's own processes by invocation, and what
    # PID 1 (systemd) said about that invocation. Never fields the run can write itself.
    argv = ["journalctl", "-o", "json", "--all", "--no-pager", "--show-cursor",
            f"_SYSTEMD_INVOCATION_ID={invocation}", "+", "_PID=1", f"INVOCATION_ID={invocation}"]  # fmt: skip
    if after:
        argv.insert(1, f"--after-cursor={after}")
    os.execvp("journalctl", argv)
    return 0


def score() -> int:
    import tempfile

    unit_text = sys.stdin.read()
    with tempfile.TemporaryDirectory(prefix="vmsbx-score-") as work:
        unit = os.path.join(work, "vmsbx-score.service")
        with open(unit, "w", encoding="utf-8") as handle:
            handle.write(unit_text)
        done = run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit])
    return _print_score(done)


def score_live(run_id: str) -> int:
    p = paths(run_id)
    return _print_score(run(["systemd-analyze", "security", "--no-pager", p.unit]))


def _print_score(done: subprocess.CompletedProcess[str]) -> int:
    found = SCORE_RE.search(done.stdout)
    if not found:
        return fail("systemd-analyze gave no score: " + (done.stderr.strip() or done.stdout[-400:]))
    print(json.dumps({"exposure": float(found.group(1))}))
    return 0


def sessions(run_id: str) -> int:
    """The conversations `record` saved of an ended run, oldest first, one JSON line each:
    {"name": …, "mtime_ns": …, "data": base64 of the file} (base64: the reply's size is bounded
    whatever the bytes, and the host checks their UTF-8 itself)."""
    import base64

    p = paths(run_id)
    if not os.path.exists(p.result):
        return fail(f"run {run_id} has not ended", EXIT_NOT_ENDED)
    try:
        names = [name for name in os.listdir(p.sessions_dir) if SESSION_FILE.fullmatch(name)]
    except FileNotFoundError:
        return 0
    found = []
    for name in names:  # root's own copies, in the root-only run folder
        with _pinned(os.open(f"{p.sessions_dir}/{name}", FILE_FLAGS)) as fd:
            mtime = os.fstat(fd).st_mtime_ns
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read(SESSIONS_MAX_BYTES + 1)
        found.append((mtime, name, data))
    for mtime, name, data in sorted(found):
        encoded = base64.b64encode(data).decode("ascii")
        sys.stdout.write(json.dumps({"name": name, "mtime_ns": mtime, "data": encoded}) + "\n")
    return 0


def release(run_id: str) -> int:
    """After the host has recorded an ended run (and collected its changes): free its tmpfs and
    its hold on the project's workspace; keep its record and transcript (small) so that
    `attach` of an ended run can still replay it."""
    import shutil

    p = paths(run_id)
    if not os.path.exists(p.result):
        return fail(f"run {run_id} has not ended", EXIT_NOT_ENDED)
    _teardown(p)
    _remove_mountpoint(p.workspace_mount)
    if os.path.isdir(p.tmp_dir) and not os.path.ismount(p.tmp_dir):
        shutil.rmtree(p.tmp_dir, ignore_errors=True)
    if os.path.islink(p.workspace):
        os.unlink(p.workspace)
    _release_project(run_id)
    # The host has fetched the conversations (`sessions`) before it releases the run.
    shutil.rmtree(p.sessions_dir, ignore_errors=True)
    return 0


def _size_option(args: list[str]) -> int | None:
    """The `--size=BYTES` among wsync's options (0 when absent, None when malformed)."""
    sizes = [arg.removeprefix("--size=") for arg in args if arg.startswith("--size=")]
    if not sizes:
        return 0
    if len(sizes) > 1 or not re.fullmatch(r"[1-9][0-9]{0,15}", sizes[0]):
        return None
    return int(sizes[0])


def wsync_for(kind: str, ident: str, args: list[str]) -> int:
    """wsync.py on a workspace named by the run (after it ended) or by the project (before a
    sync): `wsync run ID manifest|pack @ws …` / `wsync project ID manifest @ws [--size=BYTES]`.
    The host never names a guest path: "@ws" is resolved here, and the hash cache is the guest's own."""
    if len(args) < 2 or args[1] != "@ws" or args[0] not in ("manifest", "pack"):
        return fail(f"bad wsync arguments: {args!r}", EXIT_USAGE)
    import wsync

    if kind == "run":
        p = paths(ident)
        if not os.path.exists(p.result):
            return fail(f"run {ident} has not ended", EXIT_NOT_ENDED)
        try:
            root = workspace_root(ident)
        except RuntimeError as exc:
            return fail(str(exc), EXIT_NO_RUN)
        project = _run_project(ident)
    elif kind == "project" and PROJECT_ID.fullmatch(ident) and args[0] == "manifest":
        project = ident
        proj = project_paths(project)
        size = _size_option(args[2:])
        if size is None:
            return fail(f"bad wsync arguments: {args!r}", EXIT_USAGE)
        if size and os.path.exists(proj.image) and os.path.getsize(proj.image) != size:
            # The cap changed: a fresh image of the new size (growing or shrinking ext4 in place
            # is not always possible: a 10G image's journal alone is 64M). It is only a mirror;
            # the sync about to be planned from this empty manifest fills it again.
            owner = _active_owner(proj)
            if owner:
                return fail(
                    f"the project's workspace is in use by run {owner}, which is still running", EXIT_NO_RUN
                )
            if os.path.ismount(proj.mnt):
                _check(["umount", proj.mnt])
            os.unlink(proj.image)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(proj.cache)
        if not os.path.exists(proj.image):
            print(json.dumps({"version": wsync.VERSION, "entries": []}))
            return 0
        _ensure_project(proj, 0)
        root = proj.mnt
    else:
        return fail(f"bad wsync target {kind} {ident!r}", EXIT_USAGE)
    rest = [arg for arg in args[2:] if arg == "--purge-bad-names"]
    rest += [
        arg for arg in args[2:] if kind == "run" and re.fullmatch(r"--max-new-bytes=[1-9][0-9]{0,15}", arg)
    ]
    if args[0] != "manifest":
        return wsync.main([args[0], root, *rest])
    rest += ["--cache", project_paths(project).cache]
    if kind == "run":
        with contextlib.suppress(FileNotFoundError):
            # Stamped by the unit's ExecStartPre=+ (root), after systemd's chown and before
            # any process of the run: see wsync.cached_digest.
            rest += ["--stable-before", str(os.stat(paths(ident).started_stamp).st_mtime_ns)]
    import io

    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        code = wsync.main(["manifest", root, *rest])
    sys.stdout.write(listing.getvalue())
    if code == 0 and project:
        _stamp_mirror(
            project_paths(project), listing.getvalue().encode(), holder=ident if kind == "run" else ""
        )
    return code


# git runs on a repository the agent controlled: its config could name programs to run
# (core.fsmonitor, core.sshCommand …). So git runs as a throw-away user with no network and a
# read-only view of the workspace, and its output (the bundle) is only data for the host.
GIT_UNIT_PROPERTIES = [
    "DynamicUser=yes", "PrivateNetwork=yes", "ProtectSystem=strict", "ProtectHome=yes",
    "PrivateTmp=yes", "PrivateDevices=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=",
    "RestrictNamespaces=yes", "MemoryMax=1G", "TasksMax=64", "RuntimeMaxSec=300",
    "Environment=GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null HOME=/nonexistent",
]  # fmt: skip


def bundle(run_id: str, bases: list[str]) -> int:
    """A git bundle of the workspace's HEAD, minus what the host already has, on stdout."""
    p = paths(run_id)
    if not all(re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", base) for base in bases):
        return fail("invalid base commit id", EXIT_USAGE)
    if not os.path.exists(p.result):
        return fail(f"run {run_id} has not ended", EXIT_NOT_ENDED)
    try:
        root = workspace_root(run_id)  # the run's own mount is gone once it ended
    except RuntimeError as exc:
        return fail(str(exc), EXIT_NO_RUN)
    if not os.path.isdir(f"{root}/.git"):
        return fail("the workspace is not a git repository", EXIT_NO_RUN)
    argv = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect",
            "-p", f"BindReadOnlyPaths={root}:/ws"]  # fmt: skip
    for prop in GIT_UNIT_PROPERTIES:
        argv += ["-p", prop]
    argv += ["--", "git", "-c", "safe.directory=*", "-c", "core.fsmonitor=false",
             "-c", "core.hooksPath=/dev/null", "-C", "/ws", "bundle", "create", "-", "HEAD"]  # fmt: skip
    if bases:
        argv += ["--not", *bases]
    sys.stdout.flush()
    os.execvp("systemd-run", argv)
    return 0


def main(argv: list[str]) -> int:
    if not argv:
        return fail("usage: guest.py launch|attach|result|record|stop|journal|score|score-live", EXIT_USAGE)
    verb, rest = argv[0], argv[1:]
    if verb == "launch":
        return launch()
    if verb == "attach" and len(rest) == 1:
        return attach(rest[0])
    if verb == "result" and rest:
        return result(rest[0], float(rest[1]) if len(rest) > 1 else 0.0)
    if verb == "record" and len(rest) == 1:
        return record(rest[0])
    if verb in ("ended", "follow") and len(rest) in (3, 4, 5):
        flag = re.fullmatch(r"--manifest(=[1-9][0-9]{0,15})?", rest[-1])
        args = rest[:-1] if flag else rest
        if verb == "follow" and len(args) in (3, 4):
            cap = rest[-1].partition("=")[2] if flag else ""
            after = args[3] if len(args) == 4 else None
            return follow(args[0], float(args[1]), args[2], after, manifest=bool(flag), cap=cap)
    if verb == "ended" and len(rest) in (4, 5) and re.fullmatch(r"--manifest(=[1-9][0-9]{0,15})?", rest[-1]):
        cap = rest[-1].partition("=")[2]
        return ended(
            rest[0], float(rest[1]), rest[2], rest[3] if len(rest) == 5 else None, manifest=True, cap=cap
        )
    if verb == "ended" and len(rest) in (3, 4):
        return ended(rest[0], float(rest[1]), rest[2], rest[3] if len(rest) == 4 else None)
    if verb == "stop" and len(rest) == 1:
        return stop(rest[0])
    if verb == "journal" and len(rest) in (2, 3):
        return journal(rest[0], rest[1], rest[2] if len(rest) == 3 else None)
    if verb == "score":
        return score()
    if verb == "score-live" and len(rest) == 1:
        return score_live(rest[0])
    if verb == "release" and len(rest) == 1:
        return release(rest[0])
    if verb == "sessions" and len(rest) == 1:
        return sessions(rest[0])
    if verb == "wsync" and len(rest) >= 2:
        return wsync_for(rest[0], rest[1], rest[2:])
    if verb == "bundle" and rest:
        return bundle(rest[0], rest[1:])
    return fail(f"bad arguments: {argv!r}", EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
