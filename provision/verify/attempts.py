#!/usr/bin/python3
"""vmsbx verify: escape attempts, as an agent would try them. One result line per attempt:

    VMSBX-VERIFY<TAB>name<TAB>ok|fail<TAB>what happened

`ok` means the attempt SUCCEEDED (the wall did not hold). vmsbx runs this file twice: inside a
real run of the sandbox (VERIFY_MODE=attack: every attempt must fail) and as root in the guest
outside it (VERIFY_MODE=control: every attempt must work, or it proves nothing).

    attempts.py run               every attempt (or those named in VERIFY_ONLY), in order
    attempts.py aftermath TOKEN   as root after the run: which persistence attempts of TOKEN
                                  outlived it (VERIFY_CLEAN=1 also removes what they left)

Each attempt is a small function that returns a note when it got through and raises when it
was stopped. Each runs in a forked child with a deadline (no exec: process start-up is the
slow part under emulation). Network attempts aim only at the guest itself, the listener vmsbx
started there, and the provider's gateway addresses. Settings arrive in VERIFY_* variables
(vmsbx/verify/suite.py). Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import json
import os
import platform
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable

MODE = os.environ.get("VERIFY_MODE", "attack")
TOKEN = os.environ.get("VERIFY_TOKEN", "none")
CONTROL = MODE == "control"
# The planted credential's prefix, never written as one piece: this file must not match itself.
CANARY = "sk-ant-api03-vmsbx" + "canary-"
MiB = 1 << 20

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
# io_uring's numbers are the same on every architecture (the unified table, from 425).
_IO_URING = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}
SYSCALLS = {
    "x86_64": {"add_key": 248, "request_key": 249, "keyctl": 250, "bpf": 321, "perf_event_open": 298,
               **_IO_URING},
    "aarch64": {"add_key": 217, "request_key": 218, "keyctl": 219, "bpf": 280, "perf_event_open": 241,
                **_IO_URING},
}  # fmt: skip
# What a seccomp filter answers: the kernel itself never refuses these calls' arguments so.
FILTERED = (errno.EPERM, errno.ENOSYS)


class Blocked(Exception):
    """The attempt was stopped; the message says how."""


def env(name: str) -> str:
    return os.environ.get(f"VERIFY_{name}", "")


def sh(script: str, *args: str, seconds: float = 20) -> str:
    """A shell snippet (for what is naturally a command); its output if it succeeded."""
    done = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *args], capture_output=True, text=True, timeout=seconds,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0:
        raise Blocked(f"exit {done.returncode}: {lines[-1] if lines else ''}")
    return lines[-1] if lines else ""


def syscall(name: str, *args: object) -> int:
    wide = [ctypes.c_long(arg) if isinstance(arg, int) else arg for arg in args]
    result = libc.syscall(ctypes.c_long(SYSCALLS[platform.machine()][name]), *wide)
    if result < 0:
        raise OSError(ctypes.get_errno(), f"{name}: {os.strerror(ctypes.get_errno())}")
    return int(result)


def read_one(path: str) -> str:
    with open(path, "rb") as handle:
        handle.read(1)
    return f"read {path}"


def list_dir(path: str) -> str:
    return f"listed {path}: {len(os.listdir(path))} entries"


def leave(directory: str, marker: str) -> str:
    """Leave a harmless marker file; aftermath looks for it after the run."""
    os.makedirs(directory, exist_ok=True)
    path = f"{directory}/vmsbx-verify-{TOKEN}-{marker}"
    with open(path, "w", encoding="ascii") as handle:
        handle.write("# vmsbx verify marker, harmless\n")
    return f"wrote {path}"


def leave_any(marker: str, *directories: str) -> str:
    reasons = []
    for directory in directories:
        try:
            return leave(directory, marker)
        except OSError as exc:
            reasons.append(f"{directory}: {exc.strerror}")
    raise Blocked("; ".join(reasons))


def tcp(host: str, port: int | str) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect((host, int(port)))
    return f"connected to {host}:{port}"


def tcp_any(port: int | str, hosts: list[str]) -> str:
    reasons = []
    for host in hosts:
        try:
            return tcp(host, port)
        except OSError as exc:
            reasons.append(f"{host}: {exc.strerror or exc}")
    raise Blocked("; ".join(reasons) or "no gateway address")


def gateways() -> list[str]:
    """The provider's ways to the host: QEMU/Lima slirp's host alias, Lima user-v2's gateway,
    WSL's and everyone's default route."""
    found = ["10.0.2.2", "192.168.5.2"]
    try:
        with open("/proc/net/route", encoding="ascii") as routes:
            for line in routes.readlines()[1:]:
                fields = line.split()
                if fields[1] == "00000000":
                    found.append(socket.inet_ntoa(struct.pack("<I", int(fields[2], 16))))
    except OSError:
        pass
    return found


# -- host reach ---------------------------------------------------------------------------------


def host_mounts() -> str:
    """Host folders a provider may share: Lima (virtiofs/9p/sshfs), WSL (drvfs, /mnt/c),
    Multipass (sshfs), VirtualBox. The control also accepts the guest's own ext4 root, proving
    that the search itself works."""
    kinds = {"9p", "virtiofs", "fuse.sshfs", "sshfs", "drvfs", "vboxsf"} | ({"ext4"} if CONTROL else set())
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
        found = [line.split()[1] for line in mounts if line.split()[2] in kinds]
    found += [p for p in ("/mnt/c", "/mnt/host", "/Users", "/mnt/wsl") if os.path.isdir(p)]
    if not found:
        raise Blocked("no host-shared folder visible")
    return "visible: " + " ".join(found[:3])


def host_gateway() -> str:
    return tcp_any(22, [env("GUEST_IP")] if CONTROL else gateways())


def host_listener() -> str:
    """A listener vmsbx opened on the host's loopback, through the provider's host alias."""
    if CONTROL:
        return tcp(env("GUEST_IP"), env("TCP_PORT"))
    return tcp_any(env("HOST_PORT"), gateways())


# -- guest files --------------------------------------------------------------------------------


def _is_here(name: str, here: os.stat_result) -> bool:
    try:
        st = os.stat(f"/var/lib/private/{name}")
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def other_workspaces() -> str:
    """Another run's workspace (vmsbx plants a decoy one beside the real ones while it verifies)."""
    # The run's own folder is the one its cwd is (the cwd may be a stable path bound to it, not
    # systemd's /var/lib/vmsbx-ws-<id>): compared by device and inode, not by name.
    here = os.stat(".")
    others = [
        n for n in os.listdir("/var/lib/private") if n.startswith("vmsbx-ws-") and not _is_here(n, here)
    ]
    if not others:
        raise Blocked("only this run's own workspace is visible")
    return "visible: " + " ".join(others[:2])


