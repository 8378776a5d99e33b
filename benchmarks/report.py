"""Pure half of the benchmark: the figures and their targets, statistics, and the results files.

Nothing here runs a process; `bench.py` measures and hands the samples over.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Figure:
    """One row of the issue's table: what vmsbx does, what it is compared with, the target ratio."""

    key: str
    title: str
    vmsbx: str
    baseline: str
    target: float | None  # ratio vmsbx/baseline; None: an absolute target (see `limit_mb`)
    limit_mb: float | None = None


FIGURES: tuple[Figure, ...] = (
    Figure("cli_start", "CLI start", "vmsbx --help", 'python3 -c "import click"', 1.5),
    Figure("warm_up", "warm `up` (VM running, provisioned)", "vmsbx up", "ssh … true (fresh OpenSSH)", 1.5),
    Figure(
        "run_overhead",
        "run overhead",
        "vmsbx run -- true",
        "ssh … systemd-run --wait --pipe --quiet <same properties> -- true (fresh connection)",
        1.0,
    ),
    Figure(
        "run_floor",
        "run overhead, floor",
        "vmsbx run -- true",
        "the same systemd-run over an open ControlMaster connection",
        1.5,
    ),
    Figure(
        "nsjail_run",
        "nsjail run overhead",
        "vmsbx run --sandbox nsjail -- true",
        "ssh … systemd-run --wait --pipe <same properties> -- nsjail --config <same config> -- true",
        1.3,
    ),
    Figure("first_sync", "first sync", "vmsbx run -- true on a new project", "tar c | ssh … tar x", 1.3),
    Figure(
        "resync_one",
        "re-sync, one file changed",
        "vmsbx run -- true",
        "rsync -a -e ssh (one file changed)",
        1.5,
    ),
    Figure(
        "concurrent_runs",
        "8 concurrent runs, per run",
        "8 of vmsbx run -- true at once: wall time / 8",
        "one vmsbx run -- true alone",
        1.5,
    ),
    Figure(
        "changes_back",
        "changes back (1,000 changed files)",
        "vmsbx diff + apply",
        "rsync -a back over ssh",
        2.0,
    ),
    Figure(
        "log_pull",
        "log pull (100,000 lines)",
        "vmsbx logs RUN --json > f",
        "ssh … journalctl -o json _SYSTEMD_INVOCATION_ID=… > f",
        1.3,
    ),
    Figure(
        "cold_up", "cold `up`, image cached", "vmsbx up (VM stopped)", "same qemu argv + ssh true loop", 1.15
    ),
    Figure("peak_rss", "vmsbx peak memory during a run", "max RSS of `vmsbx run`", "—", None, limit_mb=150.0),
)


@dataclass(frozen=True)
class Stat:
    """Median, min and max of samples (seconds, or MB for memory)."""

    median: float
    low: float
    high: float
    n: int


def summarize(samples: list[float]) -> Stat:
    if not samples:
        raise ValueError("no samples")
    return Stat(statistics.median(samples), min(samples), max(samples), len(samples))


@dataclass
class Measured:
    """Samples of one figure: vmsbx's and the baseline's, taken interleaved in the same run."""

    vmsbx: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    note: str = ""
    error: str = ""


@dataclass(frozen=True)
class Row:
    figure: Figure
    vmsbx: Stat | None
    baseline: Stat | None
    ratio: float | None
    met: bool | None
    note: str
    error: str


def evaluate(figure: Figure, measured: Measured) -> Row:
    """The table row: the ratio of medians and whether the target holds."""
    mine = summarize(measured.vmsbx) if measured.vmsbx else None
    base = summarize(measured.baseline) if measured.baseline else None
    ratio: float | None = None
    met: bool | None = None
    if figure.limit_mb is not None and mine is not None:
        met = mine.high <= figure.limit_mb
    elif mine is not None and base is not None and base.median > 0:
        ratio = mine.median / base.median
        met = figure.target is not None and ratio <= figure.target
    return Row(figure, mine, base, ratio, met, measured.note, measured.error)


def _fmt(stat: Stat | None, unit: str) -> str:
    if stat is None:
        return "—"
    if unit == "MB":
        return f"{stat.median:.0f} MB (max {stat.high:.0f})"
    return f"{stat.median:.3f} s ({stat.low:.3f}-{stat.high:.3f})"


def render_markdown(meta: dict[str, object], rows: list[Row], extra: dict[str, object]) -> str:
    """results.md: the machine, the table, the curves and the notes."""
    lines = ["# vmsbx benchmark results", ""]
    lines += [f"- **{key}**: {value}" for key, value in meta.items()]
    lines += [
        "",
        "Times are medians of the samples with (min-max); figures are the ratio of medians "
        "vmsbx / baseline, measured interleaved in the same invocation. Only ratios are targets.",
        "",
        "| figure | vmsbx | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        unit = "MB" if row.figure.limit_mb is not None else "s"
        target = f"≤ {row.figure.limit_mb:.0f} MB" if row.figure.limit_mb else f"≤ {row.figure.target}x"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "—"
        met = {True: "yes", False: "**no**", None: "—"}[row.met]
        lines.append(
            f"| {row.figure.title} | `{row.figure.vmsbx}`: {_fmt(row.vmsbx, unit)} | "
            f"`{row.figure.baseline}`: {_fmt(row.baseline, unit)} | {ratio} | {target} | {met} |"
        )
    notes = [(row.figure.title, row.note, row.error) for row in rows if row.note or row.error]
    if notes:
        lines += ["", "## Notes per figure", ""]
        for title, note, error in notes:
            text = " ".join(part for part in (note, f"Error: {error}" if error else "") if part)
            lines.append(f"- **{title}**: {text}")
    for name, value in extra.items():
        lines += ["", f"## {name}", ""]
        if isinstance(value, list):
            lines += [f"- {item}" for item in value]
        else:
            lines.append(str(value))
    return "\n".join(lines) + "\n"


def render_json(meta: dict[str, object], rows: list[Row], extra: dict[str, object]) -> str:
    figures = {}
    for row in rows:
        figures[row.figure.key] = {
            "title": row.figure.title,
            "vmsbx_command": row.figure.vmsbx,
            "baseline_command": row.figure.baseline,
            "vmsbx": asdict(row.vmsbx) if row.vmsbx else None,
            "baseline": asdict(row.baseline) if row.baseline else None,
            "ratio": row.ratio,
            "target": row.figure.target,
            "limit_mb": row.figure.limit_mb,
            "met": row.met,
            "note": row.note,
            "error": row.error,
        }
    return json.dumps({"meta": meta, "figures": figures, **extra}, indent=2) + "\n"
