"""Render the systemd-mode sandbox: a transient service with a fresh DynamicUser per run.

The property set follows shared/reference/hardening.md §10.2 (DynamicUser variant), which ran
the real Claude Code at exposure 0.7. Choices that keep a developer's toolchain working are
deliberate and commented; everything else is as tight as systemd allows.
"""

from __future__ import annotations

import math

from vmsbx.config.models import SandboxSettings
from vmsbx.sandbox.layout import GUEST_LIB, RunLayout

HOLDER = f"{GUEST_LIB}/holder.py"
# Denied in both sandbox kinds' units, by name: io_uring (the largest recent source of kernel
# privilege escalations, off in Docker's default profile too) and the kernel keyrings (not
# namespaced). @system-service allows all six, and systemd has no group for io_uring alone
# (@aio is also the classic AIO that databases use). systemd skips a name its libseccomp does
# not know, so the session holder tries each one before it starts the command and refuses to
# run if any got through (provision/guest/session_holder.py, DENIED_SYSCALLS there).
DENIED_SYSCALLS = (
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
)
GUEST = f"{GUEST_LIB}/guest.py"
PYTHON = "/usr/bin/python3"
# The guest programs use the standard library only: -S skips site's scan of site-packages and
# .pth files, ~0.1 s of every guest Python start under TCG.
NO_SITE = "-S"


def _seconds(value: float) -> str:
    return f"{max(1, math.ceil(value))}s"


def render_unit_properties(
    policy: SandboxSettings, layout: RunLayout, workdir: str | None = None
) -> list[str]:
    """The unit's properties as `Key=Value` strings, in a stable order (golden-tested).

    `workdir`: where the run sees its workspace (vmsbx.sandbox.workdir: the host's project
    path, or /workspace/NAME), bound there in the unit's own mount namespace; None leaves it at
    systemd's StateDirectory= link (the verify suite's probes)."""
    return [
        f"Description=vmsbx run {layout.run_id}",
        # Identity: a fresh user per run; implies ProtectSystem=strict, ProtectHome=read-only,
        # PrivateTmp, RemoveIPC, NoNewPrivileges and RestrictSUIDSGID.
        "DynamicUser=yes",
        # The workspace: a size-capped image the launcher mounted where systemd keeps this
        # StateDirectory; systemd chowns it to the run's user at start (see docs/workspace).
        f"StateDirectory={layout.state_name}",
        f"WorkingDirectory={workdir or layout.workspace}",
        # /tmp and /var/tmp: the run's own size-capped tmpfs (BindPaths wins over PrivateTmp).
        # The workspace at its stable path: a second view of the StateDirectory= folder, after
        # systemd's chown; PID 1 makes the mount point (the path is plain, see workdir.py).
        f"BindPaths={layout.tmp_dir}:/tmp {layout.tmp_dir}:/var/tmp"
        + (f" {layout.workspace_mount}:{workdir}" if workdir else ""),
        "PrivateUsers=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "PrivateNetwork=yes",
        "PrivateIPC=yes",
        "PrivateMounts=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        # ProcSubset=pid would break ps, free and os.cpus(): keep /proc's system files.
        "ProcSubset=all",
        "RestrictNamespaces=yes",
        # Loopback inside the run's own network namespace still works for local dev servers.
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        # MemoryDenyWriteExecute=yes kills Node (V8's JIT): a compatibility trap, not a wall.
        "MemoryDenyWriteExecute=no",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        *render_shared_confinement_properties(),
        "RemoveIPC=yes",
        "NotifyAccess=none",
        *render_run_lifetime_properties(policy, layout),
    ]