# -- privilege ----------------------------------------------------------------------------------


def setuid_bit() -> str:
    return sh('cp /usr/bin/true "$1" && chmod u+s "$1" && [ -u "$1" ]; rc=$?; rm -f "$1"; exit $rc',
              "./.vmsbx-verify-suid")  # fmt: skip


def capabilities() -> str:
    with open("/proc/self/status", encoding="ascii") as status:
        caps = dict(line.split(":", 1) for line in status if line.startswith("Cap"))
    effective, bounding = int(caps["CapEff"], 16), int(caps["CapBnd"], 16)
    if effective == 0 and bounding == 0:
        raise Blocked("none (CapEff and CapBnd are 0)")
    return f"CapEff={effective:x} CapBnd={bounding:x}"


def mount() -> str:
    return sh('d=$(mktemp -d) && mount -t tmpfs vmsbx-verify "$d" && umount "$d" && rmdir "$d"')


def user_namespace() -> str:
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
    return "created one"


def ptrace() -> str:
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    attached = libc.ptrace(16, child, None, None)  # PTRACE_ATTACH
    err = ctypes.get_errno()
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    if attached != 0:
        raise OSError(err, "ptrace(PTRACE_ATTACH)")
    return "attached"


def kernel_module() -> str:
    found = glob.glob(f"/lib/modules/{os.uname().release}/kernel/drivers/net/dummy.ko*")
    if not found:
        raise Blocked("no modules visible to load")
    return sh('/usr/sbin/insmod "$1" numdummies=0 && /usr/sbin/rmmod dummy', found[0])


def keyctl() -> str:
    """A key in the uid's user keyring, which outlives the run for whoever gets the uid next."""
    serial = syscall("add_key", b"user", b"vmsbx-verify", b"x", 1, -4)  # KEY_SPEC_USER_KEYRING
    syscall("keyctl", 21, serial)  # KEYCTL_INVALIDATE: leave nothing
    return "added a key"


