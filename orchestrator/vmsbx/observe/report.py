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
    CHANGESET_FILE,
    Answer,
    ApiAccount,
    ChangedFile,
    NetworkSummary,
    ToolCall,
    clean,
    clean_block,
    read_api,
    read_changeset,
    read_network,
    read_stream,
)
from vmsbx.observe.samples import SAMPLES_FILE, Sample, read_samples
from vmsbx.runs import commits as commit_reviews
from vmsbx.runs.agentrun import agent_prompt
from vmsbx.runs.commits import CommitReview
from vmsbx.runs.record import RunRecord
from vmsbx.sync.diff import show_path
from vmsbx.textsafe import strip_control

# The page stays readable and bounded whatever the run changed: each file's diff and all of
# them together are capped (`vmsbx diff` has the whole), and so is the number of tool calls.
_DIFF_FILE_MAX = 64 * 1024
_DIFF_TOTAL_MAX = 1024 * 1024
_TOOL_CALLS_SHOWN = 1000


class RunReport(BaseModel):
    """Everything `show` presents about one run. None: the run left no such file."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    record: RunRecord
    samples: list[Sample]
    tool_calls: list[ToolCall] | None = None
    network: NetworkSummary | None = None
    changes: list[ChangedFile] | None = None
    commits: CommitReview | None = None
    answer: Answer | None = None
    api: ApiAccount | None = None

    @property
    def task(self) -> str | None:
        """The prompt of a headless agent run."""
        return agent_prompt(self.record.command)

    @property
    def memory_peak(self) -> int | None:
        """systemd's figure: the cgroup's memory.peak read when the run ended (while it runs, the
        highest memory.peak a sample saw)."""
        recorded = self.record.resources.memory_peak
        if recorded is not None:
            return recorded
        return max((s.mem_peak for s in self.samples if s.mem_peak is not None), default=None)

    @property
    def memory_sampled(self) -> int | None:
        """The sampler's figure: the highest memory.current of the once-a-second samples (the
        chart's line), which misses peaks between samples."""
        return max((s.mem for s in self.samples if s.mem is not None), default=None)

    @property
    def tasks_peak(self) -> int | None:
        peaks = [v for s in self.samples for v in (s.tasks_peak, s.tasks) if v is not None]
        recorded = self.record.resources.tasks_peak
        return max([*peaks, *([recorded] if recorded is not None else [])], default=None)

    @property
    def cpu_peak(self) -> float | None:
        return max((s.cpu_pct for s in self.samples if s.cpu_pct is not None), default=None)


def load(run_dir: Path, record: RunRecord) -> RunReport:
    stream = read_stream(run_dir)
    changes = read_changeset(run_dir)
    return RunReport(
        record=record,
        samples=read_samples(run_dir / SAMPLES_FILE),
        tool_calls=None if stream is None else stream.tool_calls,
        answer=None if stream is None else stream.answer,
        network=read_network(run_dir),
        api=read_api(run_dir),
        changes=None if changes is None else _with_diffs(run_dir, record, changes),
        commits=commit_reviews.load(run_dir / "changes" / commit_reviews.COMMITS_FILE),
    )


def _with_diffs(run_dir: Path, record: RunRecord, files: list[ChangedFile]) -> list[ChangedFile]:
    """Each changed file with its diff against the project, as `vmsbx diff` shows it, capped."""
    from vmsbx.errors import VmsbxError
    from vmsbx.sync.blobs import BlobStore
    from vmsbx.sync.changeset import load as load_changeset
    from vmsbx.sync.diff import render_entry

    try:
        changeset = load_changeset(run_dir / CHANGESET_FILE)
    except (VmsbxError, OSError, ValueError):
        return files  # an older or damaged changeset: the list without diffs
    if len(changeset.entries) != len(files):
        return files
    blobs, project = BlobStore(run_dir / "changes" / "blobs"), Path(record.project or ".")
    total, out = 0, []
    for entry, listed in zip(changeset.entries, files, strict=True):
        if total >= _DIFF_TOTAL_MAX:
            text = f"(not shown: the report's diffs are capped; `vmsbx diff {record.id}` has it)\n"
        else:
            try:
                text = strip_control(render_entry(entry, blobs, project))
            except OSError as exc:
                text = f"(diff not available: {exc.strerror})\n"
            if len(text) > _DIFF_FILE_MAX:
                text = text[:_DIFF_FILE_MAX] + f"\n… (cut; `vmsbx diff {record.id}` has the whole diff)\n"
        total += len(text)
        out.append(listed.model_copy(update={"diff": text}))
    return out


