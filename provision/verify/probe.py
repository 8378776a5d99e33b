#!/usr/bin/python3
"""vmsbx verify: the attempts that need a system call, not a shell command.

    probe.py NAME ARGS...   exits 0 if the attempt SUCCEEDED (the wall did not hold), else
                            non-zero with the reason on stderr.

Run by attempts.sh, inside the sandbox and (as the positive control) as root outside it.
Standard library only; every attempt is small and aims only at the guest itself.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import resource
import signal
import socket
import struct
import sys
import termios
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
# System call numbers the attempts need, per architecture (they are not in the os module).
SYSCALLS = {
    "x86_64": {"add_key": 248, "keyctl": 250, "bpf": 321, "perf_event_open": 298},
    "aarch64": {"add_key": 217, "keyctl": 219, "bpf": 280, "perf_event_open": 241},
}


def syscall(name: str, *args: object) -> int:
    number = SYSCALLS[platform.machine()][name]
    result = libc.syscall(number, *args)
    if result < 0:
        raise OSError(ctypes.get_errno(), f"{name}: {os.strerror(ctypes.get_errno())}")
    return int(result)


def ptrace() -> None:
    """Attach to a process of our own: the first step of reading another process's memory."""
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
        raise OSError(err, f"ptrace(PTRACE_ATTACH): {os.strerror(err)}")


def keyctl() -> None:
    """Put a key into the user keyring shared by every process of this uid (persists past the run)."""
    key_spec_user_keyring = -4
    serial = syscall("add_key", b"user", b"vmsbx-verify", b"x", 1, key_spec_user_keyring)
    syscall("keyctl", 21, serial)  # KEYCTL_INVALIDATE: leave nothing behind


def bpf() -> None:
    """Create a BPF map (the first step of loading a program into the kernel)."""
    attr = struct.pack("IIII", 2, 4, 4, 1) + bytes(104)  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
    buf = ctypes.create_string_buffer(attr)
    fd = syscall("bpf", 0, buf, len(attr))  # BPF_MAP_CREATE
    os.close(fd)


def perf_event() -> None:
    """Open a CPU-wide performance counter (a side channel on every process of the guest)."""
    attr = struct.pack("IIQ", 1, 112, 0) + bytes(96)  # PERF_TYPE_SOFTWARE, size, CPU_CLOCK
    buf = ctypes.create_string_buffer(attr)
    fd = syscall("perf_event_open", buf, -1, 0, -1, 0)  # any process, CPU 0
    os.close(fd)


def capabilities() -> None:
    """Any effective or bounding capability at all."""
    with open("/proc/self/status", encoding="ascii") as status:
        caps = dict(line.split(":", 1) for line in status if line.startswith("Cap"))
    effective, bounding = int(caps["CapEff"], 16), int(caps["CapBnd"], 16)
    if effective == 0 and bounding == 0:
        raise OSError(errno.EPERM, "no capabilities (CapEff and CapBnd are 0)")


def tiocsti() -> None:
    """Push a character into the input of the controlling terminal (TIOCSTI)."""
    fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"\n")
    finally:
        os.close(fd)


def connect_unix(path: str) -> None:
    """Connect to a Unix socket (a leading @ means the abstract namespace)."""
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(address)


def tcp(host: str, port: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect((host, int(port)))


def tcp_any(port: str, *hosts: str) -> None:
    """Connect to any of hosts:port (the provider's gateway addresses)."""
    reasons = []
    for host in filter(None, hosts):
        try:
            tcp(host, port)
            return
        except OSError as exc:
            reasons.append(f"{host}: {exc.strerror or exc}")
    raise OSError(errno.EHOSTUNREACH, "; ".join(reasons) or "no gateway address")


def udp(host: str, port: str) -> None:
    """Send a datagram (a DNS query) and wait for any answer."""
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query, (host, int(port)))
        sock.recvfrom(512)