def render_shared_confinement_properties() -> list[str]:
    """Confinement both sandbox kinds' units share, in this order (golden-tested)."""
    return [
        # After the mode's own SystemCallFilter= lines: it narrows an allow list and extends a deny list.
        "SystemCallFilter=~" + " ".join(DENIED_SYSCALLS),
        "SystemCallErrorNumber=EPERM",
        "SystemCallArchitectures=native",
        "UMask=0022",
        # The system D-Bus would let the run ask PID 1 for things its own limits forbid.
        "InaccessiblePaths=-/run/dbus/system_bus_socket -/var/run/dbus/system_bus_socket",
        # cgroup BPF reaches every process of the unit, whatever network namespace it is in.
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
        "DevicePolicy=closed",
        "KeyringMode=private",
    ]


def io_devices(layout: RunLayout) -> tuple[str, ...]:
    """Paths whose block devices carry a run's disk I/O: its workspace image (a loop device:
    writes there are not charged to the disk behind it) and the guest's root disk. PID 1 turns
    each into its whole disk when the unit starts, so they must exist before it does (the
    launcher has mounted the workspace). /tmp is a tmpfs: RAM, under MemoryMax=."""
    return (layout.workspace_mount, "/")


def render_io_properties(policy: SandboxSettings, layout: RunLayout) -> list[str]:
    """The disk I/O caps, one per limit and device (none for a limit set to "max")."""
    limits = (
        ("IOReadBandwidthMax", policy.io_read_bps),
        ("IOWriteBandwidthMax", policy.io_write_bps),
        ("IOReadIOPSMax", policy.io_read_iops),
        ("IOWriteIOPSMax", policy.io_write_iops),
    )
    # Plain numbers: systemd reads a K/M/G suffix here as powers of 1000, not 1024.
    return [
        f"{key}={path} {value}" for key, value in limits if value is not None for path in io_devices(layout)
    ]


def render_start_check(policy: SandboxSettings, layout: RunLayout) -> str:
    """The unit's one ExecStartPre=+ (root, outside the sandbox, after systemd has chowned the
    workspace to the run's user and before the run's first process), one shell for both jobs:
    each ExecStartPre= is a process start that PID 1 waits for, ~0.3-1 s under TCG.

    - With disk I/O caps, a check that the kernel holds one io.max line per device: systemd
      skips a device it cannot resolve with a warning, vmsbx then refuses to run.
    - The stamp: files whose ctime is older than it were only touched by root since the
      launcher checked the hash cache (the next sync trusts the cache for them instead of
      hashing the whole project again). It holds the invocation ID, which the launcher would
      otherwise ask systemctl for ($$: for sh). Written last, so a refused run has none."""
    steps = []
    if render_io_properties(policy, layout):
        io_max = f"/sys/fs/cgroup/system.slice/{layout.unit}/io.max"
        wanted = len(io_devices(layout))
        steps.append(
            f"n=0; while read -r line; do n=$$((n+1)); done < {io_max}; [ $$n -ge {wanted} ] || "
            f"{{ echo 'vmsbx: the disk I/O caps did not apply to every device' >&2; exit 1; }}"
        )
    steps.append(f"echo $$INVOCATION_ID > {layout.started_stamp}")
    return f'ExecStartPre=+/bin/sh -c "{"; ".join(steps)}"'