def reaches(calls: list[tuple[str, Callable[[], str]]]) -> str:
    """Which of `calls` got to the kernel (any answer but a filter's): succeeds if one did."""
    reached, stopped = [], []
    for name, call in calls:
        try:
            reached.append(f"{name}: {call()}")
        except OSError as exc:
            if exc.errno in FILTERED:
                stopped.append(name)
            else:
                code = errno.errorcode.get(exc.errno or 0, exc.errno)
                reached.append(f"{name}: reached the kernel ({code})")
    if not reached:
        raise Blocked(f"{', '.join(stopped)}: refused (EPERM/ENOSYS, the syscall filter)")
    return "; ".join(reached)


def io_uring() -> str:
    """Set up a real ring and use it; a blocked setup still tries the other two calls (fd -1)."""
    ring = [-1]

    def setup() -> str:
        ring[0] = syscall("io_uring_setup", 4, ctypes.create_string_buffer(120))  # 4 entries
        return "made a ring"

    def enter() -> str:
        return f"returned {syscall('io_uring_enter', ring[0], 0, 0, 0, None, 0)}"

    def register() -> str:
        return f"returned {syscall('io_uring_register', ring[0], 1, None, 0)}"  # UNREGISTER_BUFFERS

    try:
        calls = [("io_uring_setup", setup), ("io_uring_enter", enter), ("io_uring_register", register)]
        return reaches(calls)
    finally:
        if ring[0] >= 0:
            os.close(ring[0])


def keyring() -> str:
    """A key in this thread's own keyring (gone with the thread), a keyring lookup, a search."""

    def add() -> str:
        serial = syscall("add_key", b"user", b"vmsbx-verify", b"x", 1, -1)  # KEY_SPEC_THREAD_KEYRING
        with contextlib.suppress(OSError):
            syscall("keyctl", 21, serial)  # KEYCTL_INVALIDATE: leave nothing
        return "added a key"

    def lookup() -> str:
        return f"keyring {syscall('keyctl', 0, -1, 1)}"  # KEYCTL_GET_KEYRING_ID, thread, create

    def search() -> str:
        syscall("request_key", b"user", b"vmsbx-verify-absent", None, 0)
        return "found a key"

    return reaches([("add_key", add), ("keyctl", lookup), ("request_key", search)])


def bpf() -> str:
    attr = struct.pack("IIII", 2, 4, 4, 1) + bytes(104)  # BPF_MAP_CREATE of a 1-entry array
    fd = syscall("bpf", 0, ctypes.create_string_buffer(attr), len(attr))
    os.close(fd)
    return "created a map"


def perf_event() -> str:
    attr = struct.pack("IIQ", 1, 112, 0) + bytes(96)  # PERF_TYPE_SOFTWARE, CPU_CLOCK
    fd = syscall("perf_event_open", ctypes.create_string_buffer(attr), -1, 0, -1, 0)  # CPU 0, any pid
    os.close(fd)
    return "opened a CPU-wide counter"


def proc_sys_write() -> str:
    """Write back the value already there: changes nothing, but needs write access."""
    path = "/proc/sys/kernel/printk_ratelimit"
    with open(path, encoding="ascii") as handle:
        value = handle.read()
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)
    return f"wrote {path}"


def raw_device() -> str:
    disks = sorted(glob.glob("/dev/[vsh]d[a-z]") + glob.glob("/dev/nvme[0-9]n[0-9]"))
    if not disks:
        raise Blocked("no disk device visible")
    return read_one(disks[0])


# -- privileged services ------------------------------------------------------------------------


def unix(path: str) -> str:
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(address)
    return f"connected to {path}"


def journal_forge() -> str:
    """Log through journald's native socket claiming to be ssh.service (trusted fields)."""
    entry = (
        f"MESSAGE=vmsbx-verify-{TOKEN}-journal\n_SYSTEMD_UNIT=ssh.service\n_UID=0\nSYSLOG_IDENTIFIER=sshd\n"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(entry.encode(), "/run/systemd/journal/socket")
    return "sent"


def tiocsti() -> str:
    """Push input into the controlling terminal. The control makes itself one (script(1))."""
    if CONTROL:
        return sh('script -qec "python3 \\"$1\\" tiocsti" /dev/null', os.path.abspath(__file__))
    return _tiocsti()


def _tiocsti() -> str:
    fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"\n")
    finally:
        os.close(fd)
    return "injected a newline"


