"""The host↔guest contract: every fact both sides need, defined once.

The host imports this file as `vmsbx.contract`; `vmsbx up` pushes the very same file to the
guest as GUEST_LIB/contract.py (part of the hash-checked guest bundle, see vmsbx.guest), where
the launcher, nsjail_prep and claude_install import it as `contract`. So it must stay one flat
module of the standard library only: no vmsbx import, no pydantic, not even `typing` or
`dataclasses` at run time (each costs every guest call a few ms of a Python start, ~10x that
under TCG).

  /var/lib/vmsbx/runs/<id>/            root-only (0700): result, transcript copy, nsjail config,
                                       the conversations' copies (sessions/)
  /var/lib/vmsbx/runs/<id>/tmp         per-run tmpfs (size-capped), bound over /tmp and /var/tmp;
                                       holds the spec (root-owned, read-only to the run), the
                                       holder's socket and transcript, and the run's HOME
  /var/lib/private/vmsbx-ws-<id>       the project's mirror bound here; systemd's
                                       StateDirectory= hands it to the run's dynamic user
  /var/lib/vmsbx/projects/<key>/       root-only: the project's size-capped image, its mount
                                       (mnt), the run that holds it (owner), the hash cache

Everything a run can write lands on one of its two size-capped filesystems (workspace image,
tmpfs): no RuntimeDirectory= or LogsDirectory=, which would let it fill /run or the guest disk.

The launch request is a typed record with strict JSON both ways: an unknown or a missing field,
or a value of the wrong type, is a ContractError on the host when it builds the request and in
the guest when it parses it (the launcher then exits EXIT_BAD_REQUEST).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct

# Annotations only: mypy reads any name TYPE_CHECKING as true; the guest never imports typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

# -- guest paths and names ---------------------------------------------------------------------

GUEST_LIB = "/usr/local/lib/vmsbx"
STATE_ROOT = "/var/lib/vmsbx"
RUNS_ROOT = f"{STATE_ROOT}/runs"
PROJECTS_ROOT = f"{STATE_ROOT}/projects"
NSJAIL = f"{GUEST_LIB}/nsjail/bin/nsjail"

# The guest launcher as one command over SSH (-S: no site import, see sandbox.systemd.NO_SITE).
GUEST_ARGV = ("/usr/bin/python3", "-S", f"{GUEST_LIB}/guest.py")

# The resident guest agent (guestd.py): a root service with the launcher loaded, serving the
# same verbs without a Python start per call. Its socket is in a root-only directory and it
# answers only uid 0; the host reaches it as a direct-streamlocal channel of its SSH connection.
GUESTD_UNIT = "vmsbx-guestd.service"
GUESTD_SOCKET = "/run/vmsbx-guestd/socket"
# A request: a big-endian length, then this much JSON ({"version": …, "argv": [VERB, …]}), then
# the verb's stdin until the host half-closes. The reply: frames (FRAME_HEADER below) of
# FRAME_STDOUT and FRAME_STDERR, then one FRAME_EXIT whose payload is the JSON {"code": N}.
GUESTD_REQUEST_HEADER = struct.Struct(">I")
GUESTD_REQUEST_MAX = 64 * 1024

RUN_ID = re.compile(r"^[a-z0-9]{12}$")  # the host draws 12 lowercase hex characters
PROJECT_ID = re.compile(r"^[0-9a-f]{16}$")  # vmsbx.runs.workspace.project_key
INVOCATION_ID = re.compile(r"^[0-9a-f]{32}$")  # systemd's InvocationID
MIRROR_DIGEST = re.compile(r"^[0-9a-f]{64}$")  # mirror_digest below

# Host services a run may reach, and the loopback port each has inside the run's own network
# namespace (a small forwarder there leads to the bridge socket).
BRIDGES = {"relay": 8787, "proxy": 8788, "socks": 8789}

# One unprivileged id per nsjail run, outside the ranges Debian hands out (system < 1000, users
# up to 59999) and below systemd's DynamicUser range (61184-65519): the host draws it, the
# guest's nsjail_prep claims it and refuses anything else.
OUTSIDE_UID_FIRST = 60000
OUTSIDE_UID_LAST = 60999
NSJAIL_CONFIG_MAX = 256 * 1024
# The launch request line: the spec (argv and env, which exec caps at ARG_MAX, 2 MiB by default,
# and the HOME files: the user's Claude profile, a continued conversation), the unit's argv, an
# nsjail config. The guest reads no more; the host refuses a bigger one before sending it.
LAUNCH_REQUEST_MAX = 4 << 20

# Claude Code's npm package (2.1.332: a 186 MB tarball holding a 402 MB binary): the host's
# download and the guest's installer refuse more. Room for growth, not for abuse.
CLAUDE_ROOT = f"{GUEST_LIB}/claude"  # one folder per installed version
CLAUDE_MARKER = f"{CLAUDE_ROOT}/INSTALLED"  # claude_marker() of the build installed last
CLAUDE_MEMBER = "package/claude"  # the binary in the package's tarball
TARBALL_MAX = 512 * 1024 * 1024
BINARY_MAX = 1024 * 1024 * 1024
METADATA_MAX = 1024 * 1024

# Inside every run (both modes): its tmpfs is /tmp.
SPEC_INSIDE = "/tmp/.vmsbx-spec.json"  # the RunSpec, root-owned, read-only to the run
HOLDER_DIR_INSIDE = "/tmp/.vmsbx"  # the session holder's own folder: socket, transcript
HOME_INSIDE = "/tmp/.vmsbx-home"  # a fresh HOME per run

# Claude Code's conversations, as root saves them at a run's end (`record`) from the run's HOME
# (.claude/projects/<munged cwd>/<session>.jsonl) and the host fetches them (`sessions`): only
# names like these, at most this many files and bytes in all (the newest first).
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SESSION_ID = re.compile(rf"^{_UUID}$")
SESSION_FILE = re.compile(rf"^{_UUID}\.jsonl$")
SESSIONS_MAX_FILES = 16
SESSIONS_MAX_BYTES = 8 * 1024 * 1024

# The session holder's frames (the launcher's `attach` speaks them to the holder's socket, and
# the transcript is a sequence of them): a kind byte and a big-endian payload length.
FRAME_HEADER = struct.Struct(">BI")
FRAME_STDIN, FRAME_STDOUT, FRAME_STDERR, FRAME_STDIN_EOF, FRAME_RESIZE, FRAME_EXIT = 0, 1, 2, 3, 4, 5


def claude_binary(version: str) -> str:
    """Where Claude Code `version` lives in the guest (what an agent run starts)."""
    return f"{CLAUDE_ROOT}/{version}/claude"


def claude_marker(version: str, platform: str, integrity: str) -> str:
    """The line CLAUDE_MARKER holds once this exact build is installed (`vmsbx up` compares it
    with what guest-facts.sh reports, so an install is a no-op the second time)."""
    return f"{version} {platform} {integrity}"


def mirror_digest(manifest_line: bytes) -> str:
    """What a listed manifest of a project's mirror is known by on both sides: the sha256 of its
    JSON line (without the line end). hashlib is imported here, not at the top: only the few
    verbs that list or check a mirror pay for it."""
    import hashlib

    return hashlib.sha256(manifest_line.strip()).hexdigest()


def sha512_digest(integrity: str) -> bytes:
    """The sha512 digest in an npm integrity string (Subresource Integrity: `sha512-<base64>`,
    possibly several space-separated hashes, each maybe with `?options`), checked the same way
    by the host's download and the guest's installer. Only sha512 is accepted: sha1 is too weak
    to trust. Raises ContractError."""
    digests = set()
    for item in integrity.split():
        algorithm, _, encoded = item.partition("-")
        if algorithm != "sha512":
            continue
        try:
            digest = base64.b64decode(encoded.split("?", 1)[0], validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 64:
            raise ContractError(f"malformed sha512 integrity {item!r}")
        digests.add(digest)
    if len(digests) != 1:
        raise ContractError(f"integrity {integrity!r} does not name exactly one sha512")
    return digests.pop()


# -- exit codes of the guest launcher ------------------------------------------------------------
#
# The host decides by these, never by the words of the guest's message.

EXIT_USAGE = 2  # bad arguments (a verb, an id, an option)
EXIT_NOT_ENDED = 3  # the run has not ended (yet)
EXIT_NO_RUN = 4  # the run, its workspace or the project is not there, or is another run's
EXIT_TOO_LARGE = 5  # `wsync … manifest --max-new-bytes`: the run's new files exceed the cap
EXIT_BAD_REQUEST = 6  # the launch request breaks this contract: nothing was started
EXIT_UID_IN_USE = 7  # nsjail: the drawn outside uid is taken; launch again under a new run id
EXIT_STALE_MIRROR = 9  # launch: the mirror is not what the host planned its sync against
EXIT_STALE = 8  # guestd: it runs another bundle than the host's (it restarts to load the new one)
EXIT_FAILED = 125  # the sandbox could not be prepared or started
EXIT_HOLDER_LOST = 255  # the session holder went away before the command's exit


class RunPaths:
    """Names and paths of one run in the guest, derived from its id alone."""

    __slots__ = ("run_id",)
    run_id: str

    def __init__(self, run_id: str) -> None:
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            raise ValueError(f"invalid run id {run_id!r}")
        object.__setattr__(self, "run_id", run_id)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("RunPaths is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunPaths) and other.run_id == self.run_id

    def __hash__(self) -> int:
        return hash(self.run_id)

    def __repr__(self) -> str:
        return f"RunPaths({self.run_id!r})"

    @property
    def unit(self) -> str:
        return f"vmsbx-run-{self.run_id}.service"

    @property
    def run_dir(self) -> str:
        return f"{RUNS_ROOT}/{self.run_id}"

    @property
    def result(self) -> str:
        """systemd's verdict and the cgroup's peaks, written by ExecStopPost=+ (`record`)."""
        return f"{self.run_dir}/result.json"

    @property
    def started_stamp(self) -> str:
        """Written by root after systemd's chown of the workspace, before the run's first
        process: the unit's invocation ID, and by its mtime the time of that moment."""
        return f"{self.run_dir}/started"

    @property
    def transcript(self) -> str:
        """Root's capped copy of the holder's transcript."""
        return f"{self.run_dir}/transcript"

    @property
    def sessions_dir(self) -> str:
        """Root's copies of the run's Claude Code conversations (SESSION_FILE names)."""
        return f"{self.run_dir}/sessions"

    @property
    def project_note(self) -> str:
        """The project key whose mirror the run holds."""
        return f"{self.run_dir}/project"

    @property
    def nsjail_config(self) -> str:
        """Where the launcher writes the run's config: the root-only run dir, never in the jail."""
        return f"{self.run_dir}/nsjail.cfg"

    @property
    def tmp_dir(self) -> str:
        return f"{self.run_dir}/tmp"

    @property
    def state_name(self) -> str:
        """StateDirectory= name of the workspace."""
        return f"vmsbx-ws-{self.run_id}"

    @property
    def workspace(self) -> str:
        """The workspace as the run sees it (systemd mode; a symlink systemd makes)."""
        return f"/var/lib/{self.state_name}"

    @property
    def workspace_mount(self) -> str:
        """Where the launcher binds the project's mirror (the real path behind the symlink)."""
        return f"/var/lib/private/{self.state_name}"

    @property
    def holder_name(self) -> str:
        """The holder's folder on the run's tmpfs (made by the holder: the run's own)."""
        return HOLDER_DIR_INSIDE.removeprefix("/tmp/")

    @property
    def holder_dir_outside(self) -> str:
        return f"{self.tmp_dir}/{self.holder_name}"

    @property
    def spec_outside(self) -> str:
        return f"{self.tmp_dir}/{SPEC_INSIDE.removeprefix('/tmp/')}"

    @property
    def home(self) -> str:
        """A fresh HOME per run, on the run's tmpfs."""
        return HOME_INSIDE

    @property
    def home_name(self) -> str:
        """The HOME's folder on the run's tmpfs (made by the holder: the run's own)."""
        return HOME_INSIDE.removeprefix("/tmp/")

    def bridge_socket_inside(self, name: str) -> str:
        """A host service (the API relay, the egress proxy) as the run reaches it: a Unix
        socket on the run's tmpfs, owned by root (the run cannot replace it), listened on by a
        root forwarder outside the sandbox that leads to the SSH reverse tunnel."""
        return f"/tmp/{_bridge_file(name)}"

    def bridge_socket_outside(self, name: str) -> str:
        return f"{self.tmp_dir}/{_bridge_file(name)}"

    def bridge_unit(self, name: str) -> str:
        _bridge_file(name)
        return f"vmsbx-bridge-{self.run_id}-{name}.service"