def summary_fields(report: RunReport) -> list[tuple[str, str]]:
    """The summary as (label, value) pairs, shared by both renderers."""
    r = report.record
    cpu_seconds = None if r.resources.cpu_usage_usec is None else r.resources.cpu_usage_usec / 1e6
    exit_status = fmt.DASH if r.exit_code is None else str(r.exit_code)
    policy = r.policy
    notes = [("guest notes", clean("; ".join(r.guest_notes), 1000))] if r.guest_notes else []
    task = [("task", clean(report.task, 500))] if report.task is not None else []
    return [
        ("run", r.id),
        ("vm", r.vm),
        *task,
        ("command", clean(" ".join(r.command), 500)),
        ("state", r.state),
        ("sandbox", r.sandbox),
        ("workspace", clean(r.workdir or fmt.DASH, 500)),
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
        ("memory peak", _memory(report)),
        ("tasks peak", f"{fmt.number(report.tasks_peak)} of {policy.tasks_max}"),
        (
            "cpu",
            f"{fmt.number(cpu_seconds, '{:.1f}')} s used, peak {fmt.number(report.cpu_peak, '{:.0f}')} %",
        ),
        ("oom kills", str(r.resources.oom_kills)),
        ("api", api_line(report)),
        ("network", network_line(report)),
        *notes,
    ]


def _memory(report: RunReport) -> str:
    limit = fmt.size(int(report.record.policy.memory_max))
    sampled = "" if report.memory_sampled is None else f"; highest sample {fmt.size(report.memory_sampled)}"
    return f"{fmt.size(report.memory_peak)} of {limit} (systemd's memory.peak{sampled})"


def api_line(report: RunReport) -> str:
    """The relay's account: requests, tokens, estimated cost and what is left of the budget."""
    api, cap = report.api, report.record.budget
    if api is None:
        return f"{fmt.DASH} (no model API use recorded)" if report.record.relay else fmt.DASH
    refused = f", {api.refused} refused" if api.refused else ""
    line = (
        f"{api.requests} request(s){refused}, {api.input_tokens} input / {api.output_tokens} output tokens, "
        f"≈ ${api.cost_usd:.4f} at list prices"
    )
    if cap is None:
        return line + ", no budget"
    left = []
    if cap.tokens is not None:
        left.append(f"{max(cap.tokens - api.input_tokens - api.output_tokens, 0)} of {cap.tokens} tokens")
    if cap.usd is not None:
        left.append(f"${max(cap.usd - api.cost_usd, 0.0):.2f} of ${cap.usd:.2f}")
    return line + ", budget left " + " and ".join(left) + (" (used up)" if api.budget_exhausted else "")


def network_line(report: RunReport) -> str:
    """What left the sandbox: the model API through the relay, and what the egress proxy decided.
    A run under the `api` policy has no egress proxy, so its only traffic is the relay's."""
    r, api, net = report.record, report.api, report.network
    parts = []
    if r.relay or api is not None:
        parts.append(f"model API via the relay: {fmt.DASH if api is None else api.requests} request(s)")
    if net is not None:
        parts.append(f"egress proxy: {net.allowed} allowed, {net.denied} denied")
    elif r.policy.network in ("none", "api"):
        parts.append(f"{'nothing else' if parts else 'none'} (policy {r.policy.network})")
    else:
        parts.append(f"egress proxy: {fmt.DASH}")
    return "; ".join(parts)


