"""Layered settings: defaults < user config < ./vmsbx.toml < VMSBX_* environment < flags.

The project file lives in the folder the agent edits, so it is attacker-controlled: it may only
make isolation stricter than what the defaults and the user's own config say. Anything that
loosens a wall, runs a host command or decides where the API key goes must come from the user
config, the environment or a flag.

Each layer is validated as it is applied, so an error always names the one place (file,
variable or flag) that holds the bad value. Reading the two TOML files is the only I/O here,
besides the VM records read when the project file names a VM.
"""

from __future__ import annotations

import difflib
import enum
import json
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from vmsbx import paths
from vmsbx.config.models import (
    DURATION_FORMS,
    NETWORK_ORDER,
    SECTIONS,
    SIZE_FORMS,
    MiB,
    Settings,
    ValueKind,
    format_duration,
    format_size,
    setting_fields,
    value_kind,
)
from vmsbx.errors import ConfigError

PROJECT_FILE_NAME = "vmsbx.toml"
# A settings file is a few lines; a cap keeps a hostile project file from exhausting memory.
_MAX_FILE_BYTES = 1 * MiB
_ENV_PREFIX = "VMSBX_"
# Variables vmsbx reads elsewhere (paths.py, the test suite): they are not settings.
_RESERVED_ENV = frozenset({"VMSBX_HOME", "VMSBX_CACHE", "VMSBX_CONFIG"})
_RESERVED_ENV_PREFIX = "VMSBX_TEST_"
_SHOWN_VALUE_LIMIT = 120

_FIELDS: dict[str, FieldInfo] = setting_fields()


class LayerKind(enum.StrEnum):
    """The layers, lowest priority first."""

    DEFAULT = "default"
    USER = "user config"
    PROJECT = "project file"
    ENV = "environment"
    FLAG = "flag"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one setting's value came from, worded the way the user would look for it."""

    layer: LayerKind
    where: str
    """Label for messages: "defaults", a file path, "environment variable VMSBX_VM_MEMORY",
    or "flag vm.memory"."""


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer's values as dotted keys ("vm.memory"), not yet validated, each with its origin."""

    kind: LayerKind
    values: Mapping[str, object] = field(default_factory=dict)
    origins: Mapping[str, Origin] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResolvedSettings:
    """The merged settings and, for every dotted key, the layer that decided its value."""

    settings: Settings
    origins: Mapping[str, Origin]