# -- network ------------------------------------------------------------------------------------


def udp_dns() -> str:
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query, (env("GUEST_IP"), int(env("UDP_PORT"))))
        sock.recvfrom(512)
    return "got an answer"


def icmp() -> str:
    sock = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_RAW):
        try:
            sock = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
            break
        except OSError as exc:
            reason = exc
    if sock is None:
        raise reason
    with sock:
        body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"vmsbx!"  # an even length: 7 words
        total = sum(struct.unpack("!7H", body))
        total = (total >> 16) + (total & 0xFFFF)
        checksum = ~(total + (total >> 16)) & 0xFFFF
        sock.settimeout(5)
        sock.sendto(body[:2] + struct.pack("!H", checksum) + body[4:], (env("GUEST_IP"), 0))
        while True:
            data = sock.recv(1024)
            reply = data[20:] if kind == socket.SOCK_RAW else data
            if reply[:1] == b"\x00":
                return "echo reply"


def proxy_bypass() -> str:
    """Ignore any proxy settings and go straight to an endpoint the policy does not grant."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ.pop(name, None)
    return tcp(env("GUEST_IP"), env("TCP_PORT"))


# -- secrets ------------------------------------------------------------------------------------


def proc_search(kind: str) -> str:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/{kind}", "rb") as handle:
                    if CANARY.encode() in handle.read():
                        found.append(f"/proc/{entry}/{kind}")
            except OSError:
                continue
    if CANARY in "".join(os.environ.values()) and kind == "environ":
        found.append("own environment")
    if not found:
        raise Blocked(f"not in any readable /proc/*/{kind}")
    return "found in " + " ".join(found[:3])


def secret_files() -> str:
    me = os.path.realpath(__file__)
    roots = ["/etc", "/root", "/home", "/var/lib", "/tmp", "/var/tmp", os.path.expanduser("~"), os.getcwd()]
    needle = CANARY.encode()
    for root in roots:
        for directory, _dirs, files in os.walk(root, onerror=None):
            for name in files:
                path = os.path.join(directory, name)
                try:
                    if os.path.realpath(path) == me or os.path.getsize(path) > 4 * MiB:
                        continue
                    with open(path, "rb") as handle:
                        if needle in handle.read():
                            return f"found in {path}"
                except OSError:
                    continue
    raise Blocked("not in any readable file")


def secret_journal() -> str:
    out = subprocess.run(
        ["journalctl", "--no-pager", "-q", "-o", "cat"], capture_output=True, timeout=30, check=False
    ).stdout
    if CANARY.encode() not in out:
        raise Blocked("not in any journal entry this user can read")
    return "found in the journal"


# -- resources ----------------------------------------------------------------------------------


def open_files() -> str:
    wanted = int(env("OPEN_FILES")) + 64
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted + 16, max(hard, wanted + 16)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    opened: list[int] = []
    try:
        while len(opened) < wanted:
            opened.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        raise Blocked(f"stopped at {len(opened)} open files: {exc.strerror}") from None
    finally:
        for fd in opened:
            os.close(fd)
    return f"opened {wanted}"


def fill(path: str, cap: int) -> str:
    """Write until the disk is full; succeeds only if more than the cap fitted."""
    written = 0
    chunk = b"\0" * MiB
    try:
        with open(path, "wb") as handle:
            while written <= cap + 16 * MiB:
                handle.write(chunk)
                handle.flush()
                written += len(chunk)
            os.fsync(handle.fileno())
    except OSError as exc:
        raise Blocked(f"{exc.strerror} after {written // MiB} MiB (cap {cap // MiB} MiB)") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return f"wrote {written // MiB} MiB (cap {cap // MiB} MiB)"


def fill_workspace() -> str:
    return fill("./.vmsbx-verify-fill", int(env("WORKSPACE_SIZE")))


def fill_tmp() -> str:
    # The control must not fill the guest's RAM: its disk shows the same thing.
    return fill(("/var/tmp" if CONTROL else "/tmp") + "/.vmsbx-verify-fill", int(env("TMP_SIZE")))


def fork_bomb() -> str:
    """A real fork bomb in its own process group for 4 s; succeeds if it outgrew the task limit.
    The control starts a bounded number instead (a real bomb as root would take the guest down)."""
    wanted = int(env("TASKS")) + 32
    if CONTROL:
        return _spawn(wanted)
    leader = os.fork()
    if leader == 0:
        os.setpgid(0, 0)
        os.execvp("bash", ["bash", "-c", ":(){ :|:& };:"])
    peak, deadline = 0, time.monotonic() + 4
    while time.monotonic() < deadline:
        peak = max(peak, _group_size(leader))
        time.sleep(0.2)
    while _group_size(leader):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader, signal.SIGKILL)
        time.sleep(0.1)
        _reap()
    _reap()
    if peak < wanted:
        raise Blocked(f"the bomb peaked at {peak} processes seen (limit {wanted - 32})")
    return f"{peak} processes"


def _spawn(count: int) -> str:
    children = []
    try:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return f"started {len(children)} processes"


def _group_size(pgid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                count += 1
    return count


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def memory_bomb() -> str:
    wanted = int(env("MEMORY")) + 128 * MiB
    chunks: list[bytes] = []
    while len(chunks) * 16 * MiB < wanted:
        chunks.append(b"x" * (16 * MiB))
    return f"allocated {wanted // MiB} MiB"


# name -> (function, deadline in seconds). Order matters: the memory bomb goes last, because
# when the limit holds the sandbox ends the whole run (OOMPolicy=stop).
ATTEMPTS: dict[str, tuple[Callable[[], str], float]] = {
    "host_mounts": (host_mounts, 10),
    "host_gateway": (host_gateway, 20),
    "host_listener": (host_listener, 20),
    "shadow_read": (lambda: read_one("/etc/shadow"), 10),
    "root_home": (lambda: list_dir("/root"), 10),
    "other_workspaces": (other_workspaces, 10),
    "vmsbx_state": (lambda: list_dir("/var/lib/vmsbx/runs"), 10),
    "guest_ssh_keys": (lambda: read_one("/etc/ssh/ssh_host_ed25519_key"), 10),
    "etc_write": (lambda: leave("/etc", "verify"), 10),
    "usr_local_write": (lambda: leave("/usr/local/bin", "verify"), 10),
    "var_tmp_persist": (lambda: leave("/var/tmp", "persist"), 10),
    "home_dotfile": (lambda: leave(os.path.expanduser("~"), "dotfile"), 10),
    "cron_job": (lambda: leave_any("cron", "/etc/cron.d", "/var/spool/cron/crontabs"), 10),
    "systemd_user_unit": (lambda: leave(os.path.expanduser("~/.config/systemd/user"), "unit"), 10),
    "git_hooks": (
        lambda: leave_any("hook", "/usr/share/git-core/templates/hooks", os.path.expanduser("~/.config/git")),
        10,
    ),
    "su_root": (lambda: sh("su -c true root"), 15),
    "setuid_bit": (setuid_bit, 10),
    "capabilities": (capabilities, 10),
    "mount": (mount, 10),
    "user_namespace": (user_namespace, 10),
    "ptrace": (ptrace, 10),
    "kernel_module": (kernel_module, 15),
    "keyctl": (keyctl, 10),
    "io_uring": (io_uring, 10),
    "keyring": (keyring, 10),
    "bpf": (bpf, 10),
    "perf_event": (perf_event, 10),
    "proc_sys_write": (proc_sys_write, 10),
    "raw_device": (raw_device, 10),
    "dbus_system": (lambda: unix("/run/dbus/system_bus_socket"), 10),
    "systemd_private": (lambda: unix("/run/systemd/private"), 10),
    "guest_agent": (lambda: unix(env("GUEST_AGENT")), 10),
    "journal_forge": (journal_forge, 10),
    "abstract_unix": (lambda: unix(f"@vmsbx-verify-{env('LISTENER_TOKEN')}"), 10),
    "tiocsti": (tiocsti, 15),
    "tcp_guest": (lambda: tcp(env("GUEST_IP"), env("TCP_PORT")), 10),
    "tcp_loopback": (lambda: tcp("127.0.0.1", 22), 10),
    "ipv6_loopback": (lambda: tcp("::1", 22), 10),
    "udp_dns": (udp_dns, 10),
    "icmp": (icmp, 10),
    "proxy_bypass": (proxy_bypass, 10),
    "secret_env": (lambda: proc_search("environ"), 20),
    "secret_argv": (lambda: proc_search("cmdline"), 20),
    "secret_files": (secret_files, 40),
    "secret_journal": (secret_journal, 40),
    "open_files": (open_files, 30),
    "fill_workspace": (fill_workspace, 60),
    "fill_tmp": (fill_tmp, 60),
    "fork_bomb": (fork_bomb, 30),
    "memory_bomb": (memory_bomb, 30),
}


def emit(name: str, result: str, detail: str) -> None:
    clean = " ".join(str(detail).replace("\t", " ").split())[:200]
    sys.stdout.write(f"VMSBX-VERIFY\t{name}\t{result}\t{clean}\n")
    sys.stdout.flush()


def attempt(name: str, func: Callable[[], str], seconds: float) -> None:
    """Run one attempt in a forked child with a deadline; report what it says."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.setpgid(0, 0)
        try:
            report = {"ok": True, "detail": func()}
        except Blocked as exc:
            report = {"ok": False, "detail": str(exc)}
        except BaseException as exc:  # anything that stopped it is the wall's answer
            report = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(report).encode()[:4000])
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + seconds
    data = b""

    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child, 0)
    try:
        report = json.loads(data)
    except ValueError:
        emit(name, "fail", f"no answer within {seconds:g} s" if not data else "garbled answer")
        return
    emit(name, "ok" if report["ok"] else "fail", str(report["detail"]))