def _bridge_file(name: str) -> str:
    if name not in BRIDGES:
        raise ValueError(f"unknown bridge {name!r}")
    return f".vmsbx-{name}.sock"


class ProjectPaths:
    """A project's mirror in the guest: one size-capped image per project key, held by one run
    at a time."""

    __slots__ = ("key",)
    key: str

    def __init__(self, key: str) -> None:
        if not isinstance(key, str) or not PROJECT_ID.fullmatch(key):
            raise ValueError(f"invalid project id {key!r}")
        object.__setattr__(self, "key", key)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ProjectPaths is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProjectPaths) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"ProjectPaths({self.key!r})"

    @property
    def dir(self) -> str:
        return f"{PROJECTS_ROOT}/{self.key}"

    @property
    def image(self) -> str:
        return f"{self.dir}/workspace.img"

    @property
    def mnt(self) -> str:
        """Where the image stays mounted while the guest is up."""
        return f"{self.dir}/mnt"

    @property
    def owner(self) -> str:
        """The run id that holds the project."""
        return f"{self.dir}/owner"

    @property
    def cache(self) -> str:
        return f"{self.dir}/manifest-cache.json"

    @property
    def stamp(self) -> str:
        """The mirror_digest of the last manifest listed of the mirror while no run held it (at
        the end of a run, or a sync's own listing); gone as soon as a run claims the mirror."""
        return f"{self.dir}/mirror-stamp"

    @property
    def lock(self) -> str:
        """flock()ed while the owner is read and changed (a claim and a release may run at once)."""
        return f"{self.dir}/owner.lock"


