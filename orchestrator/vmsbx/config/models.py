"""The settings vmsbx runs with: one frozen, fully described record per section.

Every value a user can write is parsed here (sizes such as "4G", durations such as "1h30m"), so
the loader compares parsed values and never strings: "4096M" and "4G" are the same memory limit.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.fields import FieldInfo

from vmsbx.config.allow_hosts import normalise_entry

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_SIZE_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}
# Digits are capped so that a hostile value cannot make int() chew on a megabyte of digits.
_SIZE_RE = re.compile(r"(?P<number>\d{1,18}(?:\.\d{1,9})?)\s*(?:(?P<unit>[KMGT])(?:I?B)?|B)?", re.IGNORECASE)
_DURATION_UNITS = {"h": 3600, "m": 60, "s": 1}
_DURATION_PART = r"(?:(?P<{unit}>\d{{1,9}}(?:\.\d{{1,9}})?)\s*{unit}\s*)?"
_DURATION_RE = re.compile(
    "".join(_DURATION_PART.format(unit=unit) for unit in _DURATION_UNITS), re.IGNORECASE
)

# How sizes and durations may be written, for error messages and help text.
SIZE_FORMS = "512M, 4G or 4GiB (K/M/G/T are powers of 1024) or a number of bytes"
DURATION_FORMS = "90s, 30m, 2h or 1h30m, or a number of seconds"
# How many API requests of one run the relay lets go upstream at once (agent.max_concurrent_requests).
DEFAULT_MAX_CONCURRENT = 4


class ValueKind(enum.Enum):
    """Marks fields whose written form differs from their stored form, for display and errors."""

    SIZE = "size"
    DURATION = "duration"


def parse_size(value: str | int) -> int:
    """Return `value` in bytes: an int is bytes; a string is a number with an optional unit.

    Units K, M, G and T are powers of 1024, case-insensitive, optionally followed by "B" or "iB"
    ("4G", "4g", "4GB", "4GiB" are all 4 GiB); fractions round down to whole bytes. Zero, negative
    and unparsable values raise ValueError with a message fit for the user.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a {_type_word(value)} is not a size")
    if isinstance(value, int):
        size = value
    else:
        text = value.strip()
        if text.startswith("-"):
            raise ValueError("a size cannot be negative")
        match = _SIZE_RE.fullmatch(text)
        if match is None:
            raise ValueError("not a size")
        unit = (match["unit"] or "").upper()
        size = math.floor(Fraction(match["number"]) * _SIZE_UNITS[unit])
    if size < 0:
        raise ValueError("a size cannot be negative")
    if size == 0:
        raise ValueError("a size must be greater than zero")
    return size


def format_size(size: int) -> str:
    """Write `size` bytes in the largest unit that divides it exactly ("4G", "1536M", "100")."""
    for unit in ("T", "G", "M", "K"):
        if size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)


def parse_duration(value: str | float) -> float:
    """Return `value` in seconds: a number is seconds; a string is "90s", "30m", "2h", "1h30m".

    Hours, minutes and seconds come in that order, each at most once, each may have a fraction;
    a bare number in a string ("90") is seconds too. Zero, negative, infinite and unparsable
    values raise ValueError with a message fit for the user.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"a {_type_word(value)} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if text.startswith("-"):
            raise ValueError("a duration cannot be negative")
        seconds = _parse_duration_text(text)
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number of seconds")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds == 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


def _parse_duration_text(text: str) -> float:
    if re.fullmatch(r"\d{1,12}(?:\.\d{1,9})?", text):
        return float(text)
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None or not any(match.groupdict().values()):
        raise ValueError("not a duration")
    return float(
        sum(
            Fraction(match[unit]) * factor
            for unit, factor in _DURATION_UNITS.items()
            if match[unit] is not None
        )
    )


def format_duration(seconds: float) -> str:
    """Write `seconds` as "2h", "1h30m", "90.5s": whole seconds split into h/m/s, else seconds."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, factor in _DURATION_UNITS.items():
        count, rest = divmod(rest, factor)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _type_word(value: object) -> str:
    return {bool: "true/false value", list: "list", dict: "table"}.get(type(value), type(value).__name__)


def _refuse_bool(value: object) -> object:
    # pydantic's lax mode reads `true` as 1; in a settings file that is always a mistake.
    if isinstance(value, bool):
        raise ValueError("true/false is not a number")
    return value


