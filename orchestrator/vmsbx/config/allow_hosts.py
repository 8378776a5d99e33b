"""The allow_hosts grammar: how one entry of `sandbox.allow_hosts` is written and normalised.

Settings validate against it, so it lives in config (config imports nothing that does); the
egress rules of the host agent match destinations against the entries parsed here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

import idna

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
