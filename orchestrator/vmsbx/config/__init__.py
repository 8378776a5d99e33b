"""Settings: the typed records vmsbx is configured with, and their layered, tighten-only loading."""

from vmsbx.config.loader import (
    Layer,
    LayerKind,
    Origin,
    ResolvedSettings,
    env_var_name,
    load_settings,
    resolve_settings,
    user_config_path,
)
from vmsbx.config.models import (
    AgentSettings,
    SandboxSettings,
    Settings,
    VMSettings,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

__all__ = [
    "AgentSettings",
    "Layer",
    "LayerKind",
    "Origin",
    "ResolvedSettings",
    "SandboxSettings",
    "Settings",
    "VMSettings",
    "env_var_name",
    "format_duration",
    "format_size",
    "load_settings",
    "parse_duration",
    "parse_size",
    "resolve_settings",
    "user_config_path",
]