def render_text(report: RunReport) -> str:
    lines = [f"{label:15} {value}" for label, value in summary_fields(report)]
    if report.answer is not None:
        lines.append(
            "answer" + ("          (Claude Code reported an error)" if report.answer.is_error else "")
        )
        lines += [f"  {line}" for line in report.answer.text.splitlines()[:200]]
    lines.append("")
    if report.changes is None:
        lines.append(f"files changed   {_no_changeset(report.record)}")
    else:
        lines.append(f"files changed   {len(report.changes)}" + (
            f"  (`vmsbx diff {report.record.id}` shows the diff)" if report.changes else ""
        ))  # fmt: skip
        for title, rows in _file_groups(report.changes):
            indent = "  " if title is None else "    "
            if title is not None:
                lines.append(f"  {title}: {len(rows)}")
            lines += [
                f"{indent}{_MARK.get(c.change, '?')} {c.path}" + (f"  ({c.reason})" if c.reason else "")
                for c in rows[:200]
            ]
    lines += _commit_text(report.commits)
    if report.network is not None and report.network.destinations:
        lines.append("network destinations")
        lines += [
            f"  {d.host}{'' if d.port is None else f':{d.port}'}  allowed {d.allowed} denied {d.denied}"
            f"  {fmt.size(d.bytes)}"
            for d in report.network.destinations[:200]
        ]
    if report.tool_calls is None:
        lines.append(f"tool calls      {fmt.DASH}")
    else:
        lines.append(f"tool calls      {len(report.tool_calls)}")
        for i, c in enumerate(report.tool_calls[:_TOOL_CALLS_SHOWN], 1):
            lines.append(f"  {i:3}. {_clock(c)} {_took(c):>6} {c.outcome:7} {c.label}")
            lines += [f"         {line}" for line in c.result.splitlines()[:3]]
    return "\n".join(lines) + "\n"


def _no_changeset(record: RunRecord) -> str:
    """Why a run has no stored changeset to list."""
    return {
        "held": "held back in the guest: over the collect cap (`vmsbx discard` frees it)",
        "failed": "vmsbx could not collect the run's changes",
        "pending": "not collected yet",
        "discarded": "discarded",
    }.get(record.changes, fmt.DASH)


_MARK = {"added": "+", "deleted": "-", "modified": "~", "mode": "m", "type": "t"}
_GROUPS = (
    ("apply", None),
    ("sensitive", "held back (can run code on your machine; `vmsbx apply --include-sensitive`)"),
    ("refused", "refused (never applied)"),
    ("git", ".git/ changes (never applied as files; commits come back as a branch)"),
)


def _file_groups(files: list[ChangedFile]) -> list[tuple[str | None, list[ChangedFile]]]:
    """Changed files by what apply does with them; files of an older changeset count as applied."""
    known = {key for key, _ in _GROUPS}
    groups = []
    for key, title in _GROUPS:
        rows = [
            f
            for f in files
            if (f.classification or "apply") == key or (key == "apply" and f.classification not in known)
        ]
        if rows:
            groups.append((title, rows))
    return groups


def _clock(call: ToolCall) -> str:
    return fmt.DASH.rjust(8) if call.started is None else call.started.astimezone(dt.UTC).strftime("%H:%M:%S")


def _took(call: ToolCall) -> str:
    return fmt.DASH if call.duration is None else fmt.duration(call.duration)


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
pre{background:#f6f6f6;border:1px solid #ddd;padding:.5em;white-space:pre-wrap;word-break:break-all;
max-height:40em;overflow:auto}summary{cursor:pointer}.file,.call{margin:.2em 0}
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
    highest = fmt.size(int(max((v for _, v in mem), default=0)))
    return _chart(
        "cpu-chart", f"CPU, % of one core (sampled each second; scale 0 to {cpu_top:.0f} %)", "cpu", cpu,
        cpu_top, "%",
    ) + _chart(
        "mem-chart",
        f"Memory in use (memory.current sampled each second; highest sample {highest}; "
        f"scale 0 to {fmt.size(int(mem_top))}). The summary's peak is systemd's memory.peak, which "
        "also counts what came and went between samples.",
        "mem", mem, mem_top, fmt.size(int(mem_top)),
    )  # fmt: skip


