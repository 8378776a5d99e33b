"""Where one run lives in the guest: the host's names for the contract's facts.

The facts themselves (paths, ids, unit and bridge names) are defined once, in vmsbx.contract,
which the guest launcher imports too; see its docstring for the layout.
"""

from __future__ import annotations

import secrets

from vmsbx.contract import BRIDGES, GUEST_LIB, PROJECTS_ROOT, RUN_ID, RUNS_ROOT, RunPaths

__all__ = ["BRIDGES", "GUEST_LIB", "PROJECTS_ROOT", "RUNS_ROOT", "RunLayout", "is_run_id", "new_run_id"]

# Names and paths of one run, derived from its id alone (RunLayout(run_id=...) as before).
RunLayout = RunPaths


def new_run_id() -> str:
    return secrets.token_hex(6)


def is_run_id(value: str) -> bool:
    return bool(RUN_ID.fullmatch(value))
