"""The egress rules (pure): entry parsing, name matching, and the address gate after resolution."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from vmsbx.agent.egress.rules import EgressRules
from vmsbx.config import SandboxSettings
from vmsbx.config.allow_hosts import normalise_entry, normalise_host, parse_entry, parse_ip


def _rules(*hosts: str, policy: str = "allowlist") -> EgressRules:
    return EgressRules.from_settings(policy, hosts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("GitHub.COM", "github.com"),
        ("github.com.", "github.com"),
        ("Bücher.de", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("faß.de", "xn--fa-hia.de"),  # non-transitional: not the different domain fass.de
        ("*.GitHubUserContent.com:443", "*.githubusercontent.com:443"),
        ("docs.example.org:8080", "docs.example.org:8080"),
        ("10.1.2.3", "10.1.2.3"),
        ("127.0.0.1:8443", "127.0.0.1:8443"),
        ("[2001:DB8::1]:22", "[2001:db8::1]:22"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("NPM", "npm"),
        ("pypi", "pypi"),
    ],
)
def test_entries_are_normalised(written: str, canonical: str) -> None:
    assert normalise_entry(written) == canonical


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("", "1 to 253"),
        ("not a host", "not a valid host name"),
        ("a_b.example.com", "not a valid host name"),
        ("*.com", "too broad"),
        ("evil*.example.com", "leading"),
        ("*", "leading"),
        ("example.com:0", "1 to 65535"),
        ("example.com:65536", "1 to 65535"),
        ("example.com:http", "1 to 65535"),
        ("localhost", "fully qualified"),
        ("pipy", "named set"),
        ("127.1", "IP address in disguise"),
        ("0x7f.0.0.1", "IP address in disguise"),
        ("2130706433", "IP address in disguise"),
        ("[::1", "closing"),
        ("a..b.com", "not a valid host name"),
    ],
)
def test_bad_entries_are_refused_with_a_reason(written: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_entry(written)


def test_settings_normalise_allow_hosts_and_name_a_bad_entry() -> None:
    settings = SandboxSettings(allow_hosts=("GitHub.com.", "*.Example.org:443", "pypi"))
    assert settings.allow_hosts == ("github.com", "*.example.org:443", "pypi")
    with pytest.raises(ValidationError, match="too broad"):
        SandboxSettings(allow_hosts=("*.org",))


def test_named_sets_expand_and_are_labelled() -> None:
    rules = _rules("github")
    verdict = rules.check_name("github.com", 22)
    assert verdict.allowed
    assert verdict.rule == "github: github.com:22"
    assert rules.check_name("objects.githubusercontent.com", 443).rule == "github: *.githubusercontent.com"
    assert not rules.check_name("github.com", 23).allowed
    assert not _rules("npm").check_name("github.com", 443).allowed
    assert _rules("pypi").check_name("files.pythonhosted.org", 443).allowed


def test_wildcard_matches_subdomains_only() -> None:
    rules = _rules("*.githubusercontent.com:443")
    assert rules.check_name("raw.githubusercontent.com", 443).allowed
    assert rules.check_name("a.b.githubusercontent.com", 443).allowed
    assert not rules.check_name("githubusercontent.com", 443).allowed
    assert not rules.check_name("evil-githubusercontent.com", 443).allowed
    assert not rules.check_name("githubusercontent.com.evil.com", 443).allowed
    assert not rules.check_name("raw.githubusercontent.com", 80).allowed


def test_a_name_without_port_means_the_web_ports_only() -> None:
    rules = _rules("github.com")
    assert rules.check_name("github.com", 443).allowed
    assert rules.check_name("github.com", 80).allowed
    denied = rules.check_name("github.com", 22)
    assert not denied.allowed
    assert 'add "github.com:22"' in denied.reason
    assert not rules.check_name("api.github.com", 443).allowed  # exact means exact


def test_denials_say_what_to_allow() -> None:
    denied = _rules("github.com").check_name("evil.example", 443)
    assert denied.rule == "not-listed"
    assert '"evil.example"' in denied.reason
    assert "sandbox.allow_hosts" in denied.reason
    api = _rules("github.com", policy="api").check_name("github.com", 443)
    assert not api.allowed
    assert api.rule == "policy"
    assert 'sandbox.network = "allowlist"' in api.reason


def test_request_names_normalise_like_entries() -> None:
    assert normalise_host("GitHub.com.") == "github.com"
    assert normalise_host("BÜCHER.de") == "xn--bcher-kva.de"
    rules = _rules("bücher.de")
    assert rules.check_name(normalise_host("xn--bcher-kva.de."), 443).allowed
    with pytest.raises(ValueError):
        normalise_host("2130706433")


def test_raw_addresses_pass_gate_one_only_when_listed_as_such() -> None:
    rules = _rules("github.com", "140.82.112.3", "[2001:db8::5]:22")
    assert not rules.check_literal(ipaddress.ip_address("140.82.112.4"), 443).allowed
    assert rules.check_literal(ipaddress.ip_address("140.82.112.3"), 443).allowed
    assert not rules.check_literal(ipaddress.ip_address("140.82.112.3"), 22).allowed
    assert rules.check_literal(ipaddress.ip_address("2001:db8::5"), 22).allowed
    # open: a public literal passes, a private one still does not
    open_rules = _rules(policy="open")
    assert open_rules.check_literal(ipaddress.ip_address("140.82.112.4"), 443).allowed
    assert not open_rules.check_literal(ipaddress.ip_address("10.0.0.1"), 443).allowed


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.251",
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "::",
        "fc00::1",
        "fd00:ec2::254",
        "fe80::1",
        "ff02::1",
        "::127.0.0.1",
        "64:ff9b::a00:1",
        "2002:7f00:1::1",
        "2001:0:4136:e378::1",
    ],
)
def test_forbidden_addresses_are_refused_after_resolution(address: str) -> None:
    verdict = _rules("example.com").check_resolved(ipaddress.ip_address(address), 443)
    assert not verdict.allowed
    assert verdict.rule == "address-forbidden"
    assert "by IP" in verdict.reason


def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    mapped = parse_ip("::ffff:127.0.0.1")
    assert mapped == ipaddress.ip_address("127.0.0.1")
    assert parse_ip("[::ffff:169.254.169.254]") == ipaddress.ip_address("169.254.169.254")
    assert not _rules().check_resolved(mapped, 80).allowed  # type: ignore[arg-type]
    assert parse_ip("fe80::1%eth0") is None
    assert parse_ip("127.1") is None


def test_an_address_listed_by_ip_is_allowed_after_resolution() -> None:
    rules = _rules("dev.test:8443", "127.0.0.1:8443")
    assert rules.check_resolved(ipaddress.ip_address("127.0.0.1"), 8443).allowed
    assert not rules.check_resolved(ipaddress.ip_address("127.0.0.1"), 8444).allowed
    assert not rules.check_resolved(ipaddress.ip_address("127.0.0.2"), 8443).allowed


def test_public_addresses_pass_gate_two() -> None:
    for address in ("140.82.112.3", "151.101.0.223", "2606:4700::6810:85e5"):
        assert _rules().check_resolved(ipaddress.ip_address(address), 443).allowed


def test_api_and_none_ignore_the_list() -> None:
    assert _rules("github.com", policy="api").entries == ()
    assert not _rules("github.com", policy="none").check_name("github.com", 443).allowed
