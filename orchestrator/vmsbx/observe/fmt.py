"""Compact figures for narrow views: bytes, durations, counts; "—" for unknown."""

from __future__ import annotations

DASH = "—"


def size(value: int | None) -> str:
    if value is None:
        return DASH
    amount = float(value)
    for unit in ("B", "K", "M", "G", "T"):
        if amount < 1024 or unit == "T":
            if unit == "B":
                return f"{int(amount)}B"
            return f"{amount:.1f}{unit}" if amount < 10 else f"{amount:.0f}{unit}"
        amount /= 1024
    return DASH  # pragma: no cover


def duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def number(value: float | int | None, fmt: str = "{}") -> str:
    return DASH if value is None else fmt.format(value)


def of(current: int | None, limit: int | None, render: object = None) -> str:
    """`current/limit`, e.g. 3/512 or 120M/2.0G; the limit part is left off when unlimited."""
    show = size if render is size else (lambda v: DASH if v is None else str(v))
    return show(current) if limit is None else f"{show(current)}/{show(limit)}"


def io_caps(
    read_bps: int | None, write_bps: int | None, read_iops: int | None, write_iops: int | None
) -> str:
    """A run's disk I/O caps per device, e.g. "read 512M/s 10000 op/s, write 256M/s 5000 op/s";
    "∞" where there is none (the setting says "max")."""

    def bandwidth(value: int | None) -> str:
        return "∞ B/s" if value is None else f"{size(value)}/s"

    def ops(value: int | None) -> str:
        return f"{'∞' if value is None else value} op/s"

    return f"read {bandwidth(read_bps)} {ops(read_iops)}, write {bandwidth(write_bps)} {ops(write_iops)}"
