"""`vmsbx verify --self-test`: take one wall down at a time and check the suite notices.

A loosening edits the already-rendered launch request of one verify run, nothing else: it is
not a setting, no config file or flag of `vmsbx run` can reach it, and the runs it makes are
verify's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmsbx.contract import LaunchRequest


@dataclass(frozen=True)
class Loosening:
    """One wall removed, and the attempts that must then succeed (be reported as failures)."""

    name: str
    removes: str
    catches: tuple[str, ...]
    unit_properties: tuple[str, ...] = ()
    """Unit properties (`Key=` prefixes) dropped from the systemd-run argv."""
    jail_lines: tuple[tuple[str, str], ...] = ()
    """(old, new) whole-line substitutions in the nsjail config."""


LOOSENINGS: dict[str, tuple[Loosening, ...]] = {
    "systemd": (
        Loosening(
            "network",
            "the run's private network namespace and IP firewall",
            ("tcp_guest", "tcp_loopback", "udp_dns", "proxy_bypass"),
            unit_properties=("PrivateNetwork=", "IPAddressDeny=", "IPAddressAllow="),
        ),
        Loosening(
            "process_view",
            "ProtectProc=invisible (other users' processes are hidden)",
            ("secret_argv",),
            unit_properties=("ProtectProc=",),
        ),
        Loosening(
            "system_bus",
            "the inaccessible D-Bus socket",
            ("dbus_system",),
            unit_properties=("InaccessiblePaths=",),
        ),
        Loosening(
            "namespaces",
            "RestrictNamespaces=yes",
            ("user_namespace",),
            unit_properties=("RestrictNamespaces=",),
        ),
        Loosening(
            "capabilities",
            "the empty capability bounding set",
            ("capabilities",),
            unit_properties=("CapabilityBoundingSet=",),
        ),
    ),
    "nsjail": (
        Loosening(
            "network",
            "the jail's and its unit's network namespaces and IP firewall",
            ("tcp_guest", "tcp_loopback", "udp_dns", "proxy_bypass"),
            unit_properties=("PrivateNetwork=", "IPAddressDeny=", "IPAddressAllow="),
            jail_lines=(("clone_newnet: true", "clone_newnet: false"),),
        ),
    ),
}


def loosen_request(request: LaunchRequest, loosening: Loosening) -> LaunchRequest:
    """`request` with `loosening` applied (a new, contract-checked request). Pure data editing."""
    argv = request.systemd_run
    kept: list[str] = []
    i = 0
    while i < len(argv):
        if (
            argv[i] == "-p"
            and i + 1 < len(argv)
            and argv[i + 1].startswith(loosening.unit_properties or ("\0",))
        ):
            i += 2
            continue
        kept.append(argv[i])
        i += 1
    jail = request.jail
    if loosening.jail_lines and jail is not None:
        swaps = dict(loosening.jail_lines)
        config = "\n".join(swaps.get(line, line) for line in jail.config.splitlines()) + "\n"
        jail = jail.replace(config=config)
    loosened: LaunchRequest = request.replace(systemd_run=kept, jail=jail)
    return loosened
