"""What `vmsbx top` shows: every VM and its runs at one instant, as typed rows.

`build_run_row` is pure (record + sample + artifacts → row); `collect` does the reading: VM
states from the providers, samples from each VM's host agent (its sampler), the rest from disk.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.observe import fmt
from vmsbx.observe.artifacts import clean, last_tool_call, read_network
from vmsbx.observe.samples import SAMPLES_FILE, Sample, last_sample
from vmsbx.runs.record import RunRecord

LIVE_STATES = ("starting", "running")
# Ended runs shown per VM below the live ones, newest first.
RECENT_ENDED = 3


class RunRow(BaseModel):
    """One run as `top` shows it. None means unknown (shown as "—")."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    vm: str
    state: str
    elapsed: float | None = Field(description="Seconds since start (live) or the run's duration.")
    cpu_pct: float | None = Field(default=None, description="% of one core over the last second.")
    mem: int | None = Field(default=None, description="Memory now, bytes.")
    mem_peak: int | None = None
    mem_max: int | None = Field(default=None, description="Memory limit, bytes.")
    tasks: int | None = None
    tasks_max: int | None = None
    net_allowed: int | None = Field(default=None, description="Egress allowed (None: no network.jsonl).")
    net_denied: int | None = None
    exposure: float | None = None
    io_caps: str = Field(default="", description="The run's disk I/O caps (fmt.io_caps).")
    last_tool: str | None = Field(default=None, description="Latest tool call, e.g. 'Bash: npm test'.")
    command: str = ""


class VMRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    provider: str
    state: str
    agent: bool = Field(description="Whether its host agent answers.")
    runs: list[RunRow]


class Snapshot(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    taken_at: str
    vms: list[VMRow]

    def rows(self) -> list[RunRow]:
        return [run for vm in self.vms for run in vm.runs]


def build_run_row(
    record: RunRecord,
    sample: Sample | None,
    *,
    now: float,
    last_tool: str | None = None,
    net: tuple[int, int] | None = None,
) -> RunRow:
    """Pure: the row of one run. A live run's figures come from its newest sample; an ended
    run's from its record (systemd's peaks)."""
    live = record.state in LIVE_STATES
    policy = record.policy
    started = dt.datetime.fromisoformat(record.started_at).timestamp()
    elapsed = max(0.0, now - started) if live else record.duration
    row: dict[str, object] = {}
    if live and sample is not None:
        row = {
            "cpu_pct": sample.cpu_pct, "mem": sample.mem, "mem_peak": sample.mem_peak,
            "mem_max": sample.mem_max, "tasks": sample.tasks, "tasks_max": sample.tasks_max,
        }  # fmt: skip
    elif not live:
        row = {"mem_peak": record.resources.memory_peak}
    # The policy's limits stand in when the cgroup gave none (ended runs, first instants).
    if row.get("mem_max") is None:
        row["mem_max"] = int(record.policy.memory_max)
    if row.get("tasks_max") is None:
        row["tasks_max"] = int(record.policy.tasks_max)
    return RunRow(
        id=record.id,
        vm=record.vm,
        state=record.state,
        elapsed=None if elapsed is None else round(elapsed, 1),
        net_allowed=None if net is None else net[0],
        net_denied=None if net is None else net[1],
        exposure=record.exposure,
        io_caps=fmt.io_caps(
            policy.io_read_bps, policy.io_write_bps, policy.io_read_iops, policy.io_write_iops
        ),
        last_tool=last_tool,
        command=clean(" ".join(record.command), 120),
        **row,  # type: ignore[arg-type]
    )


def pick_runs(records: list[RunRecord], vm: str) -> list[RunRecord]:
    """Live runs of `vm`, then its few most recently started ended ones; newest first."""
    mine = [r for r in records if r.vm == vm]
    live = [r for r in mine if r.state in LIVE_STATES][::-1]
    ended = [r for r in mine if r.state not in LIVE_STATES][-RECENT_ENDED:][::-1]
    return live + ended


def collect() -> Snapshot:
    """Read every VM and run now (one agent request per running VM, no guest command)."""
    from vmsbx.agent.client import AgentClient
    from vmsbx.config.models import VMSettings
    from vmsbx.errors import VmsbxError
    from vmsbx.providers import existing_provider_name, get_provider
    from vmsbx.providers.qemu import list_vm_names
    from vmsbx.runs import record as records

    all_records = records.all_runs()
    now = time.time()
    vms = []
    for vm in list_vm_names():
        provider_name = existing_provider_name(vm) or "unknown"
        try:
            state = get_provider(provider_name, VMSettings()).state(vm).value
        except VmsbxError:
            state = "broken"
        agent_samples: dict[str, dict[str, object]] | None = None
        if state == "running":
            try:
                agent_samples = AgentClient(vm).samples()
            except (VmsbxError, OSError, ValueError):
                agent_samples = None
        rows = []
        for record in pick_runs(all_records, vm):
            rows.append(_row(record, agent_samples, now))
        vms.append(
            VMRow(name=vm, provider=provider_name, state=state, agent=agent_samples is not None, runs=rows)
        )
    return Snapshot(taken_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), vms=vms)


def _row(record: RunRecord, agent_samples: dict[str, dict[str, object]] | None, now: float) -> RunRow:
    from vmsbx.runs.record import run_dir

    directory: Path = run_dir(record.id)
    sample = None
    if record.state in LIVE_STATES:
        raw = (agent_samples or {}).get(record.id)
        try:
            sample = Sample.model_validate(raw) if raw is not None else last_sample(directory / SAMPLES_FILE)
        except ValueError:
            sample = None
    tool = last_tool_call(directory)
    network = read_network(directory)
    return build_run_row(
        record,
        sample,
        now=now,
        last_tool=tool.label if tool else None,
        net=None if network is None else (network.allowed, network.denied),
    )