def _absolute_host_path(path: str) -> str:
    # Relative paths would resolve against whatever folder vmsbx happens to be started from.
    if not (path.startswith(("/", "~")) or re.match(r"[A-Za-z]:[\\/]", path)):
        raise ValueError("must be an absolute path or start with ~")
    return path


def _unlimited_or(parse: Callable[[Any], object]) -> Callable[[object], object]:
    """A limit that may also be "max" (cgroup io.max's word for none), stored as None."""

    def validate(value: object) -> object:
        if value is None or (isinstance(value, str) and value.strip().lower() == "max"):
            return None
        return parse(value)

    return validate


Size = Annotated[int, BeforeValidator(parse_size), ValueKind.SIZE]
Duration = Annotated[float, BeforeValidator(parse_duration), ValueKind.DURATION]
Count = Annotated[int, BeforeValidator(_refuse_bool)]
Number = Annotated[float, BeforeValidator(_refuse_bool)]
# Disk I/O caps: bytes or operations per second, or "max" (None: no cap).
Bandwidth = Annotated[int | None, BeforeValidator(_unlimited_or(parse_size)), ValueKind.SIZE]
Rate = Annotated[int | None, BeforeValidator(_unlimited_or(_refuse_bool))]
_BANDWIDTH_FORMS = (
    'bytes per second of at least 64K, such as "100M" (K/M/G are powers of 1024), or "max" (no cap)'
)
_RATE_FORMS = 'operations per second, a whole number of at least 16, or "max" (no cap)'


HostName = Annotated[str, AfterValidator(normalise_entry)]
HostPath = Annotated[str, Field(min_length=1), AfterValidator(_absolute_host_path)]

ProviderName = Literal["auto", "qemu", "lima", "multipass", "wsl2", "ssh"]
NetworkMode = Literal["none", "api", "allowlist", "open"]
# Narrowest first: the project file may only move a value towards the start of this tuple.
NETWORK_ORDER: tuple[NetworkMode, ...] = ("none", "api", "allowlist", "open")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VMSettings(_Section):
    """The VM: the outer wall. Changing it takes effect when the VM is next created or started."""

    name: str = Field(
        default="default",
        pattern=r"^[a-z0-9][a-z0-9-]{0,39}$",
        description="Name of the VM; it becomes a directory name under the vmsbx state folder.",
        json_schema_extra={
            "allowed": "lowercase letters, digits and '-', starting with a letter or digit, "
            'at most 40 characters (e.g. "default", "work-2")'
        },
    )
    provider: ProviderName = Field(
        default="auto",
        description="Which host tool runs the VM; auto picks the platform's default.",
    )
    cpus: Count = Field(default=2, ge=1, le=64, description="Virtual CPUs given to the VM.")
    memory: Size = Field(default=4 * GiB, ge=256 * MiB, description="Memory given to the VM, in bytes.")
    disk: Size = Field(default=20 * GiB, ge=2 * GiB, description="Size of the VM's root disk, in bytes.")
    image: Literal["bookworm", "trixie"] = Field(
        default="bookworm", description="Debian release the guest image is built from."
    )
    accel: Literal["auto", "kvm", "tcg"] = Field(
        default="auto",
        description="CPU acceleration: kvm (hardware), tcg (emulation) or auto (kvm if usable).",
    )
    guest_network: Literal["restricted", "nat"] = Field(
        default="restricted",
        description="restricted: the guest reaches only vmsbx's relay; nat: the guest gets a "
        "routed network of its own.",
    )
    boot_timeout: Number = Field(
        default=300.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Seconds to wait for the guest's SSH to answer after starting it.",
    )
    # The ssh provider: an existing Linux host the user names. vmsbx never learns its host key on
    # first use: the user gives the public key line, and vmsbx pins exactly that.
    ssh_host: str | None = Field(default=None, description="ssh provider: address of the existing host.")
    ssh_port: int = Field(default=22, ge=1, le=65535, description="ssh provider: port of its sshd.")
    ssh_user: str = Field(
        default="root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$", description="ssh provider: login user."
    )
    ssh_key: HostPath | None = Field(
        default=None, description="ssh provider: private key file (unencrypted) vmsbx logs in with."
    )
    ssh_host_key: str | None = Field(
        default=None,
        description="ssh provider: the host's public key line (e.g. the content of "
        "/etc/ssh/ssh_host_ed25519_key.pub), pinned before the first connection.",
    )
    wsl_rootfs: HostPath | None = Field(
        default=None, description="wsl2 provider: vmsbx's Debian root filesystem tar to import."
    )
    lima_image: HostPath | None = Field(
        default=None,
        description="lima provider: folder written by `vmsbx image lima` (on Linux vmsbx builds it itself).",
    )


