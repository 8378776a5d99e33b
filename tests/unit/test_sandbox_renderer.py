"""The per-mode renderer interface (vmsbx.sandbox.renderer) gives exactly what the direct
render functions give, so the goldens that pin those (test_sandbox_render, test_nsjail_render,
the launch requests of test_contract) pin the interface too; and the run lifecycle asks the
interface, never the mode."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from launch_samples import LAYOUT, WORKDIR, sample_request

from vmsbx.config.models import SandboxSettings, Settings
from vmsbx.errors import ConfigError
from vmsbx.runs import lifecycle
from vmsbx.runs.guestctl import LaunchFailed
from vmsbx.runs.record import RunRecord
from vmsbx.sandbox.nsjail import (
    check_jail_config,
    nsjail_config_path,
    outside_uid_for,
    render_nsjail_config,
    render_nsjail_systemd_run_argv,
    render_nsjail_unit_file,
    render_nsjail_unit_properties,
)
from vmsbx.sandbox.renderer import NsjailRenderer, SandboxRenderer, SystemdRenderer, renderer_for
from vmsbx.sandbox.systemd import render_systemd_run_argv, render_unit_file, render_unit_properties

FACTS = {"arch": "x86_64", "python": "python3.11"}
SYSTEMD = SandboxSettings()
NSJAIL = SandboxSettings(mode="nsjail")
MODES = ("systemd", "nsjail")


@pytest.mark.parametrize("mode", MODES)
def test_renderer_for_serves_its_mode(mode: str) -> None:
    renderer: SandboxRenderer = renderer_for(mode)
    assert renderer.mode == mode
    assert renderer.needs_nsjail == (mode == "nsjail")


def test_renderer_for_refuses_an_unknown_mode_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        renderer_for("docker")
    assert "'docker'" in caught.value.message
    assert "nsjail" in caught.value.message and "systemd" in caught.value.message


def test_systemd_renderer_gives_the_direct_renderings() -> None:
    renderer = renderer_for("systemd")
    assert isinstance(renderer, SystemdRenderer)
    assert renderer.unit_file(SYSTEMD, LAYOUT) == render_unit_file(SYSTEMD, LAYOUT)
    assert renderer.unit_properties(SYSTEMD, LAYOUT) == render_unit_properties(SYSTEMD, LAYOUT)
    tight = SandboxSettings(score_threshold=0.5, nsjail_score_threshold=3.0)
    assert renderer.score_threshold(tight) == 0.5


def test_nsjail_renderer_gives_the_direct_renderings() -> None:
    renderer = renderer_for("nsjail")
    assert isinstance(renderer, NsjailRenderer)
    path = nsjail_config_path(LAYOUT)
    assert renderer.unit_file(NSJAIL, LAYOUT) == render_nsjail_unit_file(NSJAIL, LAYOUT, config_path=path)
    assert renderer.unit_properties(NSJAIL, LAYOUT) == render_nsjail_unit_properties(NSJAIL, LAYOUT)
    tight = SandboxSettings(mode="nsjail", score_threshold=0.5, nsjail_score_threshold=3.0)
    assert renderer.score_threshold(tight) == 3.0


def test_systemd_launch_is_the_golden_argv_and_has_no_jail() -> None:
    launch = renderer_for("systemd").launch(SYSTEMD, LAYOUT, FACTS, WORKDIR)
    assert launch.systemd_run == render_systemd_run_argv(SYSTEMD, LAYOUT, WORKDIR)
    assert launch.systemd_run == sample_request("systemd").systemd_run  # launch_request_systemd.json
    assert launch.jail is None and launch.outside_uid is None and launch.jail_problems == []


def test_nsjail_launch_carries_the_jail_with_its_config_and_outside_uid() -> None:
    launch = renderer_for("nsjail").launch(NSJAIL, LAYOUT, FACTS, WORKDIR)
    uid = outside_uid_for(LAYOUT.run_id)
    config = render_nsjail_config(
        NSJAIL, LAYOUT, outside_uid=uid, arch="x86_64", python="python3.11", workdir=WORKDIR
    )
    assert launch.systemd_run == render_nsjail_systemd_run_argv(
        NSJAIL, LAYOUT, config_path=nsjail_config_path(LAYOUT)
    )
    assert launch.systemd_run == sample_request("nsjail").systemd_run  # launch_request_nsjail.json
    assert launch.jail is not None
    assert launch.jail.config == config and launch.jail.outside_uid == uid == launch.outside_uid
    # Checked against the run's own workdir: the default (/workspace) would call its mount wrong.
    assert check_jail_config(launch.jail.config, workdir=WORKDIR) == [] == launch.jail_problems


def test_nsjail_launch_uses_the_guest_facts() -> None:
    launch = renderer_for("nsjail").launch(NSJAIL, LAYOUT, {"arch": "aarch64", "python": ""}, WORKDIR)
    uid = outside_uid_for(LAYOUT.run_id)
    assert launch.jail is not None
    assert launch.jail.config == render_nsjail_config(
        NSJAIL, LAYOUT, outside_uid=uid, arch="aarch64", workdir=WORKDIR
    )


def test_a_weak_jail_is_reported_not_raised_and_carries_no_jail(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmsbx.sandbox import renderer

    monkeypatch.setattr(renderer, "check_jail_config", lambda config, *, workdir: ["mount /: read-write"])
    launch = renderer_for("nsjail").launch(NSJAIL, LAYOUT, FACTS, WORKDIR)
    assert launch.jail_problems == ["mount /: read-write"]
    assert launch.jail is None and launch.outside_uid == outside_uid_for(LAYOUT.run_id)


def _record(policy: SandboxSettings) -> RunRecord:
    return RunRecord(
        id=LAYOUT.run_id, vm="default", sandbox=policy.mode, command=("true",), tty=False,
        policy=policy, unit=LAYOUT.unit, started_at="2026-12-02T00:00:00.000+00:00", project="/p",
    )  # fmt: skip


def test_the_lifecycle_records_the_jail_and_launches_it() -> None:
    record = _record(NSJAIL)
    argv, jail = lifecycle._launch_sandbox(Settings(sandbox=NSJAIL), LAYOUT, record, dict(FACTS), WORKDIR)
    assert argv == sample_request("nsjail").systemd_run and jail is not None
    assert record.outside_uid == jail.outside_uid == outside_uid_for(LAYOUT.run_id)
    assert record.jail_problems == []


def test_the_lifecycle_launches_systemd_mode_without_a_jail() -> None:
    record = _record(SYSTEMD)
    argv, jail = lifecycle._launch_sandbox(Settings(sandbox=SYSTEMD), LAYOUT, record, dict(FACTS), WORKDIR)
    assert argv == sample_request("systemd").systemd_run and jail is None
    assert record.outside_uid is None and record.jail_problems == []


def test_the_lifecycle_refuses_a_weak_jail_and_records_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmsbx.sandbox import renderer

    monkeypatch.setattr(renderer, "check_jail_config", lambda config, *, workdir: ["a", "b"])
    record = _record(NSJAIL)
    with pytest.raises(LaunchFailed) as caught:
        lifecycle._launch_sandbox(Settings(sandbox=NSJAIL), LAYOUT, record, dict(FACTS), WORKDIR)
    assert caught.value.message == "the rendered nsjail config is weaker than vmsbx allows: a; b"
    assert record.jail_problems == ["a", "b"] and record.outside_uid == outside_uid_for(LAYOUT.run_id)


def _mode_comparisons(source: str) -> list[str]:
    """Every comparison in `source` against a sandbox mode's name, as source text."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in MODES for o in operands):
                found.append(ast.get_source_segment(source, node) or ast.dump(node))
    return found


