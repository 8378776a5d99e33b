"""Egress rules: which destinations a run's proxy lets through, decided purely from settings.

Two gates, both must pass. Before resolving, the destination the program asked for is matched
against the policy: an exact name, a `*.domain` wildcard (subdomains only), or an IP address
listed as such. After resolving (done by the proxy, never by the sandbox), every address is
checked: loopback, private, link-local, CGNAT, metadata, multicast, documentation, unspecified
and every IPv6 form that embeds an IPv4 address is refused unless that very address is listed.
The proxy then connects to exactly the address checked here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vmsbx.config.allow_hosts import WEB_PORTS, AllowEntry, IPAddress, parse_entry
from vmsbx.config.models import NetworkMode

# Refused after resolution unless listed by IP. is_global is a second gate below; this table
# keeps the answer the same across Python versions, whose is_private lists have changed.
_FORBIDDEN_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "an unspecified (this-network) address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address (cloud metadata lives here)"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved or broadcast address"),
    ("::/128", "the unspecified address"),
    ("::1/128", "the loopback address"),
    ("::/96", "an IPv4-compatible IPv6 address"),
    ("::ffff:0:0/96", "an IPv4-mapped IPv6 address"),
    ("64:ff9b::/96", "a NAT64 address (it embeds an IPv4 address)"),
    ("64:ff9b:1::/48", "a NAT64 address (it embeds an IPv4 address)"),
    ("100::/64", "a discard-only address"),
    ("2001::/23", "an IETF protocol address (Teredo and others embed IPv4)"),
    ("2001:db8::/32", "a documentation address"),
    ("2002::/16", "a 6to4 address (it embeds an IPv4 address)"),
    ("fc00::/7", "a unique-local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_FORBIDDEN = tuple((ipaddress.ip_network(net), why) for net, why in _FORBIDDEN_NETWORKS)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision of the rules: allowed or not, the rule that decided, the reason in words."""

    allowed: bool
    rule: str | None
    """The matching entry's label for an allowed destination, or the deny reason's short code."""
    reason: str
    """A sentence for the agent and the user; for a denial it says what would allow it."""


def forbidden_reason(address: IPAddress) -> str | None:
    """Why `address` may not be reached unless listed by IP, or None for a public address."""
    for network, why in _FORBIDDEN:
        if address.version == network.version and address in network:
            return why
    if not address.is_global:
        return "not a globally routable address"
    return None


@dataclass(frozen=True, slots=True)
class EgressRules:
    """The rules of one run's proxy: its policy and its allow list (already normalised)."""

    policy: NetworkMode
    entries: tuple[AllowEntry, ...] = ()

    @classmethod
    def from_settings(cls, network: NetworkMode, allow_hosts: tuple[str, ...]) -> EgressRules:
        """Build from `sandbox.network` and `sandbox.allow_hosts` (validated settings).

        Under "api" and "none" the list is ignored: those policies reach no other destination.
        """
        if network not in ("none", "api", "allowlist", "open"):
            raise ValueError(f"unknown network policy {network!r}: none, api, allowlist or open")
        if network in ("api", "none"):
            return cls(network)
        entries = tuple(entry for text in allow_hosts for entry in parse_entry(text))
        return cls(network, entries)

    def check_name(self, name: str, port: int) -> Verdict:
        """Gate 1 for a host name (already normalised with `normalise_host`)."""
        if self.policy == "open":
            return Verdict(True, "open", f"policy open allows {name}:{port}")
        for entry in self.entries:
            if entry.matches_name(name, port):
                return Verdict(True, entry.label, f"{name}:{port} matches {entry.label}")
        return self._deny_destination(name, port)

    def check_literal(self, address: IPAddress, port: int) -> Verdict:
        """Gate 1 for a destination given as an IP address: only addresses listed as such pass
        (under "open", any address that gate 2 accepts)."""
        for entry in self.entries:
            if entry.matches_address(address, port):
                return Verdict(True, entry.label, f"{address} is listed in sandbox.allow_hosts")
        if self.policy == "open":
            return self.check_resolved(address, port)
        return self._deny_destination(str(address), port)

    def check_resolved(self, address: IPAddress, port: int) -> Verdict:
        """Gate 2, for each address a name resolved to (and every literal under "open")."""
        for entry in self.entries:
            if entry.matches_address(address, port):
                return Verdict(True, entry.label, f"{address} is listed in sandbox.allow_hosts")
        why = forbidden_reason(address)
        if why is None:
            return Verdict(True, "public-address", f"{address} is a public address")
        shown = f"[{address}]" if address.version == 6 else str(address)
        return Verdict(
            False,
            "address-forbidden",
            f"{shown} is {why}; the proxy reaches such an address only if sandbox.allow_hosts lists "
            f'it by IP (e.g. "{shown}:{port}")',
        )

    def _deny_destination(self, host: str, port: int) -> Verdict:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.policy in ("api", "none"):
            return Verdict(
                False,
                "policy",
                f'{shown} is not allowed: network policy "{self.policy}" reaches only the model API. '
                f'To allow it, set sandbox.network = "allowlist" and add "{shown}" to '
                f"sandbox.allow_hosts in your user config (or pass the matching flags)",
            )
        hint = (
            f'{host} is listed for ports 80 and 443 only; add "{shown}"'
            if any(e.matches_name(host, 443) or e.matches_name(host, 80) for e in self.entries)
            and port not in WEB_PORTS
            else f'add "{shown if port not in WEB_PORTS else host}"'
        )
        return Verdict(
            False,
            "not-listed",
            f"{shown} is not in sandbox.allow_hosts; to allow it, {hint} to sandbox.allow_hosts "
            f"in your user config",
        )