def render_html(report: RunReport) -> str:
    r = report.record
    rows = "".join(
        f'<tr><th>{_e(label)}</th><td class="mono">{_e(value)}</td></tr>'
        for label, value in summary_fields(report)
        if label not in ("api", "network")  # the page has a section for them
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_csp())}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>vmsbx run {_e(r.id)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>vmsbx run {_e(r.id)}</h1>",
    ]
    if report.task is not None:
        parts += ["<h2>Task</h2>", f'<pre id="task">{_e(clean_block(report.task, 20_000))}</pre>']
    if report.answer is not None:
        failed = (
            ' <span class="error">(Claude Code reported an error)</span>' if report.answer.is_error else ""
        )
        parts += [f"<h2>Answer{failed}</h2>", f'<pre id="answer">{_e(report.answer.text)}</pre>']
    parts += [
        f'<table id="summary">{rows}</table>',
        "<h2>Files changed</h2>",
    ]
    if report.changes is None:
        parts.append(f"<p>{_e(_no_changeset(r))}</p>")
    elif not report.changes:
        parts.append("<p>none</p>")
    else:
        for title, files in _file_groups(report.changes):
            if title is not None:
                parts.append(f"<h3>{_e(title)}: {len(files)}</h3>")
            parts.append('<div class="changes">' + "".join(_file_html(f) for f in files) + "</div>")
    parts += _commit_html(report.commits)
    parts += ["<h2>API and network</h2>", f'<p id="api">{_e(api_line(report))}</p>']
    parts.append(f'<p id="network-summary">{_e(network_line(report))}</p>')
    if report.network is not None and report.network.destinations:
        dest = "".join(
            f'<tr><td class="mono">{_e(d.host)}</td><td>{_e(fmt.number(d.port))}</td><td>{d.allowed}</td>'
            f"<td>{d.denied}</td><td>{_e(fmt.size(d.bytes))}</td></tr>"
            for d in report.network.destinations
        )
        parts.append(
            '<table id="network"><tr><th>host</th><th>port</th>'
            f"<th>allowed</th><th>denied</th><th>bytes</th></tr>{dest}</table>"
        )
    parts.append("<h2>Tool calls</h2>")
    if report.tool_calls is None:
        parts.append(f"<p>{fmt.DASH}</p>")
    else:
        calls = "".join(_tool_call_html(c) for c in report.tool_calls[:_TOOL_CALLS_SHOWN])
        parts.append(f'<ol id="tool-calls">{calls}</ol>')
    parts += ["<h2>CPU and memory</h2>", render_charts(report.samples, int(r.policy.memory_max))]
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    parts.append(f'<p class="label">generated by vmsbx at {_e(generated)}</p></body></html>')
    return "\n".join(parts) + "\n"


def _file_html(changed: ChangedFile) -> str:
    """One changed file: its name and kind of change, its diff folded underneath."""
    reason = f" ({_e(changed.reason)})" if changed.reason else ""
    head = (
        f"<code>{_e(_MARK.get(changed.change, '?'))} {_e(changed.path)}</code> {_e(changed.change)}{reason}"
    )
    if changed.diff is None:
        return f'<p class="file">{head}</p>'
    return (
        f'<details class="file"><summary>{head}</summary><pre class="diff">{_e(changed.diff)}</pre></details>'
    )


def _tool_call_html(call: ToolCall) -> str:
    """One tool call: when, how long, what on, its outcome; its result's excerpt folded."""
    head = (
        f'<span class="mono">{_e(_clock(call))} {_e(_took(call))}</span> <b>{_e(call.name)}</b> '
        f'<code>{_e(call.target)}</code> — <span class="{_e(call.outcome)}">{_e(call.outcome)}</span>'
    )
    if not call.result:
        return f'<li class="call">{head}</li>'
    result = f'<pre class="result">{_e(call.result)}</pre>'
    return f'<li class="call"><details><summary>{head}</summary>{result}</details></li>'