def load_settings(
    *,
    project_dir: Path,
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Merge all layers into one validated `Settings`; raise `ConfigError` naming the culprit.

    `env` defaults to `os.environ`. The user config is `env["VMSBX_CONFIG"]` when set there,
    else `paths.user_config_file()`. Absent files are skipped. Flags are dotted keys
    ({"vm.memory": "8G"}); None values mean "not given".
    """
    return resolve_settings(project_dir=project_dir, flags=flags, env=env).settings


def resolve_settings(
    *,
    project_dir: Path,
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
) -> ResolvedSettings:
    """Like `load_settings`, and also report which layer each value came from."""
    environ: Mapping[str, str] = os.environ if env is None else env
    user_file = user_config_path(environ)
    project_file = project_dir / PROJECT_FILE_NAME

    settings = Settings()
    origins = {key: Origin(LayerKind.DEFAULT, "defaults") for key in _FIELDS}

    user_layer = read_toml_layer(user_file, LayerKind.USER)
    settings = _apply(settings, user_layer)
    project_layer = read_toml_layer(project_file, LayerKind.PROJECT)
    tightened = _apply(settings, project_layer)
    _check_tighten_only(settings, tightened, project_layer, user_file)
    default_vm = settings.vm.name
    settings = tightened
    for layer in (user_layer, project_layer):
        origins.update(layer.origins)

    for layer in (env_layer(environ), flags_layer(flags or {})):
        settings = _apply(settings, layer)
        origins.update(layer.origins)
    # After the env and flags: a VM the user names there overrides the project's choice.
    if origins["vm.name"].layer is LayerKind.PROJECT:
        _check_project_vm(settings.vm.name, default_vm, origins["vm.name"], user_file)
    return ResolvedSettings(settings=settings, origins=origins)


def user_config_path(env: Mapping[str, str]) -> Path:
    """The user config file: `VMSBX_CONFIG` from `env` if set, else the platform default."""
    override = env.get("VMSBX_CONFIG")
    return Path(override) if override else paths.user_config_file()


def env_var_name(key: str) -> str:
    """The variable that sets dotted `key`: "sandbox.memory_max" -> "VMSBX_SANDBOX_MEMORY_MAX"."""
    return _ENV_PREFIX + key.replace(".", "_").upper()


_ENV_KEYS = {env_var_name(key): key for key in _FIELDS}


# --- reading the layers ----------------------------------------------------------------------


def read_toml_layer(path: Path, kind: LayerKind) -> Layer:
    """Read one settings file into a layer; an absent file is an empty layer.

    Raises `ConfigError` for a file that exists but cannot be used: a directory, a FIFO or
    device, unreadable, larger than 1 MiB, not UTF-8, not TOML, or holding unknown keys.
    """
    where = _display_path(path)
    text = _read_settings_text(path, where)
    if text is None:
        return Layer(kind)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            f"{where} is not valid TOML: {error}. Fix the syntax there (https://toml.io "
            f"describes it) or delete the file to use the defaults."
        ) from None
    values = _flatten(document, where)
    origin = Origin(kind, where)
    return Layer(kind, values, dict.fromkeys(values, origin))


def env_layer(env: Mapping[str, str]) -> Layer:
    """The `VMSBX_<SECTION>_<KEY>` variables of `env` as a layer; unknown VMSBX_* is an error."""
    values: dict[str, object] = {}
    origins: dict[str, Origin] = {}
    for name in sorted(env):
        if not name.startswith(_ENV_PREFIX) or _is_reserved_env(name):
            continue
        key = _ENV_KEYS.get(name)
        where = f"environment variable {_show_key(name)}"
        if key is None:
            raise ConfigError(
                f"{where} is not a vmsbx setting{_did_you_mean(name, _ENV_KEYS)}. Unset it, or "
                f"use one of: {', '.join(_ENV_KEYS)} (VMSBX_HOME, VMSBX_CACHE, VMSBX_CONFIG and "
                f"VMSBX_TEST_* are also read, but are not settings)."
            )
        values[key] = _split_text(key, env[name], where)
        origins[key] = Origin(LayerKind.ENV, where)
    return Layer(LayerKind.ENV, values, origins)


def flags_layer(flags: Mapping[str, object]) -> Layer:
    """Command-line values keyed by dotted setting name; None means the flag was not given."""
    values: dict[str, object] = {}
    origins: dict[str, Origin] = {}
    for key, value in flags.items():
        if value is None:
            continue
        where = f"flag {_show_key(key)}"
        if key not in _FIELDS:
            raise ConfigError(
                f"{where} is not a vmsbx setting{_did_you_mean(key, _FIELDS)}. "
                f"Valid settings: {', '.join(_FIELDS)}."
            )
        values[key] = _split_text(key, value, where) if isinstance(value, str) else value
        origins[key] = Origin(LayerKind.FLAG, where)
    return Layer(LayerKind.FLAG, values, origins)


def _is_reserved_env(name: str) -> bool:
    return name in _RESERVED_ENV or name.startswith(_RESERVED_ENV_PREFIX)


def _read_settings_text(path: Path, where: str) -> str | None:
    # O_NONBLOCK so that a FIFO planted as vmsbx.toml cannot hang vmsbx in open(); the fstat
    # below then refuses it. Windows has no such flag and no such trap.
    open_flags = os.O_RDONLY | int(getattr(os, "O_NONBLOCK", 0))
    try:
        descriptor = os.open(path, open_flags)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ConfigError(
            f"{where} cannot be read: permission denied. Make it readable by you "
            f"(chmod u+r {shlex.quote(str(path))}) or remove it."
        ) from None
    except OSError as error:
        raise ConfigError(
            f"{where} cannot be opened: {error.strerror or error}. Replace it with a plain TOML "
            f"file or remove it."
        ) from None
    try:
        data = _read_plain_file(descriptor, where)
    finally:
        os.close(descriptor)
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(
            f"{where} is larger than {format_size(_MAX_FILE_BYTES)}; a vmsbx settings file is a "
            f"few lines of TOML. Check that the path names the right file."
        )
    try:
        # utf-8-sig: editors on Windows like to start files with a byte-order mark.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{where} is not valid UTF-8 text (bad byte at offset {error.start}). Save it as "
            f"UTF-8; TOML files must be UTF-8."
        ) from None


def _read_plain_file(descriptor: int, where: str) -> bytes:
    mode = os.fstat(descriptor).st_mode
    if stat.S_ISDIR(mode):
        raise ConfigError(
            f"{where} is a directory, not a settings file. Remove or rename it, or put the "
            f"settings in a TOML file at that path."
        )
    if not stat.S_ISREG(mode):
        raise ConfigError(
            f"{where} is not a regular file (it is a FIFO, socket or device). vmsbx reads "
            f"settings only from plain files: replace it with a TOML file or remove it."
        )
    try:
        # closefd=False: the caller owns the descriptor and closes it on every path.
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            return handle.read(_MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(
            f"{where} cannot be read: {error.strerror or error}. Check the file and its disk."
        ) from None


def _flatten(document: Mapping[str, Any], where: str) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, value in document.items():
        section = SECTIONS.get(name)
        if section is None:
            if name not in _FIELDS:
                raise ConfigError(_unknown_top_level_key(name, where))
            values[name] = value
            continue
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: key '{name}' = {_show(value)} must be a table: write a [{name}] "
                f"section holding {', '.join(section.model_fields)}."
            )
        for key, item in value.items():
            dotted = f"{name}.{key}"
            if dotted not in _FIELDS:
                raise ConfigError(_unknown_section_key(name, key, where))
            values[dotted] = item
    return values


def _unknown_section_key(section: str, key: str, where: str) -> str:
    known = SECTIONS[section].model_fields
    listing = f"The keys of [{section}] are: {', '.join(known)}."
    if key in _FIELDS:
        # TOML puts every key after a [table] header into that table: an easy slip.
        return (
            f"{where}: unknown key '{section}.{key}'; '{key}' is a top-level key, and TOML puts "
            f"every key after a [{section}] header into [{section}]: move it above the first "
            f"[section] header. {listing}"
        )
    suggestion = _did_you_mean(key, known, prefix=f"{section}.")
    return f"{where}: unknown key '{section}.{_show_key(key)}'{suggestion}. {listing}"


def _unknown_top_level_key(name: str, where: str) -> str:
    sections = [section for section, model in SECTIONS.items() if name in model.model_fields]
    top_keys = [key for key in _FIELDS if "." not in key]
    layout = (
        f"The top level holds the tables {', '.join(f'[{s}]' for s in SECTIONS)} and the "
        f"key{'s' if len(top_keys) > 1 else ''} {', '.join(top_keys)}."
    )
    if sections:
        homes = " or ".join(f"[{section}]" for section in sections)
        return (
            f"{where}: unknown key '{_show_key(name)}' at the top level; it belongs in a "
            f"section: move it under {homes}. {layout}"
        )
    suggestion = _did_you_mean(name, [*top_keys, *SECTIONS])
    return f"{where}: unknown key '{_show_key(name)}'{suggestion}. {layout}"


def _split_list(text: str, separator: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(separator) if part.strip())


def _split_command(text: str) -> tuple[str, ...] | None:
    argv = tuple(shlex.split(text))
    # An empty variable clears a command set in a file, rather than naming an empty argv.
    return argv or None


# List settings are written as one string in the environment and on the command line.
_SPLITTERS: dict[str, Callable[[str], tuple[str, ...] | None]] = {
    "extra_host_paths": lambda text: _split_list(text, os.pathsep),
    "sandbox.allow_hosts": lambda text: _split_list(text, ","),
    "agent.credential_command": _split_command,
    "sync.exclude": lambda text: _split_list(text, ","),
    "sync.secret_patterns": lambda text: _split_list(text, ","),
}


def _split_text(key: str, text: str, where: str) -> object:
    splitter = _SPLITTERS.get(key)
    if splitter is None:
        return text
    try:
        return splitter(text)
    except ValueError as error:
        raise ConfigError(
            f"{where}: key '{key}' = {_show(text)} cannot be split into arguments ({error}). "
            f"Quote it as you would in a POSIX shell, e.g. \"pass show 'api key'\"."
        ) from None


# --- validating ------------------------------------------------------------------------------


def _apply(base: Settings, layer: Layer) -> Settings:
    if not layer.values:
        return base
    data = base.model_dump()
    for key, value in layer.values.items():
        section, _, name = key.rpartition(".")
        (data[section] if section else data)[name] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        raise _explain(error, layer) from None


def _explain(error: ValidationError, layer: Layer) -> ConfigError:
    problems = error.errors(include_url=False)
    message = _describe_problem(problems[0], layer)
    if len(problems) > 1:
        more = len(problems) - 1
        follow = "problem follows" if more == 1 else "problems follow"
        message += f" ({more} more {follow} once this one is fixed.)"
    return ConfigError(message)


def _describe_problem(problem: ErrorDetails, layer: Layer) -> str:
    key, entry = _key_of(problem["loc"])
    origin = layer.origins.get(key)
    where = origin.where if origin else layer.kind.value
    if entry is None:
        # What the user wrote ("128M"), not what pydantic saw after parsing (134217728).
        subject = f"key '{key}' = {_show(layer.values.get(key, problem['input']))}"
    else:
        subject = f"key '{key}' entry {entry + 1} = {_show(problem['input'])}"
    kind = problem["type"]
    if kind == "literal_error":
        what = "is not one of the choices"
    elif kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        what = "is out of range"
    elif kind == "string_pattern_mismatch":
        what = "does not have the allowed form"
    elif kind == "finite_number":
        what = "is not a finite number"
    elif kind == "too_short":
        what = "is empty"
    elif kind == "value_error":
        what = f"is not valid ({problem.get('ctx', {}).get('error', problem['msg'])})"
    elif kind.endswith(("_type", "_parsing")) or kind == "int_from_float":
        what = "has the wrong type"
    else:
        what = f"is not valid ({problem['msg']})"
    info = _FIELDS.get(key)
    allowed = f"; expected {allowed_values(info)}" if info is not None else ""
    return f"{where}: {subject} {what}{allowed}."


def _key_of(loc: tuple[str | int, ...]) -> tuple[str, int | None]:
    parts = list(loc)
    if len(parts) >= 2 and parts[0] in SECTIONS:
        key, rest = f"{parts[0]}.{parts[1]}", parts[2:]
    elif parts:
        key, rest = str(parts[0]), parts[1:]
    else:
        return "(settings)", None
    entry = next((part for part in rest if isinstance(part, int)), None)
    return key, entry


def allowed_values(info: FieldInfo) -> str:
    """Say in words what a setting accepts, for error messages and help text."""
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("allowed"), str):
        return str(extra["allowed"])
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(_show(choice) for choice in get_args(annotation))
    kind = value_kind(info)
    bounds = _bounds(info, kind)
    if kind is ValueKind.SIZE:
        return f"a size{bounds}, written like {SIZE_FORMS}"
    if kind is ValueKind.DURATION:
        return f"a duration{bounds}, written like {DURATION_FORMS}"
    if annotation is int:
        return f"a whole number{bounds}"
    if annotation is float:
        return f"a number{bounds}"
    if get_origin(annotation) is tuple:
        return "a list of strings"
    return "a string"


def _bounds(info: FieldInfo, kind: ValueKind | None) -> str:
    def number(value: object) -> str:
        if kind is ValueKind.SIZE and isinstance(value, int):
            return format_size(value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    low = high = ""
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"at least {number(item.ge)}"
        elif isinstance(item, annotated_types.Gt):
            low = f"greater than {number(item.gt)}"
        elif isinstance(item, annotated_types.Le):
            high = f"at most {number(item.le)}"
        elif isinstance(item, annotated_types.Lt):
            high = f"less than {number(item.lt)}"
    if low.startswith("at least") and high.startswith("at most"):
        return f" from {low.removeprefix('at least ')} to {high.removeprefix('at most ')}"
    if low.startswith("at least") and not high:
        return f" of {low}"
    joined = " and ".join(part for part in (low, high) if part)
    return f" {joined}" if joined else ""


# --- the tighten-only rule -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Free:
    """No bearing on isolation."""


@dataclass(frozen=True, slots=True)
class _TrustedOnly:
    """Refused in the project file whatever the value."""

    reason: str


@dataclass(frozen=True, slots=True)
class _OnlyValue:
    """The project file may set only this (safe) value."""

    allowed: object
    reason: str


@dataclass(frozen=True, slots=True)
class _Unchanged:
    """The project file may repeat the value below, never change it."""

    reason: str


@dataclass(frozen=True, slots=True)
class _AtMost:
    """A limit: the project file may lower it. None is no limit: it may set one, never drop one."""


@dataclass(frozen=True, slots=True)
class _Narrower:
    """An ordered choice, narrowest first: the project file may move towards the start."""

    order: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class _NoLooserVM:
    """A VM name: the project file may name only an existing VM whose wall is no looser than the
    default VM's (checked against the VMs' records by `_check_project_vm`)."""


@dataclass(frozen=True, slots=True)
class _Subset:
    """A list of permissions: the project file may drop entries, never add them."""


@dataclass(frozen=True, slots=True)
class _Superset:
    """A list of restrictions: the project file may add entries, never drop them."""


_Rule = (
    _Superset | _Free | _TrustedOnly | _OnlyValue | _Unchanged | _AtMost | _Narrower | _Subset | _NoLooserVM
)

_PROJECT_RULES: dict[str, _Rule] = {
    "vm.name": _NoLooserVM(),
    "vm.image": _Free(),
    "vm.provider": _TrustedOnly("it chooses which program vmsbx runs on your host"),
    "vm.accel": _TrustedOnly("it changes how your host runs the VM"),
    "vm.guest_network": _OnlyValue(
        "restricted", "it would give the VM its own route to your network and the internet"
    ),
    "vm.cpus": _AtMost(),
    "vm.memory": _AtMost(),
    "vm.disk": _AtMost(),
    "vm.boot_timeout": _AtMost(),
    "vm.ssh_host": _TrustedOnly("it chooses which machine vmsbx logs into and runs the agent on"),
    "vm.ssh_port": _TrustedOnly("it chooses which machine vmsbx logs into and runs the agent on"),
    "vm.ssh_user": _TrustedOnly("it chooses which account vmsbx logs in as"),
    "vm.ssh_key": _TrustedOnly("it names a key file on your host"),
    "vm.ssh_host_key": _TrustedOnly("it decides which host key vmsbx trusts"),
    "vm.wsl_rootfs": _TrustedOnly("it chooses the system vmsbx imports as the VM"),
    "vm.lima_image": _TrustedOnly("it chooses the system Lima boots as the VM"),
    "sandbox.mode": _Unchanged("it switches the sandbox implementation"),
    "sandbox.network": _Narrower(NETWORK_ORDER),
    "sandbox.memory_max": _AtMost(),
    "sandbox.cpus": _AtMost(),
    "sandbox.tasks_max": _AtMost(),
    "sandbox.timeout": _AtMost(),
    "sandbox.workspace_size": _AtMost(),
    "sandbox.tmp_size": _AtMost(),
    "sandbox.open_files": _AtMost(),
    "sandbox.io_read_bps": _AtMost(),
    "sandbox.io_write_bps": _AtMost(),
    "sandbox.io_read_iops": _AtMost(),
    "sandbox.io_write_iops": _AtMost(),
    "sandbox.allow_hosts": _Subset(),
    "sandbox.score_threshold": _TrustedOnly("it decides how loose a sandbox vmsbx agrees to start"),
    "sandbox.nsjail_score_threshold": _TrustedOnly("it decides how loose a sandbox vmsbx agrees to start"),
    "agent.credential_command": _TrustedOnly("it is a command vmsbx runs on your host"),
    "agent.api_upstream": _TrustedOnly("it decides where your API key is sent"),
    "agent.api_ca_file": _TrustedOnly("it decides which servers are trusted with your API key"),
    "agent.claude_version": _TrustedOnly("it chooses which agent build runs with your API key"),
    "agent.max_concurrent_requests": _AtMost(),
    "agent.install": _TrustedOnly("it decides how the agent program reaches the VM"),
    "agent.registry": _TrustedOnly("it decides where the agent program is downloaded from"),
    "agent.claude_profile": _OnlyValue(False, "it would copy your own Claude settings into the run"),
    "extra_host_paths": _TrustedOnly("it shares host folders into the VM"),
    "sync.exclude": _Superset(),
    "sync.secret_patterns": _TrustedOnly("it decides which secrets are copied into the VM"),
    "sync.collect_max": _AtMost(),
}
# A setting added later without a rule here is trusted-only until someone decides otherwise.
_FAIL_CLOSED = _TrustedOnly("it is not known to be safe for the project folder to set")


def project_rule_keys() -> frozenset[str]:
    """The settings with an explicit tighten-only rule (the rest are refused in the project)."""
    return frozenset(_PROJECT_RULES)


def _check_tighten_only(lower: Settings, proposed: Settings, layer: Layer, user_file: Path) -> None:
    for key in layer.values:
        rule = _PROJECT_RULES.get(key, _FAIL_CLOSED)
        refusal = _refusal(key, rule, _get(lower, key), _get(proposed, key))
        if refusal is None:
            continue
        where = layer.origins[key].where
        raise ConfigError(
            f"{where}: key '{key}' = {_show(layer.values[key])} {refusal}. The project file can "
            f"only tighten settings; set it in your user config ({_display_path(user_file)}), "
            f"the {env_var_name(key)} variable or a flag instead."
        )


def _refusal(key: str, rule: _Rule, below: object, wanted: object) -> str | None:
    below_shown = _show_setting(key, below)
    loosens = f"would loosen isolation (the layers below say {below_shown})"
    match rule:
        case _Free() | _NoLooserVM():
            return None
        case _TrustedOnly(reason):
            return f"is not allowed in a project file: {reason}"
        case _OnlyValue(allowed, reason):
            return None if wanted == allowed else f"is not allowed in a project file: {reason}"
        case _Unchanged(reason):
            if wanted == below:
                return None
            return f"is not allowed in a project file: {reason} (the layers below say {below_shown})"
        case _AtMost():
            if below is None:
                return None
            assert isinstance(below, int | float) and (wanted is None or isinstance(wanted, int | float))
            return None if wanted is not None and wanted <= below else loosens
        case _Narrower(order):
            return None if order.index(wanted) <= order.index(below) else loosens
        case _Superset():
            assert isinstance(wanted, tuple) and isinstance(below, tuple)
            dropped = [item for item in below if item not in wanted]
            # A "!" pattern takes back an exclusion: that loosens as much as dropping one.
            negations = [item for item in wanted if item.startswith("!") and item not in below]
            if not dropped and not negations:
                return None
            return (
                f"{loosens}: it drops or takes back {', '.join(_show(item) for item in dropped + negations)}"
            )
        case _Subset():
            assert isinstance(wanted, tuple) and isinstance(below, tuple)
            added = [host for host in wanted if host not in below]
            if not added:
                return None
            return f"{loosens}: it adds {', '.join(_show(host) for host in added)}"


def _check_project_vm(wanted: str, default_vm: str, origin: Origin, user_file: Path) -> None:
    """Refuse a project-chosen VM that is absent, a real host, or looser than the default VM.

    The default VM is the one the defaults and the user config name; one that does not exist yet
    counts as the strictest wall. A real host is never the project's to pick, even when the
    default is one too: unlike guests, two hosts are not interchangeable sandboxes.
    """
    if wanted == default_vm:
        return
    from vmsbx.providers.walls import VMWall, recorded_wall

    wall = recorded_wall(wanted)
    default_wall = recorded_wall(default_vm) or VMWall.RESTRICTED_GUEST
    if wall is None:
        problem = "names a VM that does not exist, and vmsbx creates only VMs you name yourself"
    elif wall is VMWall.REAL_HOST:
        problem = f"names {wall.describe()}, which only you may choose"
    elif wall > default_wall:
        problem = (
            f"names {wall.describe()}, which is looser than the default VM {_show(default_vm)} "
            f"({default_wall.describe()})"
        )
    else:
        return
    raise ConfigError(
        f"{origin.where}: key 'vm.name' = {_show(wanted)} {problem}. The project file may only "
        f"choose a VM that exists and is no looser than the default one; to use this VM, name it "
        f"yourself: --name {wanted} (after `vmsbx up --name {wanted}` if it does not exist), "
        f"{env_var_name('vm.name')}={wanted}, or vm.name in your user config "
        f"({_display_path(user_file)})."
    )


def _get(settings: Settings, key: str) -> object:
    value: object = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value


# --- showing values safely -------------------------------------------------------------------


def _show_setting(key: str, value: object) -> str:
    """Show a parsed value the way a user writes it: sizes as "4G", durations as "2h"."""
    kind = value_kind(_FIELDS[key])
    if value is None and key.startswith("sandbox.io_"):  # the disk I/O caps: none is "max"
        return _show("max")
    if kind is ValueKind.SIZE and isinstance(value, int):
        return _show(format_size(value))
    if kind is ValueKind.DURATION and isinstance(value, float):
        return _show(format_duration(value))
    return _show(value)


def _display_path(path: Path) -> str:
    if path.is_absolute() or path.as_posix().startswith("."):
        return str(path)
    return f"./{path.as_posix()}"


def _show_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) else _show(name)


def _show(value: object) -> str:
    """Render a value TOML-style for a message; escapes control characters (the project file
    is hostile and the message goes to a terminal) and truncates long values."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_show(item) for item in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{_show_key(str(k))} = {_show(v)}" for k, v in value.items()) + "}"
    else:
        text = json.dumps(str(value))[1:-1]
    if len(text) > _SHOWN_VALUE_LIMIT:
        text = text[:_SHOWN_VALUE_LIMIT] + "..."
    return text


def _did_you_mean(name: str, candidates: Mapping[str, object] | list[str], *, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""
