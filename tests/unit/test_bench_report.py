"""The benchmark's pure half: statistics, ratios against targets, and the results files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import report


def _figure(key: str) -> report.Figure:
    return next(f for f in report.FIGURES if f.key == key)


def test_every_figure_of_the_issue_has_a_target() -> None:
    keys = [f.key for f in report.FIGURES]
    assert keys == [
        "cli_start", "warm_up", "run_overhead", "run_floor", "nsjail_run", "first_sync",
        "resync_one", "concurrent_runs", "changes_back", "log_pull", "cold_up", "peak_rss",
    ]  # fmt: skip
    assert all(f.target is not None or f.limit_mb is not None for f in report.FIGURES)


def test_summary_is_median_min_max() -> None:
    stat = report.summarize([3.0, 1.0, 2.0, 10.0, 4.0])
    assert (stat.median, stat.low, stat.high, stat.n) == (3.0, 1.0, 10.0, 5)


def test_ratio_of_medians_decides_the_target() -> None:
    row = report.evaluate(_figure("run_overhead"), report.Measured([1.0, 1.2, 0.9], [1.0, 1.1, 1.2]))
    assert row.ratio is not None and abs(row.ratio - 1.0 / 1.1) < 1e-9
    assert row.met is True
    slow = report.evaluate(_figure("run_overhead"), report.Measured([2.0], [1.0]))
    assert slow.ratio == 2.0 and slow.met is False


def test_memory_is_judged_by_its_highest_sample() -> None:
    assert report.evaluate(_figure("peak_rss"), report.Measured([80.0, 151.0])).met is False
    assert report.evaluate(_figure("peak_rss"), report.Measured([80.0, 120.0])).met is True


def test_a_figure_without_samples_is_shown_not_judged() -> None:
    row = report.evaluate(_figure("cold_up"), report.Measured(error="boom"))
    assert row.ratio is None and row.met is None
    text = report.render_markdown({"acceleration": "tcg"}, [row], {})
    assert "Error: boom" in text and "| cold `up`, image cached |" in text


def test_results_files_carry_meta_rows_and_curves() -> None:
    rows = [report.evaluate(f, report.Measured([2.0], [1.0])) for f in report.FIGURES]
    meta = {"acceleration": "tcg", "cpus": 2}
    extra = {"Scaling: concurrent runs": ["1 run: 1.0 s"]}
    data = json.loads(report.render_json(meta, rows, extra))
    assert data["meta"] == meta and set(data["figures"]) == {f.key for f in report.FIGURES}
    assert data["figures"]["cli_start"]["ratio"] == 2.0 and data["figures"]["cli_start"]["met"] is False
    text = report.render_markdown(meta, rows, extra)
    assert "**acceleration**: tcg" in text and "2.00x" in text and "- 1 run: 1.0 s" in text