# -- typed records, strict JSON ------------------------------------------------------------------


class ContractError(ValueError):
    """A message that breaks the contract: the text names the field and what is wrong."""


# A field's kind: str, int or bool; ("list", str); ("dict", str|int) (string keys); a Record
# class; ("optional", a Record class) (JSON null when absent).


def _kind_name(kind: object) -> str:
    if isinstance(kind, tuple):
        return f"{kind[0]} of {_kind_name(kind[1])}"
    return getattr(kind, "__name__", str(kind))


def _check(value: object, kind: object, where: str) -> object:
    if kind is bool:
        if not isinstance(value, bool):
            raise ContractError(f"{where}: expected a boolean, got {type(value).__name__}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContractError(f"{where}: expected an integer, got {type(value).__name__}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ContractError(f"{where}: expected a string, got {type(value).__name__}")
        return value
    if isinstance(kind, tuple) and kind[0] == "list":
        if not isinstance(value, (list, tuple)):
            raise ContractError(f"{where}: expected a list, got {type(value).__name__}")
        return [_check(item, kind[1], f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(kind, tuple) and kind[0] == "dict":
        if not isinstance(value, dict):
            raise ContractError(f"{where}: expected an object, got {type(value).__name__}")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContractError(f"{where}: keys must be strings, got {key!r}")
            out[key] = _check(item, kind[1], f"{where}.{key}")
        return out
    if isinstance(kind, tuple) and kind[0] == "optional":
        return None if value is None else _check(value, kind[1], where)
    if isinstance(kind, type) and issubclass(kind, Record):
        if isinstance(value, kind):
            return value
        if isinstance(value, dict):
            return kind._from_dict(value, where)
        raise ContractError(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    raise ContractError(f"{where}: unknown kind {kind!r}")  # a bug in this module


def _plain(value: object) -> object:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


class Record:
    """A message record: exactly its FIELDS, each of its kind, checked when made (host) and
    when parsed (guest); `validate` adds the record's own rules (ids, ranges, names)."""

    __slots__ = ()
    FIELDS: ClassVar[dict[str, object]] = {}

    def _set(self, **values: object) -> None:
        name = type(self).__name__
        for field, kind in self.FIELDS.items():
            object.__setattr__(self, field, _check(values[field], kind, f"{name}.{field}"))
        self.validate()

    def validate(self) -> None:
        """Rules beyond the types; raises ContractError."""

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, Record) and other.to_dict() == self.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        inner = ", ".join(f"{field}={getattr(self, field)!r}" for field in self.FIELDS)
        return f"{type(self).__name__}({inner})"

    def to_dict(self) -> dict[str, Any]:
        return {field: _plain(getattr(self, field)) for field in self.FIELDS}

    def to_json(self) -> str:
        """One line of JSON (the launcher reads the request as its stdin's first line)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def replace(self, **changes: object) -> Any:
        """A copy with `changes`, checked like a new record."""
        unknown = set(changes) - set(self.FIELDS)
        if unknown:
            raise ContractError(f"{type(self).__name__}: unknown field(s) {', '.join(sorted(unknown))}")
        values = {field: getattr(self, field) for field in self.FIELDS}
        values.update(changes)
        return type(self)(**values)

    @classmethod
    def _from_dict(cls, data: dict[str, Any], where: str) -> Any:
        unknown = sorted(set(data) - set(cls.FIELDS))
        missing = [field for field in cls.FIELDS if field not in data]
        if unknown:
            raise ContractError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
        if missing:
            raise ContractError(f"{where}: missing field(s) {', '.join(missing)}")
        values = {field: _check(data[field], kind, f"{where}.{field}") for field, kind in cls.FIELDS.items()}
        return cls(**values)

    @classmethod
    def from_dict(cls, data: object) -> Any:
        if not isinstance(data, dict):
            raise ContractError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        return cls._from_dict(data, cls.__name__)

    @classmethod
    def from_json(cls, text: str | bytes) -> Any:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ContractError(f"{cls.__name__}: not JSON ({exc})") from None
        return cls.from_dict(data)


class RunSpec(Record):
    """What the session holder starts, written by the launcher into the run's tmpfs."""

    __slots__ = ("argv", "bridges", "cols", "cwd", "env", "home", "home_files", "rows", "tty")
    FIELDS: ClassVar[dict[str, object]] = {
        "argv": ("list", str),
        "env": ("dict", str),
        "tty": bool,
        "cols": int,
        "rows": int,
        "cwd": str,
        "home": str,
        "bridges": ("dict", int),  # bridge name -> loopback port inside the run
        "home_files": ("dict", str),  # name under HOME -> content
    }
    argv: list[str]
    env: dict[str, str]
    tty: bool
    cols: int
    rows: int
    cwd: str
    home: str
    bridges: dict[str, int]
    home_files: dict[str, str]

    def __init__(
        self,
        *,
        argv: list[str],
        env: dict[str, str],
        tty: bool,
        cols: int,
        rows: int,
        cwd: str,
        home: str,
        bridges: dict[str, int],
        home_files: dict[str, str],
    ) -> None:
        self._set(
            argv=argv, env=env, tty=tty, cols=cols, rows=rows, cwd=cwd, home=home,
            bridges=bridges, home_files=home_files,
        )  # fmt: skip

    def validate(self) -> None:
        if not self.argv:
            raise ContractError("RunSpec.argv: the command is empty")
        _check_bridges(self.bridges, "RunSpec.bridges")


class Jail(Record):
    """The nsjail part of a launch: the rendered config and the outside uid it maps to."""

    __slots__ = ("config", "outside_uid")
    FIELDS: ClassVar[dict[str, object]] = {"config": str, "outside_uid": int}
    config: str
    outside_uid: int

    def __init__(self, *, config: str, outside_uid: int) -> None:
        self._set(config=config, outside_uid=outside_uid)

    def validate(self) -> None:
        if not OUTSIDE_UID_FIRST <= self.outside_uid <= OUTSIDE_UID_LAST:
            raise ContractError(
                f"Jail.outside_uid: {self.outside_uid} is not in vmsbx's jail range "
                f"{OUTSIDE_UID_FIRST}-{OUTSIDE_UID_LAST}"
            )
        if not self.config.strip() or len(self.config.encode()) > NSJAIL_CONFIG_MAX:
            raise ContractError(f"Jail.config: empty or larger than {NSJAIL_CONFIG_MAX} bytes")


class Sizes(Record):
    """The run's two size-capped filesystems, in bytes."""

    __slots__ = ("tmp", "workspace")
    FIELDS: ClassVar[dict[str, object]] = {"tmp": int, "workspace": int}
    tmp: int
    workspace: int

    def __init__(self, *, tmp: int, workspace: int) -> None:
        self._set(tmp=tmp, workspace=workspace)

    def validate(self) -> None:
        for field in self.FIELDS:
            if getattr(self, field) <= 0:
                raise ContractError(f"Sizes.{field}: must be a positive number of bytes")


class LaunchRequest(Record):
    """The first line of the launcher's stdin: everything it needs to start one run."""

    __slots__ = ("bridges", "jail", "mirror", "project", "run_id", "sizes", "spec", "systemd_run")
    FIELDS: ClassVar[dict[str, object]] = {
        "run_id": str,
        "project": str,
        # The mirror_digest of the project manifest the sync stream was planned against, when
        # the host planned it against the manifest it kept from the end of the last run
        # (without asking the guest first): the guest launches only if its mirror-stamp is that
        # digest, else exits EXIT_STALE_MIRROR and the host plans again. "": the host asked.
        "mirror": str,
        "sizes": Sizes,
        "systemd_run": ("list", str),
        "jail": ("optional", Jail),  # null in systemd mode
        "bridges": ("dict", int),  # bridge name -> the guest loopback port of its SSH tunnel
        "spec": RunSpec,
    }
    run_id: str
    project: str
    mirror: str
    sizes: Sizes
    systemd_run: list[str]
    jail: Jail | None
    bridges: dict[str, int]
    spec: RunSpec

    def __init__(
        self,
        *,
        run_id: str,
        project: str,
        sizes: Sizes,
        systemd_run: list[str],
        jail: Jail | None,
        bridges: dict[str, int],
        spec: RunSpec,
        mirror: str = "",
    ) -> None:
        self._set(
            run_id=run_id, project=project, mirror=mirror, sizes=sizes, systemd_run=systemd_run,
            jail=jail, bridges=bridges, spec=spec,
        )  # fmt: skip

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_id)

    def validate(self) -> None:
        if not RUN_ID.fullmatch(self.run_id):
            raise ContractError(f"LaunchRequest.run_id: invalid run id {self.run_id!r}")
        if not PROJECT_ID.fullmatch(self.project):
            raise ContractError(f"LaunchRequest.project: invalid project id {self.project!r}")
        if self.mirror and not MIRROR_DIGEST.fullmatch(self.mirror):
            raise ContractError("LaunchRequest.mirror: must be '' or a sha256 in hex")
        if not self.systemd_run or self.systemd_run[0] != "systemd-run":
            raise ContractError("LaunchRequest.systemd_run: must be a systemd-run command line")
        if f"--unit={self.paths.unit}" not in self.systemd_run:
            raise ContractError(f"LaunchRequest.systemd_run: does not start the run's unit {self.paths.unit}")
        _check_bridges(self.bridges, "LaunchRequest.bridges", tunnel=True)
        if set(self.bridges) != set(self.spec.bridges):
            raise ContractError("LaunchRequest.bridges: the run's spec names other bridges")


def _check_bridges(bridges: dict[str, int], where: str, *, tunnel: bool = False) -> None:
    for name, port in bridges.items():
        if name not in BRIDGES:
            raise ContractError(f"{where}: unknown bridge {name!r} (known: {', '.join(BRIDGES)})")
        if not 0 < port < 65536:
            raise ContractError(f"{where}.{name}: port {port} is out of range")
        if not tunnel and port != BRIDGES[name]:
            raise ContractError(f"{where}.{name}: the run reaches {name} on port {BRIDGES[name]}, not {port}")


class Launched(Record):
    """The launcher's last stdout line after a launch."""

    __slots__ = ("invocation_id", "unit")
    FIELDS: ClassVar[dict[str, object]] = {"unit": str, "invocation_id": str}
    unit: str
    invocation_id: str

    def __init__(self, *, unit: str, invocation_id: str) -> None:
        self._set(unit=unit, invocation_id=invocation_id)

    def validate(self) -> None:
        if not INVOCATION_ID.fullmatch(self.invocation_id):
            raise ContractError(f"Launched.invocation_id: invalid invocation id {self.invocation_id!r}")
