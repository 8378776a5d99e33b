"""Resource samples of live runs, read from each run unit's cgroup in the guest.

One guest command per tick covers every run of a VM: a fixed shell script (never built from
input) reads the cgroup v2 files of every `vmsbx-run-*.service`. Its output comes from the guest
and is parsed as hostile: only known keys, only bounded integers, only valid unit names.
bookworm's systemd 252 has no MemoryPeak= property, so `memory.peak` is read from the cgroup.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

SAMPLES_FILE = "samples.jsonl"
# A fixed script (no input is ever spliced into it) of shell builtins only: one short-lived `sh`
# per tick, no interpreter start-up, which matters in a guest under software emulation.
# Prints "mono <uptime s>", then per run unit "unit <name>" and "<file> <line>" for each line of
# its cgroup files.
_SAMPLE_SH = """
read -r up _ < /proc/uptime || exit 1
echo "mono $up"
for d in /sys/fs/cgroup/system.slice/vmsbx-run-*.service; do
  [ -d "$d" ] || continue
  echo "unit ${d##*/}"
  for f in cpu.stat memory.current memory.peak memory.max pids.current pids.max pids.peak; do
    [ -r "$d/$f" ] || continue
    while IFS= read -r line; do echo "$f $line"; done < "$d/$f"
  done
done
"""
SAMPLE_ARGV = ["/bin/sh", "-c", _SAMPLE_SH]
_FILES = ("cpu.stat", "memory.current", "memory.peak", "memory.max", "pids.current", "pids.max", "pids.peak")

_UNIT = re.compile(r"^vmsbx-run-([a-z0-9]{12})\.service$")
_MAX_INT = 1 << 62


class Sample(BaseModel):
    """One line of runs/<id>/samples.jsonl: the run's cgroup at one instant."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    t: float = Field(description="Host wall-clock time of the sample, Unix seconds.")
    mono: float = Field(description="Guest monotonic clock, seconds (CPU % is computed on it).")
    cpu_usec: int | None = Field(default=None, description="cpu.stat usage_usec: CPU time so far.")
    cpu_pct: float | None = Field(default=None, description="CPU since the previous sample, % of one core.")
    mem: int | None = Field(default=None, description="memory.current, bytes.")
    mem_peak: int | None = Field(default=None, description="memory.peak, or the max of samples.")
    mem_max: int | None = Field(default=None, description="memory.max, bytes; None = no limit.")
    tasks: int | None = Field(default=None, description="pids.current.")
    tasks_peak: int | None = Field(default=None, description="pids.peak, or the max of samples.")
    tasks_max: int | None = Field(default=None, description="pids.max; None = no limit.")


def _int(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    value = text.strip()
    if not value.isdigit() or len(value) > 19:
        return None
    number = int(value)
    return number if number < _MAX_INT else None


def _keyed(text: object, key: str) -> int | None:
    if not isinstance(text, str):
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return _int(parts[1])
    return None


def parse_guest_sample(raw: bytes, host_time: float) -> dict[str, Sample]:
    """Samples per run id from the sampling script's output (hostile: anything odd is dropped)."""
    text = raw.decode("utf-8", errors="replace")
    mono: float | None = None
    units: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines()[:10_000]:
        key, _, value = line.partition(" ")
        if key == "mono" and mono is None:
            try:
                mono = float(value)
            except ValueError:
                return {}
        elif key == "unit":
            match = _UNIT.fullmatch(value)
            current = units.setdefault(match.group(1), {}) if match else None
        elif key in _FILES and current is not None:
            current[key] = (current.get(key, "") + value + "\n")[:4096]
    if mono is None or not math.isfinite(mono):
        return {}
    return {
        run_id: Sample(
            t=host_time,
            mono=mono,
            cpu_usec=_keyed(files.get("cpu.stat"), "usage_usec"),
            mem=_int(files.get("memory.current")),
            mem_peak=_int(files.get("memory.peak")),
            mem_max=_int(files.get("memory.max")),  # "max" (no limit) parses as None
            tasks=_int(files.get("pids.current")),
            tasks_peak=_int(files.get("pids.peak")),
            tasks_max=_int(files.get("pids.max")),
        )
        for run_id, files in units.items()
    }


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def follow_on(previous: Sample | None, current: Sample) -> Sample:
    """`current` with CPU % against `previous` and peaks that never go down."""
    if previous is None:
        return current.model_copy(
            update={
                "mem_peak": _max(current.mem_peak, current.mem),
                "tasks_peak": _max(current.tasks_peak, current.tasks),
            }
        )
    cpu_pct = None
    elapsed = current.mono - previous.mono
    if current.cpu_usec is not None and previous.cpu_usec is not None and elapsed > 0:
        cpu_pct = round(max(0, current.cpu_usec - previous.cpu_usec) / (elapsed * 1e6) * 100, 1)
    return current.model_copy(
        update={
            "cpu_pct": cpu_pct,
            "mem_peak": _max(_max(current.mem_peak, current.mem), previous.mem_peak),
            "tasks_peak": _max(_max(current.tasks_peak, current.tasks), previous.tasks_peak),
        }
    )


def read_samples(path: Path, limit: int = 100_000) -> list[Sample]:
    """The samples stored for a run; malformed lines are skipped (the file is ours, but be safe)."""
    if not path.is_file():
        return []
    return list(_parse_lines(path.read_bytes().splitlines()[-limit:]))


def _parse_lines(lines: Iterable[bytes]) -> Iterator[Sample]:
    for line in lines:
        try:
            yield Sample.model_validate_json(line)
        except ValueError:
            continue


def last_sample(path: Path) -> Sample | None:
    """The newest sample of a run, reading only the end of the file."""
    if not path.is_file():
        return None
    with path.open("rb") as stream:
        stream.seek(0, 2)
        size = stream.tell()
        stream.seek(max(0, size - 4096))
        tail = stream.read().splitlines()
    for sample in reversed(list(_parse_lines(tail))):
        return sample
    return None
