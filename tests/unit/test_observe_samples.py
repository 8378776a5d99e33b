"""Resource samples: the guest's cgroup read-out parsed as hostile input, CPU % and peaks, and
the agent's sampler loop (with the guest command replaced by recorded output)."""

from __future__ import annotations

import json
from pathlib import Path

from vmsbx.observe.sampler import Sampler
from vmsbx.observe.samples import SAMPLE_ARGV, follow_on, parse_guest_sample, read_samples

RUN = "0123456789ab"
UNIT = f"vmsbx-run-{RUN}.service"


def _guest_output(
    mono: float, usage_usec: int, mem: int, units: dict[str, dict[str, str]] | None = None
) -> bytes:
    """What the sampling script prints (recorded format: `mono`, `unit`, then `<file> <line>`)."""
    files = {
        "cpu.stat": f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n",
        "memory.current": f"{mem}\n",
        "memory.max": "2147483648\n",
        "pids.current": "3\n",
        "pids.max": "512\n",
    }
    lines = [f"mono {mono}"]
    for unit, contents in (units if units is not None else {UNIT: files}).items():
        lines.append(f"unit {unit}")
        lines += [f"{name} {line}" for name, text in contents.items() for line in text.splitlines()]
    return ("\n".join(lines) + "\n").encode()


def test_a_unit_sample_is_parsed_from_the_cgroup_files() -> None:
    samples = parse_guest_sample(_guest_output(10.0, 5_000_000, 1 << 20), host_time=100.0)
    sample = samples[RUN]
    assert (sample.cpu_usec, sample.mem, sample.mem_max, sample.tasks, sample.tasks_max) == (
        5_000_000, 1 << 20, 2 << 30, 3, 512,
    )  # fmt: skip
    assert sample.mem_peak is None  # systemd 252 guests: no memory.peak file, peaks come from samples


def test_hostile_guest_output_is_dropped_not_trusted() -> None:
    units = {
        "../../etc/passwd": {"memory.current": "1"},
        "vmsbx-run-XYZ.service": {"memory.current": "1"},
        UNIT: {
            "memory.current": "-5",
            "pids.current": "1e9",
            "memory.max": "max",
            "cpu.stat": "usage_usec 9" * 5000,
        },
    }
    samples = parse_guest_sample(_guest_output(1.0, 0, 0, units), host_time=1.0)
    assert list(samples) == [RUN]
    sample = samples[RUN]
    assert sample.mem is None and sample.tasks is None and sample.mem_max is None
    for garbage in (
        b"",
        b"not json",
        b"[]",
        b'{"mono": "x", "units": {}}',
        b"\xff\xfe",
        b'{"mono": 1, "units": []}',
    ):
        assert parse_guest_sample(garbage, host_time=1.0) == {}


def test_cpu_percent_and_peaks_follow_on_from_the_previous_sample() -> None:
    first = follow_on(None, parse_guest_sample(_guest_output(10.0, 1_000_000, 300), 1.0)[RUN])
    second = follow_on(first, parse_guest_sample(_guest_output(12.0, 2_500_000, 100), 3.0)[RUN])
    assert first.cpu_pct is None
    assert second.cpu_pct == 75.0  # 1.5 s of CPU in 2 s
    assert second.mem == 100 and second.mem_peak == 300  # a peak never goes down
    assert second.tasks_peak == 3


def _write_record(root: Path, run_id: str, state: str, vm: str = "default") -> None:
    folder = root / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"id": run_id, "vm": vm, "state": state}))


def test_the_sampler_sends_nothing_when_no_run_is_live(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def guest(argv: list[str], stdin: bytes) -> tuple[int, bytes]:
        calls.append(argv)
        return 0, b""

    _write_record(tmp_path, RUN, "exited")
    _write_record(tmp_path, "ba9876543210", "running", vm="other-vm")
    sampler = Sampler("default", tmp_path, guest)
    for _ in range(3):
        sampler.tick()
    assert calls == []


def test_the_sampler_appends_samples_of_live_runs_with_one_command_per_tick(tmp_path: Path) -> None:
    other = "ba9876543210"
    ticks = iter([(10.0, 1_000_000), (11.0, 1_900_000), (12.0, 2_800_000)])
    sent: list[list[str]] = []

    def guest(argv: list[str], stdin: bytes) -> tuple[int, bytes]:
        sent.append(argv)
        mono, usage = next(ticks)
        files = {"cpu.stat": f"usage_usec {usage}\n", "memory.current": "4096\n"}
        return 0, _guest_output(mono, usage, 0, {UNIT: files, f"vmsbx-run-{other}.service": files})

    _write_record(tmp_path, RUN, "running")
    _write_record(tmp_path, other, "running")
    sampler = Sampler("default", tmp_path, guest)
    for _ in range(3):
        sampler.tick()
    assert sent == [SAMPLE_ARGV] * 3  # one command per tick covers both runs
    for run_id in (RUN, other):
        stored = read_samples(tmp_path / run_id / "samples.jsonl")
        assert [s.cpu_pct for s in stored] == [None, 90.0, 90.0]
    assert sampler.latest()[RUN].mem == 4096


def test_the_sampler_stops_sampling_a_run_whose_unit_is_gone(tmp_path: Path) -> None:
    calls = []

    def guest(argv: list[str], stdin: bytes) -> tuple[int, bytes]:
        calls.append(1)
        return 0, _guest_output(1.0, 0, 0, units={})

    _write_record(tmp_path, RUN, "running")
    sampler = Sampler("default", tmp_path, guest)
    for _ in range(20):
        sampler.tick()
    assert len(calls) == 5
    assert not (tmp_path / RUN / "samples.jsonl").exists()


def test_a_starting_run_is_polled_until_its_unit_appears(tmp_path: Path) -> None:
    calls = []

    def guest(argv: list[str], stdin: bytes) -> tuple[int, bytes]:
        calls.append(1)
        return 0, _guest_output(1.0, 0, 0, units={})

    _write_record(tmp_path, RUN, "starting")
    sampler = Sampler("default", tmp_path, guest)
    for _ in range(10):
        sampler.tick()
    assert len(calls) == 10