def icmp(host: str) -> None:
    """An ICMP echo request, unprivileged (ping socket) or raw."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_RAW):
        try:
            sock = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
            break
        except OSError as exc:
            reason = exc
    else:
        raise reason
    with sock:
        body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"vmsbx"
        checksum = _inet_checksum(body)
        packet = body[:2] + struct.pack("!H", checksum) + body[4:]
        sock.settimeout(5)
        sock.sendto(packet, (host, 0))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            data, _ = sock.recvfrom(1024)
            reply = data[20:] if kind == socket.SOCK_RAW else data
            if reply[:1] == b"\x00":
                return
        raise OSError(errno.ETIMEDOUT, "no echo reply")


def _inet_checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))
    if len(data) % 2:
        total += data[-1] << 8
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def journal_forge(message: str) -> None:
    """Log to journald's native socket claiming to be ssh.service (a trusted field)."""
    entry = f"MESSAGE={message}\n_SYSTEMD_UNIT=ssh.service\n_UID=0\nSYSLOG_IDENTIFIER=sshd\n".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(entry, "/run/systemd/journal/socket")


def proc_search(kind: str, needle: str) -> None:
    """Look for `needle` in every visible process's environ or cmdline (ours included)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/{kind}", "rb") as handle:
                    if needle.encode() in handle.read():
                        found.append(f"/proc/{entry}/{kind}")
            except OSError:
                continue
    if not found:
        raise OSError(errno.ENOENT, f"not in any readable /proc/*/{kind}")
    print("found in " + " ".join(found[:3]))


def open_files(limit: str) -> None:
    """Open more files than the sandbox's limit allows."""
    wanted = int(limit) + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted + 16, max(hard, wanted + 16)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    opened = []
    try:
        while len(opened) < wanted:
            opened.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        raise OSError(exc.errno, f"stopped at {len(opened)} open files: {exc.strerror}") from None
    finally:
        for fd in opened:
            os.close(fd)


def fork_bomb(limit: str) -> None:
    """A real fork bomb in its own process group for 4 s; succeeds if it outgrew the task limit."""
    wanted = int(limit) + 32
    leader = os.fork()
    if leader == 0:
        os.setpgid(0, 0)
        os.execvp("bash", ["bash", "-c", ":(){ :|:& };:"])
    peak = 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        peak = max(peak, _group_size(leader))
        time.sleep(0.2)
    while _group_size(leader):
        try:
            os.killpg(leader, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.1)
        _reap()
    _reap()
    if peak < wanted:
        raise OSError(errno.EAGAIN, f"the bomb peaked at {peak} processes (limit {limit})")


def spawn(limit: str) -> None:
    """The control for fork_bomb: outside the sandbox, more processes than its limit start fine
    (a bounded number: a real bomb as root would take the guest down)."""
    wanted = int(limit) + 32
    children = []
    try:
        for _ in range(wanted):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    print(f"started {len(children)} processes")


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


def memory(limit: str) -> None:
    """Allocate (and touch) more memory than the sandbox's limit."""
    wanted = int(limit) + (128 << 20)
    chunks = []
    while sum(map(len, chunks)) < wanted:
        chunks.append(b"x" * (16 << 20))


def unshare_user() -> None:
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        raise OSError(ctypes.get_errno(), f"unshare(CLONE_NEWUSER): {os.strerror(ctypes.get_errno())}")


PROBES = {
    "ptrace": ptrace,
    "keyctl": keyctl,
    "bpf": bpf,
    "perf_event": perf_event,
    "capabilities": capabilities,
    "tiocsti": tiocsti,
    "unix": connect_unix,
    "tcp": tcp,
    "tcp_any": tcp_any,
    "udp": udp,
    "icmp": icmp,
    "journal_forge": journal_forge,
    "open_files": open_files,
    "proc_search": proc_search,
    "fork_bomb": fork_bomb,
    "spawn": spawn,
    "memory": memory,
    "unshare_user": unshare_user,
}


def main(argv: list[str]) -> int:
    try:
        PROBES[argv[0]](*argv[1:])  # type: ignore[operator]
    except (OSError, KeyError, ValueError, MemoryError) as exc:
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
