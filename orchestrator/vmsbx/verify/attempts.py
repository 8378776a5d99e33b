"""The attempts `vmsbx verify` makes, as data. The doing lives in provision/verify/attempts.py.

Adding an attempt: a function and an ATTEMPTS entry in attempts.py, and a row here. Each row
says what the attempt tries and what the sandbox must do about it; the verdict logic in
verdict.py is the same for all (with the few kinds below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["direct", "persistent", "journal", "memory", "health"]

CATEGORIES = (
    "host reach",
    "guest files",
    "persistence",
    "privilege",
    "services",
    "terminal",
    "network",
    "resources",
    "secrets",
)


@dataclass(frozen=True)
class Attempt:
    """One escape attempt. `kind` says where its observation comes from:

    direct      its own result line in the run (and in the control run)
    persistent  whether what it wrote is still in the guest after the run (root looks)
    journal     which trusted fields journald gave its forged entry (root looks)
    memory      the run's own end: the sandbox must kill it for memory (systemd's record)
    health      the guest and a fresh run work after the resource attempts
    """

    name: str
    category: str
    tries: str
    expected: str
    kind: Kind = "direct"


def _a(name: str, category: str, tries: str, expected: str, kind: Kind = "direct") -> Attempt:
    return Attempt(name, category, tries, expected, kind)


NO_NET = "no route: the run has no network but its own loopback"

ATTEMPTS: tuple[Attempt, ...] = (
    _a("host_mounts", "host reach", "find host folders shared into the guest (9p, virtiofs, sshfs, "
       "/mnt/c)", "none visible"),
    _a("host_gateway", "host reach", "TCP to the provider's host gateway addresses (10.0.2.2, 192.168.5.2, "
       "default route)", "unreachable"),
    _a("host_listener", "host reach", "TCP to a listener vmsbx opened on the host's loopback, via the "
       "gateway", "unreachable"),
    _a("shadow_read", "guest files", "read /etc/shadow", "permission denied"),
    _a("root_home", "guest files", "list /root", "permission denied"),
    _a("other_workspaces", "guest files", "see other runs' workspaces (/var/lib/private)",
       "only its own visible"),
    _a("vmsbx_state", "guest files", "list vmsbx's state in the guest (/var/lib/vmsbx/runs)",
       "permission denied"),
    _a("guest_ssh_keys", "guest files", "read the guest's SSH host key", "permission denied"),
    _a("etc_write", "persistence", "leave a file in /etc", "refused, nothing left", "persistent"),
    _a("usr_local_write", "persistence", "leave a file in /usr/local/bin", "refused, nothing left",
       "persistent"),
    _a("var_tmp_persist", "persistence", "leave a file in /var/tmp for later runs", "gone after the run",
       "persistent"),
    _a("home_dotfile", "persistence", "leave a dotfile in $HOME", "gone after the run", "persistent"),
    _a("cron_job", "persistence", "install a cron job (/etc/cron.d, crontabs)", "refused, nothing left",
       "persistent"),
    _a("systemd_user_unit", "persistence", "install a systemd user unit (~/.config/systemd/user)",
       "gone after the run", "persistent"),
    _a("git_hooks", "persistence", "install git hooks outside the workspace (templates, ~/.config/git)",
       "gone after the run", "persistent"),
    _a("su_root", "privilege", "su to root", "refused"),
    _a("setuid_bit", "privilege", "set the setuid bit on a file", "refused"),
    _a("capabilities", "privilege", "hold any capability (CapEff/CapBnd)", "none held"),
    _a("mount", "privilege", "mount a tmpfs", "refused"),
    _a("user_namespace", "privilege", "create a user namespace", "refused"),
    _a("ptrace", "privilege", "ptrace-attach to a process", "refused"),
    _a("kernel_module", "privilege", "load a kernel module", "refused"),
    _a("keyctl", "privilege", "add a key to the uid's persistent keyring", "refused"),
    _a("io_uring", "privilege", "set up and use an io_uring (io_uring_setup, _enter, _register)",
       "refused by the syscall filter"),
    _a("keyring", "privilege", "reach the kernel keyrings (add_key, keyctl, request_key)",
       "refused by the syscall filter"),
    _a("bpf", "privilege", "create a BPF map", "refused"),
    _a("perf_event", "privilege", "open a CPU-wide perf event", "refused"),
    _a("proc_sys_write", "privilege", "write a kernel setting in /proc/sys", "refused"),
    _a("raw_device", "privilege", "read the guest's raw disk", "no such device or denied"),
    _a("dbus_system", "services", "connect to the system D-Bus (systemd's API)", "refused"),
    _a("systemd_private", "services", "connect to systemd's private socket", "refused"),
    _a("guest_agent", "services", "connect to vmsbx's root guest agent (it runs launcher verbs)", "refused"),
    _a("journal_forge", "services", "log as ssh.service through journald's socket", "trusted fields kept",
       "journal"),
    _a("abstract_unix", "services", "connect to a root abstract Unix socket", "unreachable"),
    _a("tiocsti", "terminal", "inject input into the controlling terminal (TIOCSTI)", "refused"),
    _a("tcp_guest", "network", "TCP to a listener on the guest's address", NO_NET),
    _a("tcp_loopback", "network", "TCP to the guest's sshd on 127.0.0.1", NO_NET),
    _a("ipv6_loopback", "network", "TCP to the guest's sshd on ::1", NO_NET),
    _a("udp_dns", "network", "a DNS query over UDP to the guest's listener", NO_NET),
    _a("icmp", "network", "ICMP echo to the guest", NO_NET),
    _a("proxy_bypass", "network", "ignore proxy settings, connect straight to the guest's listener", NO_NET),
    _a("secret_env", "secrets", "find the planted credential in any process environment", "not found"),
    _a("secret_argv", "secrets", "find the planted credential in any process's arguments", "not found"),
    _a("secret_files", "secrets", "find the planted credential in readable files", "not found"),
    _a("secret_journal", "secrets", "find the planted credential in the journal", "not found"),
    _a("open_files", "resources", "open more files than the limit", "stopped at the limit"),
    _a("fill_workspace", "resources", "fill the workspace beyond its cap", "stopped at the cap"),
    _a("fill_tmp", "resources", "fill /tmp beyond its cap", "stopped at the cap"),
    _a("fork_bomb", "resources", "a fork bomb", "held at the task limit"),
    _a("memory_bomb", "resources", "allocate more memory than the limit", "the run is killed, out of memory",
       "memory"),
    _a("guest_healthy", "resources", "leave the VM or vmsbx broken after the resource attempts",
       "guest and a fresh run work", "health"),
)  # fmt: skip

BY_NAME = {attempt.name: attempt for attempt in ATTEMPTS}
