"""The user's API credential: a masked value that only the relay ever unwraps.

It is resolved in the CLI process (from the environment or `agent.credential_command`), handed to
the host agent over its 0700 Unix socket, and added to upstream requests by the relay. Its
repr/str never show the secret, so it cannot leak through a log line, an event or a traceback.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Any, Literal

from vmsbx.config.models import AgentSettings
from vmsbx.errors import ConfigError

CredentialKind = Literal["api_key", "oauth_token"]

# The beta flag Claude Code itself sends when it authenticates with an OAuth token (measured on
# 2.1.332); the API refuses OAuth requests without it. The sandboxed client may have been told it
# holds an API key, so the relay adds the flag when the real credential is an OAuth token.
OAUTH_BETA = "oauth-2025-04-20"
_COMMAND_TIMEOUT = 60.0
_MAX_SECRET = 8192


class Credential:
    """An API key (sent as `x-api-key`) or an OAuth token (sent as `Authorization: Bearer`)."""

    __slots__ = ("_secret", "kind", "source")

    def __init__(self, kind: CredentialKind, secret: str, *, source: str) -> None:
        secret = secret.strip()
        if not secret:
            raise ConfigError(f"the API credential from {source} is empty", hint=_HINT)
        # A secret with whitespace or control characters inside would be a broken header value,
        # or an attempt to inject one.
        if len(secret) > _MAX_SECRET or not secret.isprintable() or any(c.isspace() for c in secret):
            raise ConfigError(
                f"the API credential from {source} is not a single printable token",
                hint="check what the variable or command produces (one line, no spaces)",
            )
        self._secret = secret
        self.kind: CredentialKind = kind
        self.source = source

    def reveal(self) -> str:
        """The secret itself: for building the upstream request or the agent hand-over only."""
        return self._secret

    def auth_headers(self) -> list[tuple[str, str]]:
        """The headers that authenticate an upstream request with this credential."""
        if self.kind == "api_key":
            return [("x-api-key", self._secret)]
        return [("authorization", f"Bearer {self._secret}")]

    def __repr__(self) -> str:
        return f"Credential({self.kind} from {self.source}, ****)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a Credential is not picklable; send reveal() over a private channel")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credential) and self.kind == other.kind and self._secret == other._secret

    def __hash__(self) -> int:
        return hash((self.kind, self._secret))


_HINT = (
    "set ANTHROPIC_API_KEY (an API key) or CLAUDE_CODE_OAUTH_TOKEN (from `claude setup-token`), "
    "or agent.credential_command in your user config"
)


def resolve_credential(settings: AgentSettings, environ: Mapping[str, str]) -> Credential:
    """Find the user's credential: ANTHROPIC_API_KEY, then CLAUDE_CODE_OAUTH_TOKEN, then the
    configured command (argv, no shell; its stdout stripped is the key, a `sk-ant-oat` prefix
    marks an OAuth token). Errors name the source and never echo the command's output."""
    api_key = environ.get("ANTHROPIC_API_KEY", "").strip()
    if api_key:
        return Credential("api_key", api_key, source="ANTHROPIC_API_KEY")
    oauth = environ.get("CLAUDE_CODE_OAUTH_TOKEN", "").strip()
    if oauth:
        return Credential("oauth_token", oauth, source="CLAUDE_CODE_OAUTH_TOKEN")
    if settings.credential_command:
        secret = _run_credential_command(settings.credential_command)
        kind: CredentialKind = "oauth_token" if secret.startswith("sk-ant-oat") else "api_key"
        return Credential(kind, secret, source="agent.credential_command")
    raise ConfigError("no API credential found", hint=_HINT)


def _run_credential_command(argv: tuple[str, ...]) -> str:
    name = argv[0]
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise ConfigError(
            f"agent.credential_command: {name!r} was not found",
            hint="install it or fix the command in your user config",
        ) from None
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"agent.credential_command: {name!r} did not finish within {_COMMAND_TIMEOUT:.0f} s",
            hint="check that it does not wait for input (it gets no terminal)",
        ) from None
    except OSError as error:
        raise ConfigError(
            f"agent.credential_command: {name!r} could not start ({error.strerror})",
            hint="fix the command in your user config",
        ) from None
    # Neither stdout nor stderr is quoted in errors: either may hold the secret.
    if done.returncode != 0:
        raise ConfigError(
            f"agent.credential_command: {name!r} failed with exit code {done.returncode}",
            hint=f"run the command yourself to see why (vmsbx does not show its output); {_HINT}",
        )
    try:
        return done.stdout.decode().strip()
    except UnicodeDecodeError:
        raise ConfigError(
            f"agent.credential_command: {name!r} printed something that is not text",
            hint="the command must print the key and nothing else",
        ) from None