def render_run_lifetime_properties(policy: SandboxSettings, layout: RunLayout) -> list[str]:
    """Limits, logging and the end-of-run record: the same for both sandbox kinds' units."""
    cpu_percent = max(1, round(policy.cpus * 100))
    return [
        # No MemoryHigh=: with MemorySwapMax=0 it only throttles (the kernel sleeps up to 2 s per
        # 256 KiB charged above it), so a run that outgrows its memory crawled for minutes in an
        # emulated guest, holder included, instead of being OOM-killed at MemoryMax= (exit 137).
        f"MemoryMax={policy.memory_max}",
        "MemorySwapMax=0",
        f"CPUQuota={cpu_percent}%",
        f"TasksMax={policy.tasks_max}",
        *render_io_properties(policy, layout),
        f"RuntimeMaxSec={_seconds(policy.timeout)}",
        f"LimitNOFILE={policy.open_files}",
        "LimitCORE=0",
        "KillMode=control-group",
        # Once the main process is gone RuntimeMaxSec= no longer applies; a fork bomb that
        # outlives SIGTERM is SIGKILLed after this, not after systemd's default 90 s. It also
        # bounds ExecStopPost= (the run's record): 10 s was too short for a busy emulated guest
        # (the record step timed out at load 8), so 30 s.
        "TimeoutStopSec=30s",
        "OOMPolicy=stop",
        "SyslogIdentifier=vmsbx-run",
        f"LogExtraFields=VMSBX_RUN={layout.run_id}",
        # A run that prints 100,000 lines must lose none of them. (0/0 would not do: systemd
        # then tells journald nothing and journald's default of 10,000 per 30 s applies.)
        "LogRateLimitIntervalSec=1s",
        "LogRateLimitBurst=1000000",
        render_start_check(policy, layout),
        # Runs as root outside the sandbox after the run: records systemd's verdict and the
        # cgroup's peaks before the unit is collected.
        f"ExecStopPost=+{PYTHON} {NO_SITE} {GUEST} record {layout.run_id}",
    ]


def render_systemd_run_head(layout: RunLayout) -> list[str]:
    """systemd-run and its options, before the properties: both sandbox kinds' units."""
    return [
        "systemd-run",
        f"--unit={layout.unit}",
        "--service-type=exec",
        "--collect",
        "--quiet",
    ]


def render_systemd_run_argv(
    policy: SandboxSettings, layout: RunLayout, workdir: str | None = None
) -> list[str]:
    """argv that starts the run's unit (returns once the holder has been exec'd)."""
    argv = render_systemd_run_head(layout)
    for prop in render_unit_properties(policy, layout, workdir):
        argv += ["-p", prop]
    return [*argv, "--", PYTHON, NO_SITE, HOLDER, layout.run_id]


def render_unit_file(policy: SandboxSettings, layout: RunLayout) -> str:
    """The same unit as a file, for `systemd-analyze security --offline=true`."""
    lines = ["[Unit]"]
    props = render_unit_properties(policy, layout)
    lines.append(props[0])
    lines += ["", "[Service]", "Type=exec", f"ExecStart={PYTHON} {NO_SITE} {HOLDER} {layout.run_id}"]
    lines += props[1:]
    return "\n".join(lines) + "\n"


# First systemd release that knows each property vmsbx sets (NEWS; shared/reference/hardening.md
# §2). A guest older than any of these is refused by name instead of run with less isolation.
PROPERTY_SINCE: dict[str, int] = {
    "DynamicUser": 232,
    "StateDirectory": 235,
    "BindPaths": 233,
    "PrivateUsers": 232,
    "ProtectSystem": 232,
    "PrivateMounts": 239,
    "PrivateIPC": 248,
    "ProtectKernelTunables": 232,
    "ProtectKernelModules": 232,
    "ProtectKernelLogs": 244,
    "ProtectControlGroups": 232,
    "ProtectClock": 245,
    "ProtectHostname": 242,
    "ProtectProc": 247,
    "ProcSubset": 247,
    "RestrictNamespaces": 233,
    "RestrictSUIDSGID": 242,
    "LockPersonality": 235,
    "SystemCallFilter": 239,  # the @system-service set
    "IPAddressDeny": 235,
    "IPAddressAllow": 235,
    "KeyringMode": 235,
    "RemoveIPC": 232,
    "MemorySwapMax": 232,
    "OOMPolicy": 243,
    "LogExtraFields": 236,
    "LogRateLimitIntervalSec": 240,
    "LogRateLimitBurst": 240,
}


def unsupported_properties(properties: list[str], systemd_major: int) -> list[str]:
    """The properties (with the release that added them) this guest's systemd lacks."""
    missing = []
    for prop in properties:
        key = prop.partition("=")[0]
        since = PROPERTY_SINCE.get(key)
        if since is not None and systemd_major < since and f"{key} (systemd {since})" not in missing:
            missing.append(f"{key} (systemd {since})")
    return missing
