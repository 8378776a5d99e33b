"""Renders a `Snapshot` for the terminal (rich), fitting 80 columns. Pure: no I/O.

Guest-derived text (commands, tool targets, log lines) arrives already stripped of control
sequences, and goes into `Text` objects (never markup), so `[red]` in a file name stays literal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.text import Text

from vmsbx.observe import fmt
from vmsbx.observe.snapshot import RunRow, Snapshot


@dataclass
class ViewState:
    """What the viewer has selected and which panel is open."""

    selected: int = 0
    mode: str = "table"  # table | log | confirm
    log_lines: list[str] = field(default_factory=list)
    message: str = ""


def _mem(row: RunRow) -> str:
    current = fmt.size(row.mem) if row.mem is not None else fmt.DASH
    peak = fmt.size(row.mem_peak)
    limit = fmt.size(row.mem_max) if row.mem_max is not None else "∞"
    return f"{current}/{peak}/{limit}"


def _net(row: RunRow) -> str:
    if row.net_allowed is None:
        return fmt.DASH
    return f"{row.net_allowed}/{row.net_denied}"


_HEADER = (
    f"{'RUN':12} {'STATE':7} {'TIME':>6} {'CPU%':>5} {'MEM now/peak/max':16} {'TASKS':9} {'NET a/d':7} "
    f"{'SCORE':>5}"
)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def run_line(row: RunRow) -> str:
    """The figures of one run in 74 columns."""
    return (
        f"{row.id:12} {row.state[:7]:7} {fmt.duration(row.elapsed):>6} "
        f"{fmt.number(row.cpu_pct, '{:.0f}'):>5} "
        f"{_cut(_mem(row), 16):16} {_cut(fmt.of(row.tasks, row.tasks_max), 9):9} {_cut(_net(row), 7):7} "
        f"{fmt.number(row.exposure, '{:.1f}'):>5}"
    )


def run_lines(snapshot: Snapshot, selected: int, width: int = 80) -> Text:
    """Per VM a header line, then two lines per run: its figures and its latest activity."""
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(_cut(_HEADER, width) + "\n", style="bold")
    index = 0
    for vm in snapshot.vms:
        agent = "agent up" if vm.agent else "agent down"
        out.append(
            _cut(f"VM {vm.name} · {vm.provider} · {vm.state} · {agent}", width) + "\n", style="bold cyan"
        )
        if not vm.runs:
            out.append("  no runs\n", style="dim")
        for row in vm.runs:
            style = "reverse" if index == selected else ""
            out.append(_cut(run_line(row), width) + "\n", style=style)
            activity = row.last_tool or f"$ {row.command}"
            out.append(_cut(f"  ↳ {activity}", width) + "\n", style="dim")
            index += 1
    return out


def render(snapshot: Snapshot, state: ViewState, width: int = 80) -> RenderableType:
    rows = snapshot.rows()
    parts: list[RenderableType] = [
        Text(f"vmsbx top · {snapshot.taken_at} · {len(rows)} runs", style="bold"),
        run_lines(snapshot, state.selected, width),
    ]
    chosen = rows[state.selected] if 0 <= state.selected < len(rows) else None
    if chosen is not None and chosen.io_caps:
        parts.append(Text(_cut(f"{chosen.id} disk i/o cap: {chosen.io_caps}", width), style="dim"))
    if state.mode == "log" and chosen is not None:
        parts.append(Text(f"─ log of {chosen.id} (l closes) ", style="bold"))
        for line in state.log_lines[-12:]:
            parts.append(Text(_cut(line, width)))
    if state.mode == "confirm" and chosen is not None:
        parts.append(Text(f"Stop run {chosen.id}? y/N", style="bold red"))
    if state.message:
        parts.append(Text(state.message, style="yellow"))
    parts.append(Text("q quit · ↑↓ select · l log · k stop", style="dim"))
    return Group(*parts)
