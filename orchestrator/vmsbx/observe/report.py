"""`vmsbx show`: one run's report, as terminal text or a self-contained HTML page.

`load` reads the run's folder; `render_text` and `render_html` are pure. Guest-derived text is
cleaned by the artifact readers (control sequences stripped) and, in HTML, escaped on output.
The page loads nothing and runs no script: its content security policy forbids both, allowing
only its one inline style block by hash. The chart is SVG drawn here, so it needs no script.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vmsbx.observe import fmt
from vmsbx.observe.artifacts import (
    ChangedFile,
    NetworkSummary,
    ToolCall,
    clean,
    read_changeset,
    read_network,
    read_tool_calls,
)
from vmsbx.observe.samples import SAMPLES_FILE, Sample, read_samples
from vmsbx.runs import commits as commit_reviews
from vmsbx.runs.commits import CommitReview
from vmsbx.runs.record import RunRecord
from vmsbx.sync.diff import show_path


class RunReport(BaseModel):
    """Everything `show` presents about one run. None: the run left no such file."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    record: RunRecord
    samples: list[Sample]
    tool_calls: list[ToolCall] | None = None
    network: NetworkSummary | None = None
    changes: list[ChangedFile] | None = None
    commits: CommitReview | None = None

    @property
    def memory_peak(self) -> int | None:
        peaks = [v for s in self.samples for v in (s.mem_peak, s.mem) if v is not None]
        recorded = self.record.resources.memory_peak
        return max([*peaks, *([recorded] if recorded is not None else [])], default=None)

    @property
    def tasks_peak(self) -> int | None:
        peaks = [v for s in self.samples for v in (s.tasks_peak, s.tasks) if v is not None]
        recorded = self.record.resources.tasks_peak
        return max([*peaks, *([recorded] if recorded is not None else [])], default=None)

    @property
    def cpu_peak(self) -> float | None:
        return max((s.cpu_pct for s in self.samples if s.cpu_pct is not None), default=None)


def load(run_dir: Path, record: RunRecord) -> RunReport:
    return RunReport(
        record=record,
        samples=read_samples(run_dir / SAMPLES_FILE),
        tool_calls=read_tool_calls(run_dir),
        network=read_network(run_dir),
        changes=read_changeset(run_dir),
        commits=commit_reviews.load(run_dir / "changes" / commit_reviews.COMMITS_FILE),
    )


def summary_fields(report: RunReport) -> list[tuple[str, str]]:
    """The summary as (label, value) pairs, shared by both renderers."""
    r = report.record
    cpu_seconds = None if r.resources.cpu_usage_usec is None else r.resources.cpu_usage_usec / 1e6
    exit_status = fmt.DASH if r.exit_code is None else str(r.exit_code)
    policy = r.policy
    notes = [("guest notes", clean("; ".join(r.guest_notes), 1000))] if r.guest_notes else []
    return [
        ("run", r.id),
        ("vm", r.vm),
        ("command", clean(" ".join(r.command), 500)),
        ("state", r.state),
        ("sandbox", r.sandbox),
        (
            "policy",
            f"network={policy.network} memory={fmt.size(int(policy.memory_max))} cpus={policy.cpus:g} "
            f"tasks={policy.tasks_max} timeout={fmt.duration(float(policy.timeout))}",
        ),
        (
            "disk i/o cap",
            fmt.io_caps(policy.io_read_bps, policy.io_write_bps, policy.io_read_iops, policy.io_write_iops),
        ),
        ("exposure score", fmt.number(r.exposure, "{:.1f}")),
        ("started", r.started_at),
        ("duration", fmt.duration(r.duration)),
        ("exit status", exit_status),
        ("reason", clean(r.reason or fmt.DASH, 500)),
        ("memory peak", f"{fmt.size(report.memory_peak)} of {fmt.size(int(policy.memory_max))}"),
        ("tasks peak", f"{fmt.number(report.tasks_peak)} of {policy.tasks_max}"),
        (
            "cpu",
            f"{fmt.number(cpu_seconds, '{:.1f}')} s used, peak {fmt.number(report.cpu_peak, '{:.0f}')} %",
        ),
        ("oom kills", str(r.resources.oom_kills)),
        *notes,
    ]


