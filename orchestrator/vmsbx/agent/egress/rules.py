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
import re
from dataclasses import dataclass
from typing import Literal

import idna

from vmsbx.config.models import NetworkMode

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# An entry without a port allows the web ports only: `github.com` is not also github.com:22.
WEB_PORTS: frozenset[int] = frozenset({80, 443})

# One word in allow_hosts adds the whole set. Sources: the hosts each client really talks to
# (npm: registry + tarballs; pip: index + files; git over HTTPS and SSH, release downloads).
NAMED_SETS: dict[str, tuple[str, ...]] = {
    "npm": ("registry.npmjs.org", "registry.yarnpkg.com"),
    "pypi": ("pypi.org", "files.pythonhosted.org"),
    "github": (
        "github.com",
        "github.com:22",
        "*.github.com",
        "*.githubusercontent.com",
        "ghcr.io",
    ),
}

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

_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_MAX_ENTRY_CHARS = 300

EntryKind = Literal["name", "wildcard", "address"]


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One allowed destination, normalised."""

    kind: EntryKind
    host: str
    """ASCII lowercase name; for a wildcard the part after "*."; for an address its compressed form."""
    port: int | None
    """The one port allowed, or None for the web ports (80 and 443)."""
    named_set: str | None = None
    """The named set this entry came from ("github"), if any."""

    @property
    def text(self) -> str:
        """The entry as a user writes it: "*.example.com:443", "[2001:db8::1]:22"."""
        host = f"*.{self.host}" if self.kind == "wildcard" else self.host
        if self.port is None:
            return host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def label(self) -> str:
        """How the decision log names this rule: "github.com", "github: *.github.com"."""
        return f"{self.named_set}: {self.text}" if self.named_set else self.text

    def allows_port(self, port: int) -> bool:
        return port in WEB_PORTS if self.port is None else port == self.port

    def matches_name(self, name: str, port: int) -> bool:
        """Whether normalised `name` on `port` is this entry (wildcards: strict subdomains only)."""
        if not self.allows_port(port):
            return False
        if self.kind == "name":
            return name == self.host
        if self.kind == "wildcard":
            return name.endswith("." + self.host)
        return False

    def matches_address(self, address: IPAddress, port: int) -> bool:
        return self.kind == "address" and self.allows_port(port) and self.host == str(address)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision of the rules: allowed or not, the rule that decided, the reason in words."""

    allowed: bool
    rule: str | None
    """The matching entry's label for an allowed destination, or the deny reason's short code."""
    reason: str
    """A sentence for the agent and the user; for a denial it says what would allow it."""


def normalise_host(name: str) -> str:
    """`name` as ASCII lowercase without a trailing dot, IDNA (UTS 46, non-transitional) applied.

    Raises ValueError for anything that is not a plain DNS name: empty labels, underscores,
    spaces, over-long names, and numeric spellings of addresses ("127.1", "0x7f.1",
    "2130706433"), which resolvers would turn into IP addresses behind the rules' back.
    """
    text = name.strip()
    if not text or len(text) > 254:
        raise ValueError("a host name must be 1 to 253 characters")
    if text.endswith("."):
        text = text[:-1]
    try:
        ascii_name = idna.encode(text, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError) as error:
        raise ValueError(f"not a valid host name ({error})") from None
    last_label = ascii_name.rsplit(".", 1)[-1]
    if _NUMERIC_LABEL.fullmatch(last_label):
        raise ValueError("a numeric name is an IP address in disguise; write the address itself")
    return ascii_name


def parse_ip(text: str) -> IPAddress | None:
    """The address `text` spells in standard form ("1.2.3.4", "2001:db8::1", "[::1]"), else None.

    IPv4-mapped IPv6 addresses come back as the IPv4 address they map, so that one address has
    one spelling for every check and every rule.
    """
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "%" in inner:  # a zone id: only meaningful for link-local addresses, which are refused
        return None
    try:
        address = ipaddress.ip_address(inner)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def split_host_port(text: str, default_port: int | None) -> tuple[str, int | None]:
    """Split "host:port", "[v6]:port", a bare host or a bare IPv6 address; check the port."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("an IPv6 address in brackets needs its closing ']'")
        host, rest = text[: close + 1], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("only ':PORT' may follow ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None  # a bare name, or an IPv6 address without a port
    if port_text is None:
        return host, default_port
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def parse_entry(text: str) -> tuple[AllowEntry, ...]:
    """Parse one allow_hosts entry: a named set, `host`, `*.domain`, either with `:port`, or an IP.

    Raises ValueError with a message fit for the user (the config loader shows it).
    """
    raw = text.strip()
    if not raw or len(raw) > _MAX_ENTRY_CHARS:
        raise ValueError("an entry must be 1 to 253 characters")
    if raw.lower() in NAMED_SETS:
        name = raw.lower()
        return tuple(
            AllowEntry(entry.kind, entry.host, entry.port, name)
            for item in NAMED_SETS[name]
            for entry in parse_entry(item)
        )
    host, port = split_host_port(raw, None)
    address = parse_ip(host)
    if address is not None:
        return (AllowEntry("address", str(address), port),)
    if host.startswith("*."):
        suffix = normalise_host(host[2:])
        if "." not in suffix:
            raise ValueError(f"'*.{suffix}' is too broad: a wildcard needs at least two labels after '*.'")
        return (AllowEntry("wildcard", suffix, port),)
    if "*" in host:
        raise ValueError("a wildcard may only be a leading '*.' (e.g. '*.example.com')")
    name = normalise_host(host)
    if "." not in name:
        sets = ", ".join(NAMED_SETS)
        raise ValueError(
            f"'{name}' is neither a fully qualified host name (like 'github.com') nor a named set ({sets})"
        )
    return (AllowEntry("name", name, port),)


def normalise_entry(text: str) -> str:
    """The canonical spelling of one allow_hosts entry (for settings: "GitHub.COM." -> "github.com")."""
    entries = parse_entry(text)
    if entries[0].named_set is not None:
        return entries[0].named_set
    return entries[0].text


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
