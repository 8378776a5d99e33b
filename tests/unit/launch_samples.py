"""A launch request per sandbox mode, rendered by the host's real renderers (shared by the
golden and the loosening tests)."""

from __future__ import annotations

from vmsbx.config.models import SandboxSettings
from vmsbx.contract import BRIDGES, Jail, LaunchRequest, RunSpec, Sizes
from vmsbx.sandbox.layout import RunLayout
from vmsbx.sandbox.nsjail import (
    nsjail_config_path,
    render_nsjail_config,
    render_nsjail_systemd_run_argv,
)
from vmsbx.sandbox.systemd import render_systemd_run_argv

LAYOUT = RunLayout(run_id="0123456789ab")
PROJECT = "0123456789abcdef"
OUTSIDE_UID = 60123
WORKDIR = "/Users/alice/app"  # the run's stable workspace path (vmsbx.sandbox.workdir)


def sample_request(mode: str, *, bridges: bool = True) -> LaunchRequest:
    policy = SandboxSettings(mode=mode)  # type: ignore[arg-type]
    jail = None
    if mode == "nsjail":
        argv = render_nsjail_systemd_run_argv(policy, LAYOUT, config_path=nsjail_config_path(LAYOUT))
        config = render_nsjail_config(policy, LAYOUT, outside_uid=OUTSIDE_UID, arch="x86_64", workdir=WORKDIR)
        jail = Jail(config=config, outside_uid=OUTSIDE_UID)
    else:
        argv = render_systemd_run_argv(policy, LAYOUT, WORKDIR)
    ports = {"relay": 40001, "proxy": 40002} if bridges else {}
    return LaunchRequest(
        run_id=LAYOUT.run_id,
        project=PROJECT,
        sizes=Sizes(tmp=policy.tmp_size, workspace=policy.workspace_size),
        systemd_run=argv,
        jail=jail,
        bridges=ports,
        spec=RunSpec(
            argv=["sh", "-c", "echo hi"],
            env={"LANG": "C.UTF-8"},
            tty=False,
            cols=80,
            rows=24,
            cwd=WORKDIR,
            home=LAYOUT.home,
            bridges={name: BRIDGES[name] for name in ports},
            home_files={},
        ),
    )