def render_text(report: RunReport) -> str:
    lines = [f"{label:15} {value}" for label, value in summary_fields(report)]
    lines.append("")
    if report.changes is None:
        lines.append(f"files changed   {fmt.DASH}")
    else:
        lines.append(f"files changed   {len(report.changes)}")
        lines += [f"  {c.change or '?':9} {c.path}" for c in report.changes[:200]]
    lines += _commit_text(report.commits)
    if report.network is None:
        lines.append(f"network         {fmt.DASH}")
    else:
        n = report.network
        lines.append(f"network         {n.allowed} allowed, {n.denied} denied")
        lines += [
            f"  {d.host}{'' if d.port is None else f':{d.port}'}  allowed {d.allowed} denied {d.denied}"
            f"  {fmt.size(d.bytes)}"
            for d in n.destinations[:200]
        ]
    if report.tool_calls is None:
        lines.append(f"tool calls      {fmt.DASH}")
    else:
        lines.append(f"tool calls      {len(report.tool_calls)}")
        lines += [f"  {i:3}. {c.outcome:7} {c.label}" for i, c in enumerate(report.tool_calls, 1)]
    return "\n".join(lines) + "\n"


def _commit_text(commits: CommitReview | None) -> list[str]:
    if commits is None:
        return []
    if commits.error:
        why = clean(commits.error, 300)
        return [f"commits         not inspected: {why} (`vmsbx apply` will not fetch them)"]
    flagged = commits.flagged
    lines = [
        f"commits         {commits.commit_count} new (branch {commits.branch} on apply), "
        f"{len(commits.brings)} path(s) merging brings, {len(flagged)} flagged"
    ]
    lines += [f"  {c.id[:12]} {clean(c.subject)}" for c in commits.commits[:50]]
    lines += [
        f"  flagged   {clean(show_path(p.path), 300)}"
        f"  [{p.classification}] {clean(p.reason)}" + ("  (history only)" if p.change == "history" else "")
        for p in flagged[:200]
    ]
    return lines


def _commit_html(commits: CommitReview | None) -> list[str]:
    if commits is None:
        return []
    parts = ["<h2>Commits</h2>"]
    if commits.error:
        parts.append(f"<p>not inspected: {_e(clean(commits.error, 300))} (apply will not fetch them)</p>")
        return parts
    parts.append(
        f"<p>{commits.commit_count} new on branch <code>{_e(commits.branch)}</code> (fetched on apply); "
        f"merging brings {len(commits.brings)} path(s), {len(commits.flagged)} flagged</p>"
    )
    items = "".join(f"<li><code>{_e(c.id[:12])}</code> {_e(clean(c.subject))}</li>" for c in commits.commits)
    parts.append(f'<ul id="commits">{items}</ul>')
    flagged = "".join(
        f'<li class="error"><code>{_e(clean(p.path, 300))}</code> {_e(p.change)} [{_e(p.classification)}] '
        f"{_e(clean(p.reason))}</li>"
        for p in commits.flagged
    )
    if flagged:
        parts.append(f'<ul id="commit-flagged">{flagged}</ul>')
    return parts


