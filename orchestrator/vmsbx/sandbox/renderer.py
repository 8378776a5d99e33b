"""One renderer per sandbox mode behind one interface, so the run lifecycle never asks which
mode it runs under: it asks the mode's renderer (`renderer_for`) for what it needs.

Pure like the renderers it wraps: it decides nothing about a weak jail config either, it
returns the problems found and the caller refuses the launch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from vmsbx.config.models import SandboxSettings
from vmsbx.contract import Jail
from vmsbx.errors import ConfigError
from vmsbx.sandbox.layout import RunLayout
from vmsbx.sandbox.nsjail import (
    check_jail_config,
    nsjail_config_path,
    outside_uid_for,
    render_nsjail_config,
    render_nsjail_systemd_run_argv,
    render_nsjail_unit_file,
    render_nsjail_unit_properties,
)
from vmsbx.sandbox.systemd import render_systemd_run_argv, render_unit_file, render_unit_properties


@dataclass(frozen=True)
class SandboxLaunch:
    """The sandbox part of a run's launch request, as rendered for one run."""

    systemd_run: list[str]
    """The argv that starts the run's unit (the guest launcher runs it)."""
    jail: Jail | None
    """nsjail mode: the jail's config and the outside uid it maps to; None without a jail, and
    None when `jail_problems` is not empty (such a jail is never launched)."""
    outside_uid: int | None
    """nsjail mode: the jail user's id outside (recorded on the run); None without a jail."""
    jail_problems: list[str]
    """Weaknesses check_jail_config found in the rendered jail config; [] when sound or no jail.
    Non-empty means the launch must be refused."""


class SandboxRenderer(Protocol):
    """What the run lifecycle needs from a sandbox mode. Every method is pure: the same policy
    and layout always give the same text, and nothing touches a process, file or socket."""

    @property
    def mode(self) -> str:
        """The `sandbox.mode` setting this renderer serves."""
        ...

    @property
    def needs_nsjail(self) -> bool:
        """Whether a run needs vmsbx's nsjail installed in the guest (and user namespaces)."""
        ...

    def unit_file(self, policy: SandboxSettings, layout: RunLayout) -> str:
        """The run's unit as a file, for `systemd-analyze security --offline=true` scoring."""
        ...

    def unit_properties(self, policy: SandboxSettings, layout: RunLayout) -> list[str]:
        """The run's unit properties (checked against the guest's systemd version)."""
        ...

    def score_threshold(self, policy: SandboxSettings) -> float:
        """The highest exposure score the policy lets this mode's unit have."""
        ...

    def workdir(self, layout: RunLayout, facts: Mapping[str, str], stable: str) -> str:
        """Where the run sees its workspace on this guest: `stable` (vmsbx.sandbox.workdir)
        where the mode can put it there, else the mode's own per-run path."""
        ...

    def launch(
        self, policy: SandboxSettings, layout: RunLayout, facts: Mapping[str, str], workdir: str
    ) -> SandboxLaunch:
        """The sandbox part of the launch request. `facts`: the guest's facts ("arch",
        "python"); `workdir`: where the run sees its workspace (vmsbx.sandbox.workdir).
        Reports a weak jail config in `jail_problems`, never by raising."""
        ...


IDMAPPED_STATE_SINCE = 256


@dataclass(frozen=True)
class SystemdRenderer:
    """systemd mode: the run is a hardened transient unit with a fresh DynamicUser."""

    mode: str = "systemd"
    needs_nsjail: bool = False

    def unit_file(self, policy: SandboxSettings, layout: RunLayout) -> str:
        return render_unit_file(policy, layout)

    def unit_properties(self, policy: SandboxSettings, layout: RunLayout) -> list[str]:
        return render_unit_properties(policy, layout)

    def score_threshold(self, policy: SandboxSettings) -> float:
        return policy.score_threshold

    def workdir(self, layout: RunLayout, facts: Mapping[str, str], stable: str) -> str:
        # systemd 256 and later hand a DynamicUser= its StateDirectory= as an idmapped mount
        # (on disk the folder is nobody's): a second bind of that folder shows it as nobody's,
        # so the run could not write its own workspace (seen on trixie's 257). There the run
        # keeps systemd's per-run path; an unknown version is taken to be new.
        head = str(facts.get("systemd_version", "")).split(".", maxsplit=1)[0]
        if head.isdigit() and int(head) < IDMAPPED_STATE_SINCE:
            return stable
        return layout.workspace

    def launch(
        self, policy: SandboxSettings, layout: RunLayout, facts: Mapping[str, str], workdir: str
    ) -> SandboxLaunch:
        bound = None if workdir == layout.workspace else workdir
        argv = render_systemd_run_argv(policy, layout, bound)
        return SandboxLaunch(systemd_run=argv, jail=None, outside_uid=None, jail_problems=[])


@dataclass(frozen=True)
class NsjailRenderer:
    """nsjail mode: a plainer outer unit runs nsjail, which jails the run."""

    mode: str = "nsjail"
    needs_nsjail: bool = True

    def unit_file(self, policy: SandboxSettings, layout: RunLayout) -> str:
        return render_nsjail_unit_file(policy, layout, config_path=nsjail_config_path(layout))

    def unit_properties(self, policy: SandboxSettings, layout: RunLayout) -> list[str]:
        return render_nsjail_unit_properties(policy, layout)

    def score_threshold(self, policy: SandboxSettings) -> float:
        # The outer unit must allow namespaces and mounts; the jail is checked on its own.
        return policy.nsjail_score_threshold

    def workdir(self, layout: RunLayout, facts: Mapping[str, str], stable: str) -> str:
        return stable  # the jail builds its own mount tree: the workspace goes where it is told

    def launch(
        self, policy: SandboxSettings, layout: RunLayout, facts: Mapping[str, str], workdir: str
    ) -> SandboxLaunch:
        outside_uid = outside_uid_for(layout.run_id)
        config = render_nsjail_config(
            policy,
            layout,
            outside_uid=outside_uid,
            arch=facts.get("arch", ""),
            python=facts.get("python", ""),
            workdir=workdir,
        )
        problems = check_jail_config(config, workdir=workdir)
        argv = render_nsjail_systemd_run_argv(policy, layout, config_path=nsjail_config_path(layout))
        # Jail() refuses an oversized config; a weak one must be refused for its problems first.
        jail = None if problems else Jail(config=config, outside_uid=outside_uid)
        return SandboxLaunch(systemd_run=argv, jail=jail, outside_uid=outside_uid, jail_problems=problems)


_RENDERERS: dict[str, SandboxRenderer] = {r.mode: r for r in (SystemdRenderer(), NsjailRenderer())}


def renderer_for(mode: str) -> SandboxRenderer:
    """The renderer of sandbox mode `mode`. Raises ConfigError for a mode vmsbx does not know."""
    try:
        return _RENDERERS[mode]
    except KeyError:
        known = ", ".join(sorted(_RENDERERS))
        raise ConfigError(
            f"unknown sandbox mode {mode!r}: vmsbx knows {known}",
            hint=f"set sandbox.mode to one of {known} (e.g. `--sandbox systemd`)",
        ) from None