class SandboxSettings(_Section):
    """The per-run sandbox inside the VM: the inner wall around each agent run."""

    mode: Literal["systemd", "nsjail"] = Field(
        default="systemd",
        description="How a run is confined: a hardened systemd transient unit, or nsjail.",
    )
    # Every policy but "none" reaches the model API only through the host relay, which admits
    # only this run's token and enforces --budget; "api" allows nothing else. A plain command
    # without a credential configured (and without --budget) gets no relay at all.
    network: NetworkMode = Field(
        default="api",
        description="What a run may reach: none, only the model API, the API plus allow_hosts, "
        "or the open network.",
    )
    memory_max: Size = Field(default=4 * GiB, description="Memory limit of one run, in bytes.")
    cpus: Number = Field(
        default=2.0,
        gt=0,
        allow_inf_nan=False,
        description="CPU limit of one run, in CPUs (fractions allowed).",
    )
    tasks_max: Count = Field(
        default=512, ge=16, description="Most processes and threads one run may have at once."
    )
    timeout: Duration = Field(default=2 * 3600.0, description="Wall-clock limit of one run, in seconds.")
    workspace_size: Size = Field(
        default=10 * GiB, description="Size of the run's writable workspace, in bytes."
    )
    tmp_size: Size = Field(default=1 * GiB, description="Size of the run's /tmp and /var/tmp, in bytes.")
    open_files: Count = Field(
        default=65536, ge=64, le=1048576, description="Most open files per process (RLIMIT_NOFILE)."
    )
    # Per device the run reads or writes: its workspace image and the guest's root disk (its
    # /tmp is RAM, under memory_max). High enough never to slow a build, low enough that one
    # run cannot take the whole disk from the guest and the other runs.
    io_read_bps: Bandwidth = Field(
        default=512 * MiB,
        ge=64 * KiB,
        description="Disk read bandwidth cap, bytes per second.",
        json_schema_extra={"allowed": _BANDWIDTH_FORMS},
    )
    io_write_bps: Bandwidth = Field(
        default=256 * MiB,
        ge=64 * KiB,
        description="Disk write bandwidth cap, bytes per second.",
        json_schema_extra={"allowed": _BANDWIDTH_FORMS},
    )
    io_read_iops: Rate = Field(
        default=10000,
        ge=16,
        description="Disk read operations per second.",
        json_schema_extra={"allowed": _RATE_FORMS},
    )
    io_write_iops: Rate = Field(
        default=5000,
        ge=16,
        description="Disk write operations per second.",
        json_schema_extra={"allowed": _RATE_FORMS},
    )
    allow_hosts: tuple[HostName, ...] = Field(
        default=(),
        description="Destinations a run may reach when network is allowlist: host names, *.domain "
        "wildcards (subdomains only), either with :port (else ports 80 and 443), IP addresses listed "
        "as such, and the named sets npm, pypi and github.",
        json_schema_extra={
            "allowed": "a list of host names, wildcards, host:port, IP addresses or the named sets npm, "
            'pypi, github, such as ["github.com", "*.githubusercontent.com:443", "pypi"]'
        },
    )
    score_threshold: Number = Field(
        default=1.0,
        ge=0,
        le=10,
        allow_inf_nan=False,
        description="Highest `systemd-analyze security` exposure a run's unit may score; "
        "a looser policy is refused before it starts.",
    )
    nsjail_score_threshold: Number = Field(
        default=4.0,
        ge=0,
        le=10,
        allow_inf_nan=False,
        description="The same for the outer unit of nsjail mode, which must allow namespaces and "
        "mounts (the jail's own config is checked separately).",
    )


