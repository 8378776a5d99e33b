"""Pure decisions of the API relay: which requests pass, which headers travel, what errors say.

Everything here is a function of its arguments (no sockets), so the relay's policy is unit-tested
on its own; `relay.py` only moves bytes according to it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from vmsbx.agent.credential import OAUTH_BETA, Credential
from vmsbx.errors import ConfigError

# What Claude Code 2.1.332 calls on ANTHROPIC_BASE_URL with non-essential traffic off (measured:
# only `POST /v1/messages?beta=true`; count_tokens is part of the same API and cheap to allow).
ALLOWED_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens")}
)
ALLOWED_QUERIES: frozenset[str] = frozenset({"", "beta=true"})
# Routes whose responses carry billable usage.
METERED_PATHS: frozenset[str] = frozenset({"/v1/messages"})

HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)
# Anything that could authenticate, identify or steer the request as someone: the sandbox's
# values are dropped whatever they are, and the relay adds the real credential itself.
AUTH_HEADERS: frozenset[str] = frozenset(
    {
        "x-api-key",
        "authorization",
        "proxy-authorization",
        "proxy-authenticate",
        "cookie",
        "cookie2",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "forwarded",
        "via",
    }
)
# Response headers the sandbox gets no use from (and cookies are state we do not hand inside).
DROPPED_RESPONSE_HEADERS: frozenset[str] = HOP_BY_HOP | frozenset({"set-cookie", "set-cookie2"})


@dataclass(frozen=True)
class Upstream:
    """Where the relay forwards to: scheme, host, port and a path prefix ("" or "/x")."""

    scheme: str
    host: str
    port: int
    prefix: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_upstream(url: str) -> Upstream:
    """Parse `agent.api_upstream`; plain http is refused unless the host is loopback (tests)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(
            f"agent.api_upstream {url!r} is not an http(s) URL",
            hint='set it to a URL such as "https://api.anthropic.com"',
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            f"agent.api_upstream {url!r} may not carry a query, fragment or user info",
            hint='set it to a base URL such as "https://api.anthropic.com"',
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"agent.api_upstream {url!r} is plain http: vmsbx sends your API key only over "
            "verified TLS (http is accepted for loopback test servers only)",
            hint="use the https:// URL of the API",
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Upstream(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def route_allowed(method: str, path: str, query: str) -> bool:
    """Whether a request may go upstream at all (after its token was accepted)."""
    return (method, path) in ALLOWED_ROUTES and query in ALLOWED_QUERIES


def presented_tokens(headers: Iterable[tuple[str, str]]) -> list[str]:
    """Every token the client presented, from `x-api-key` and `Authorization: Bearer` headers."""
    tokens = []
    for name, value in headers:
        key = name.strip().lower()
        if key == "x-api-key":
            tokens.append(value.strip())
        elif key == "authorization":
            scheme, _, rest = value.strip().partition(" ")
            tokens.append(rest.strip() if scheme.lower() == "bearer" else "")
    return tokens


def match_run(presented: list[str], live: Mapping[str, str]) -> str | None:
    """The run whose token the client presented, or None.

    `live` maps run id to token. Every presented token must name the same live run (a client
    that sends one good and one bad token is refused), and every comparison is constant-time.
    """
    if not presented:
        return None
    matched: set[str] = set()
    for token in presented:
        hit = None
        for run_id, expected in live.items():
            if hmac.compare_digest(token.encode(), expected.encode()):
                hit = run_id
        if hit is None:
            return None
        matched.add(hit)
    return matched.pop() if len(matched) == 1 else None


def upstream_headers(
    incoming: Iterable[tuple[str, str]], credential: Credential, upstream: Upstream, body_length: int
) -> list[tuple[str, str]]:
    """The headers sent upstream: the client's, minus hop-by-hop and every auth-ish header,
    plus the real credential. Compression is refused so that usage can be read off the stream."""
    incoming = list(incoming)
    listed_in_connection = {
        token.strip().lower()
        for name, value in incoming
        if name.strip().lower() == "connection"
        for token in value.split(",")
    }
    dropped = HOP_BY_HOP | AUTH_HEADERS | listed_in_connection | {"accept-encoding"}
    headers: list[tuple[str, str]] = []
    beta_flags: list[str] = []
    for name, value in incoming:
        key = name.strip().lower()
        if key in dropped:
            continue
        if key == "anthropic-beta":
            beta_flags.extend(flag.strip() for flag in value.split(",") if flag.strip())
            continue
        headers.append((key, value))
    if credential.kind == "oauth_token" and OAUTH_BETA not in beta_flags:
        beta_flags.append(OAUTH_BETA)
    if beta_flags:
        headers.append(("anthropic-beta", ",".join(beta_flags)))
    headers.append(("host", upstream.host_header))
    headers.append(("accept-encoding", "identity"))
    headers.append(("content-length", str(body_length)))
    headers.extend(credential.auth_headers())
    return headers


def response_headers(incoming: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream response's headers as passed back to the sandbox."""
    return [(name, value) for name, value in incoming if name.strip().lower() not in DROPPED_RESPONSE_HEADERS]


def error_body(kind: str, message: str) -> bytes:
    """An error in the API's own shape, so that Claude Code shows `message` to the user."""
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


# Status, error type and extra headers for each refusal. The budget answer is 402 billing_error
# with `x-should-retry: false`: measured with Claude Code 2.1.332, it then makes no retry, prints
# "API Error: 402 <message>" and exits 1 (a 400 is retried six times with varied requests; a 403 is
# shown as "Failed to authenticate"; a 429 without the header is retried with backoff).
NO_RETRY = ("x-should-retry", "false")
REFUSALS: dict[str, tuple[int, str, tuple[tuple[str, str], ...]]] = {
    "unauthenticated": (401, "authentication_error", ()),
    "route": (403, "permission_error", (NO_RETRY,)),
    "budget": (402, "billing_error", (NO_RETRY,)),
    "too_large": (413, "request_too_large", (NO_RETRY,)),
    "bad_request": (400, "invalid_request_error", (NO_RETRY,)),
    "upstream": (502, "api_error", ()),
    # Too many of the run's requests in flight: retryable, after a pause.
    "busy": (429, "rate_limit_error", (("retry-after", "5"),)),
}