# -- HTML ------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse}td,th{padding:.15em .8em .15em 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:normal}code,.mono{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}
.ok{color:#176f2c}.error{color:#b3261e}.pending{color:#8a6d00}
svg{border:1px solid #ccc;background:#fafafa}.axis{stroke:#999;stroke-width:1}
.cpu{fill:none;stroke:#1f5fbf;stroke-width:2}.mem{fill:none;stroke:#b3261e;stroke-width:2}
.label{font-size:11px;fill:#555}
"""
_CHART_W, _CHART_H, _PAD = 640, 160, 36


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; script-src 'none'; "
        "base-uri 'none'; form-action 'none'"
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def chart_points(values: list[tuple[float, float]], y_max: float) -> str:
    """SVG polyline points for (seconds since start, value) pairs scaled into the chart."""
    if not values:
        return ""
    span = max(values[-1][0], 1e-9)
    top = y_max if y_max > 0 else 1.0
    points = []
    for x, y in values:
        px = _PAD + (x / span) * (_CHART_W - 2 * _PAD) if len(values) > 1 else _PAD
        py = _CHART_H - _PAD / 2 - min(max(y, 0.0), top) / top * (_CHART_H - _PAD)
        points.append(f"{px:.1f},{py:.1f}")
    return " ".join(points)


def _chart(
    chart_id: str, title: str, css: str, values: list[tuple[float, float]], y_max: float, unit: str
) -> str:
    points = chart_points(values, y_max)
    y_axis = _CHART_H - _PAD / 2
    duration = values[-1][0] if values else 0.0
    return (
        f"<figure><figcaption>{_e(title)}</figcaption>"
        f'<svg id="{chart_id}" xmlns="http://www.w3.org/2000/svg" width="{_CHART_W}" height="{_CHART_H}" '
        f'viewBox="0 0 {_CHART_W} {_CHART_H}" role="img" aria-label="{_e(title)}" '
        f'data-samples="{len(values)}">'
        f'<line class="axis" x1="{_PAD}" y1="{_PAD / 2}" x2="{_PAD}" y2="{y_axis}"/>'
        f'<line class="axis" x1="{_PAD}" y1="{y_axis}" x2="{_CHART_W - _PAD}" y2="{y_axis}"/>'
        f'<text class="label" x="2" y="{_PAD / 2 + 4}">{_e(unit)}</text>'
        f'<text class="label" x="{_CHART_W - _PAD}" y="{_CHART_H - 2}">{_e(fmt.duration(duration))}</text>'
        f'<polyline class="{css}" points="{points}"/></svg></figure>'
    )


def render_charts(samples: list[Sample], memory_limit: int | None) -> str:
    if not samples:
        return f"<p>No resource samples were recorded for this run ({fmt.DASH}).</p>"
    start = samples[0].t
    cpu = [(s.t - start, s.cpu_pct) for s in samples if s.cpu_pct is not None]
    mem = [(s.t - start, float(s.mem)) for s in samples if s.mem is not None]
    cpu_top = max([100.0, *(v for _, v in cpu)])
    # Scaled to the run's own use (with headroom), up to its limit: a 4 GiB scale flattens 50 MiB.
    mem_top = max([v for _, v in mem] + [1.0]) * 1.25
    if memory_limit:
        mem_top = min(mem_top, float(memory_limit))
    return _chart(
        "cpu-chart", f"CPU (% of one core, top {cpu_top:.0f} %)", "cpu", cpu, cpu_top, "%"
    ) + _chart(
        "mem-chart", f"Memory (top {fmt.size(int(mem_top))})", "mem", mem, mem_top, fmt.size(int(mem_top))
    )


def render_html(report: RunReport) -> str:
    r = report.record
    rows = "".join(
        f'<tr><th>{_e(label)}</th><td class="mono">{_e(value)}</td></tr>'
        for label, value in summary_fields(report)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_csp())}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>vmsbx run {_e(r.id)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>vmsbx run {_e(r.id)}</h1>",
        f'<table id="summary">{rows}</table>',
        "<h2>CPU and memory</h2>",
        render_charts(report.samples, int(r.policy.memory_max)),
        "<h2>Files changed</h2>",
    ]
    if report.changes is None:
        parts.append(f"<p>{fmt.DASH}</p>")
    else:
        items = "".join(f"<li><code>{_e(c.path)}</code> {_e(c.change)}</li>" for c in report.changes)
        parts.append(f'<ul id="changes">{items}</ul>' if items else "<p>none</p>")
    parts += _commit_html(report.commits)
    parts.append("<h2>Network</h2>")
    if report.network is None:
        parts.append(f"<p>{fmt.DASH}</p>")
    else:
        n = report.network
        dest = "".join(
            f'<tr><td class="mono">{_e(d.host)}</td><td>{_e(fmt.number(d.port))}</td><td>{d.allowed}</td>'
            f"<td>{d.denied}</td><td>{_e(fmt.size(d.bytes))}</td></tr>"
            for d in n.destinations
        )
        parts.append(
            f'<p>{n.allowed} allowed, {n.denied} denied</p><table id="network"><tr><th>host</th><th>port</th>'
            f"<th>allowed</th><th>denied</th><th>bytes</th></tr>{dest}</table>"
        )
    parts.append("<h2>Tool calls</h2>")
    if report.tool_calls is None:
        parts.append(f"<p>{fmt.DASH}</p>")
    else:
        calls = "".join(
            f'<li class="{_e(c.outcome)}"><b>{_e(c.name)}</b> <code>{_e(c.target)}</code> '
            f"— {_e(c.outcome)}</li>"
            for c in report.tool_calls
        )
        parts.append(f'<ol id="tool-calls">{calls}</ol>')
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    parts.append(f'<p class="label">generated by vmsbx at {_e(generated)}</p></body></html>')
    return "\n".join(parts) + "\n"