def run_all() -> None:
    only = set(os.environ.get("VERIFY_ONLY", "").split())
    for name, (func, seconds) in ATTEMPTS.items():
        if only and name not in only:
            continue
        if name == "memory_bomb":
            emit(name, "started", f"allocating more than {int(env('MEMORY')) // MiB} MiB")
        attempt(name, func, seconds)
    emit("done", "done", "all attempts ran")


# -- after the run, as root ---------------------------------------------------------------------

PERSISTENT = {  # attempt -> (marker, where a surviving copy would be)
    "etc_write": ("verify", ("/etc",)),
    "usr_local_write": ("verify", ("/usr/local",)),
    "var_tmp_persist": ("persist", ("/var/tmp", "/tmp")),
    "home_dotfile": ("dotfile", ("/root", "/home")),
    "cron_job": ("cron", ("/etc/cron.d", "/var/spool/cron")),
    "systemd_user_unit": ("unit", ("/root", "/home", "/etc/systemd")),
    "git_hooks": ("hook", ("/usr/share/git-core", "/root", "/home")),
}


def aftermath(token: str) -> None:
    clean = os.environ.get("VERIFY_CLEAN") == "1"
    for name, (marker, roots) in PERSISTENT.items():
        wanted = f"vmsbx-verify-{token}-{marker}"
        found = [
            os.path.join(directory, wanted)
            for root in roots
            for directory, _dirs, files in os.walk(root)
            if wanted in files and not directory.startswith(("/var/lib/vmsbx", "/var/lib/private"))
        ]
        if found:
            emit(name, "ok", "still there after the run: " + " ".join(found[:3]))
        else:
            emit(name, "fail", "nothing left in the guest after the run")
        if clean:
            for path in found:
                with contextlib.suppress(OSError):
                    os.unlink(path)
    entries = subprocess.run(
        ["journalctl", "--no-pager", "-q", "-o", "json", f"MESSAGE=vmsbx-verify-{token}-journal"],
        capture_output=True, timeout=60, check=False,
    ).stdout.splitlines()  # fmt: skip
    units = sorted({str(json.loads(line).get("_SYSTEMD_UNIT", "-")) for line in entries})
    if token == os.environ.get("VERIFY_CONTROL_TOKEN"):
        # The control shows that the socket takes messages at all.
        if units:
            emit("journal_forge", "ok", "arrived (from " + " ".join(units) + ")")
        else:
            emit("journal_forge", "fail", "the message never arrived")
    elif "ssh.service" in units:
        emit("journal_forge", "ok", "journald believed the forged unit: " + " ".join(units))
    else:
        seen = " ".join(units) or "nothing arrived"
        emit("journal_forge", "fail", "journald set the trusted fields itself: " + seen)


def main(argv: list[str]) -> int:
    if argv == ["run"]:
        run_all()
    elif len(argv) == 2 and argv[0] == "aftermath":
        aftermath(argv[1])
    elif argv == ["tiocsti"]:
        _tiocsti()
    else:
        sys.stderr.write("usage: attempts.py run | aftermath TOKEN\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
