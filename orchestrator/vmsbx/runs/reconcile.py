"""Runs whose VM went away under them: record that they ended abnormally.

A run lives in the guest; if the VM stops (killed, crashed, shut down) while it goes, nobody is
left to collect its end. Whoever next notices the VM down (`vmsbx status`, `vmsbx up`) closes
such records as `lost`, so `vmsbx runs` never shows a dead run as running.
"""

from __future__ import annotations

from vmsbx.paths import vm_dir
from vmsbx.runs import record as records
from vmsbx.runs.outcome import SANDBOX_FAILED


def died_without_shutdown(vm: str) -> bool:
    """The VM's boot facts are still there although QEMU is gone: it did not shut down cleanly.

    (A clean stop removes runtime.json; callers have already seen the VM is not running.)
    """
    return (vm_dir(vm) / "runtime.json").is_file()


def close_lost_runs(vm: str, reason: str) -> list[str]:
    """Mark every run of `vm` still recorded as starting or running as lost; their ids."""
    closed = []
    for run in records.all_runs():
        if run.vm == vm and run.state in ("starting", "running"):
            run.state, run.exit_code, run.reason = "lost", SANDBOX_FAILED, reason
            run.ended_at = records.now()
            records.save(run)
            closed.append(run.id)
    return closed