class AgentSettings(_Section):
    """The coding agent and how it reaches the model API."""

    credential_command: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description="argv of a host command that prints the API key; None: no command.",
        json_schema_extra={"allowed": 'an argv list such as ["pass", "show", "anthropic"]'},
    )
    api_upstream: str = Field(
        default="https://api.anthropic.com",
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Base URL the host relay forwards model API requests to.",
        json_schema_extra={"allowed": 'an http(s) URL such as "https://api.anthropic.com"'},
    )
    claude_version: str = Field(
        default="2.1.332",
        # The version lands in a package-install argv in the guest: keep it to a version alphabet.
        pattern=r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]{1,64})?$",
        description="Exact Claude Code version installed in the guest.",
        json_schema_extra={"allowed": 'an exact version such as "2.1.332"'},
    )
    api_ca_file: HostPath | None = Field(
        default=None,
        description="PEM file of an extra CA the relay trusts for the upstream API (tests, TLS-inspecting "
        "proxies); the system's CAs stay trusted. None: system CAs only.",
        json_schema_extra={"allowed": 'an absolute path such as "/etc/ssl/my-ca.pem"'},
    )
    max_concurrent_requests: Count = Field(
        default=DEFAULT_MAX_CONCURRENT,
        ge=1,
        le=64,
        description="Most API requests of one run the relay sends upstream at once; more wait for a "
        "slot. It bounds how far a run can overshoot its --budget (one turn per request in flight).",
    )
    install: Literal["auto", "push", "guest-fetch", "none"] = Field(
        default="auto",
        description="How Claude Code reaches the guest: push (the host fetches and verifies it, then "
        "copies it over SSH), guest-fetch (the guest downloads it, checked against the host's "
        "pinned hash), auto (push unless the guest has its own network) or none (not installed: "
        "the VM only runs commands).",
    )
    registry: str = Field(
        default="https://registry.npmjs.org",
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="npm registry Claude Code is fetched from (as the fetching side sees it; "
        "integrity is always checked against vmsbx's pin).",
        json_schema_extra={"allowed": 'an http(s) URL such as "https://registry.npmjs.org"'},
    )
    claude_profile: bool = Field(
        default=True,
        description="Offer each agent run a copy of your own Claude Code profile (~/.claude: "
        "CLAUDE.md, settings.json, commands/, agents/, skills/, and your MCP servers), credentials "
        "left out; false: every run starts from a bare HOME. The project file may only turn it off.",
    )


# A sync pattern: gitignore-like, one line, no NUL (see vmsbx.sync.rules).
SyncPattern = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]


class SyncSettings(_Section):
    """What sync-in leaves out of the guest workspace (gitignore-like patterns)."""

    exclude: tuple[SyncPattern, ...] = Field(
        default=(),
        description="Extra patterns left out of the workspace; the project file may only add to them.",
        json_schema_extra={"allowed": 'a list of patterns such as ["node_modules", "/build", "*.log"]'},
    )
    secret_patterns: tuple[SyncPattern, ...] | None = Field(
        default=None,
        description="Secret files never synced; None: vmsbx's defaults (.env*, keys, cloud credentials).",
        json_schema_extra={"allowed": 'a list of patterns such as [".env", "*.pem", "!id_*.pub"]'},
    )
    # --- changeset caps (issue 16, point 5) ---
    collect_max: Size = Field(
        default=1 * GiB,
        description="The most the agent's new and changed files may add up to (apparent sizes, "
        "so a sparse file counts at its full length); a larger changeset is refused before any "
        "byte is fetched and stays in the guest until `vmsbx discard`.",
    )


class Settings(BaseModel):
    """Everything vmsbx is configured with, after all layers are merged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vm: VMSettings = Field(default_factory=VMSettings, description="The VM (outer wall).")
    sandbox: SandboxSettings = Field(
        default_factory=SandboxSettings, description="The per-run sandbox (inner wall)."
    )
    agent: AgentSettings = Field(default_factory=AgentSettings, description="The agent and its API access.")
    sync: SyncSettings = Field(default_factory=SyncSettings, description="Workspace sync-in.")
    extra_host_paths: tuple[HostPath, ...] = Field(
        default=(),
        description="Host folders shared into the VM besides the project folder.",
        json_schema_extra={"allowed": 'a list of absolute paths such as ["/srv/datasets"]'},
    )


SECTIONS: dict[str, type[_Section]] = {
    "vm": VMSettings,
    "sandbox": SandboxSettings,
    "agent": AgentSettings,
    "sync": SyncSettings,
}


def setting_fields() -> dict[str, FieldInfo]:
    """Every settable key as a dotted path ("vm.memory", "extra_host_paths") with its field."""
    fields: dict[str, FieldInfo] = {}
    for name, info in Settings.model_fields.items():
        section = SECTIONS.get(name)
        if section is None:
            fields[name] = info
        else:
            fields.update({f"{name}.{key}": sub for key, sub in section.model_fields.items()})
    return fields


def value_kind(info: FieldInfo) -> ValueKind | None:
    """Whether a field holds a size or a duration (written differently from how it is stored)."""
    return next((item for item in info.metadata if isinstance(item, ValueKind)), None)