def test_the_comparison_finder_sees_a_mode_branch() -> None:
    assert _mode_comparisons('if policy.mode == "nsjail":\n    pass\n') == ['policy.mode == "nsjail"']
    assert _mode_comparisons('x = 1 if "nsjail" != mode else 2\n') == ['"nsjail" != mode']


def test_the_run_lifecycle_does_not_branch_on_the_sandbox_mode() -> None:
    source = Path(lifecycle.__file__).read_text(encoding="utf-8")
    assert _mode_comparisons(source) == [], "ask vmsbx.sandbox.renderer.renderer_for(mode) instead"


@pytest.mark.parametrize(
    ("version", "stable_path"),
    [("252", True), ("255.4-1ubuntu8", True), ("256", False), ("257.13-1~deb13u1", False), ("", False)],
)
def test_systemd_mode_takes_the_stable_path_only_where_state_folders_are_not_idmapped(
    version: str, stable_path: bool
) -> None:
    # systemd 256+ mounts a DynamicUser='s StateDirectory= idmapped: a second bind would show
    # it as nobody's (read-only to the run); there, and for an unknown version, the run keeps
    # systemd's own per-run path and the unit gets no extra bind.
    layout = LAYOUT
    systemd = renderer_for("systemd")
    workdir = systemd.workdir(layout, {"systemd_version": version}, "/Users/alice/app")
    assert workdir == ("/Users/alice/app" if stable_path else layout.workspace)
    argv = systemd.launch(SandboxSettings(), layout, {"systemd_version": version}, workdir).systemd_run
    binds = [arg for arg in argv if arg.startswith("BindPaths=")]
    assert binds and (binds[0].endswith(":/Users/alice/app") is stable_path)
    assert renderer_for("nsjail").workdir(layout, {"systemd_version": version}, "/Users/alice/app") == (
        "/Users/alice/app"
    )
