"""`scripts/bench --smoke` against the session guest: the only CI use of the benchmark.

It keeps the script from rotting: every figure must be measured (no errors), with positive
times and computed ratios. Targets are not enforced here (TCG on a shared machine is noisy).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from vmcli import Cli

# The cold-boot figures stop and start the session's guest.
pytestmark = [pytest.mark.vm, pytest.mark.restarts_vm]

ROOT = Path(__file__).resolve().parents[2]


# Every figure once, two cold boots included: 13-15 minutes on a loaded TCG machine.
@pytest.mark.timeout(3600)
def test_bench_smoke_writes_complete_sane_results(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "bench"), "--smoke", "--out", str(out)],
        env=cli.env, cwd=tmp_path, capture_output=True, timeout=3600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["acceleration"] in ("tcg", "kvm")
    assert data["meta"]["cpus"] >= 1 and data["meta"]["load_average_at_start"]
    figures = data["figures"]
    assert set(figures) == {
        "cli_start", "warm_up", "run_overhead", "run_floor", "nsjail_run", "first_sync",
        "resync_one", "concurrent_runs", "changes_back", "log_pull", "cold_up", "peak_rss",
    }  # fmt: skip
    for key, figure in figures.items():
        assert not figure["error"], f"{key}: {figure['error']}"
        assert figure["vmsbx"]["median"] > 0, key
        if key == "peak_rss":
            assert 10 < figure["vmsbx"]["high"] < 2000  # MB: a real Python process, not a stray unit
            continue
        assert figure["baseline"]["median"] > 0, key
        assert figure["ratio"] == pytest.approx(figure["vmsbx"]["median"] / figure["baseline"]["median"])
        assert figure["met"] in (True, False)
    text = (out / "results.md").read_text()
    assert "| figure | vmsbx | baseline | ratio | target | met |" in text
    assert text.count("\n| ") >= 1 + len(figures)
