"""The host agent's resource sampler: about once a second, one guest command for all live runs.

Idle costs nothing in the guest: without a live run record of this VM no command is sent. A run
whose cgroup has gone (it ended, even if nobody has collected its record yet) stops being sampled.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vmsbx.observe.samples import SAMPLE_ARGV, SAMPLES_FILE, Sample, follow_on, parse_guest_sample
from vmsbx.paths import open_private
from vmsbx.sandbox.layout import is_run_id

log = logging.getLogger("vmsbx.agent.sampler")

# Runs a fixed argv with stdin in the guest; returns (exit code, stdout).
GuestRunner = Callable[[list[str], bytes], tuple[int, bytes]]
INTERVAL = 1.0
# A running record whose unit the guest does not show this many ticks in a row is not sampled again.
_ABSENT_TICKS = 5


def live_runs(runs_root: Path, vm: str, cache: dict[Path, tuple[float, str | None]]) -> dict[str, str]:
    """Runs of `vm` whose record says starting or running, with that state (run.json parsed once
    per change)."""
    if not runs_root.is_dir():
        return {}
    live = {}
    for entry in runs_root.iterdir():
        record = entry / "run.json"
        if not is_run_id(entry.name):
            continue
        try:
            mtime = record.stat().st_mtime
        except OSError:
            continue
        known = cache.get(record)
        if known is None or known[0] != mtime:
            state = None
            try:
                data = json.loads(record.read_bytes())
                if data.get("vm") == vm and data.get("state") in ("starting", "running"):
                    state = str(data["state"])
            except (OSError, ValueError, AttributeError):
                pass
            known = cache[record] = (mtime, state)
        if known[1] is not None:
            live[entry.name] = known[1]
    return live


class Sampler:
    """Samples the live runs of one VM into runs/<id>/samples.jsonl until stopped."""

    def __init__(self, vm: str, runs_root: Path, run_in_guest: GuestRunner) -> None:
        self.vm = vm
        self.runs_root = runs_root
        self._run_in_guest = run_in_guest
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latest: dict[str, Sample] = {}
        self._absent: dict[str, int] = {}
        self._records: dict[Path, tuple[float, str | None]] = {}
        self.guest_commands = 0

    def latest(self) -> dict[str, Sample]:
        """The newest sample of every run sampled so far (ended runs keep their last one)."""
        with self._lock:
            return dict(self._latest)

    def stop(self) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception as exc:  # the sampler must never take the agent down
                log.warning("sampling failed: %s", exc)
            self._stop.wait(max(0.05, INTERVAL - (time.monotonic() - started)))

    def tick(self) -> None:
        live = live_runs(self.runs_root, self.vm, self._records)
        wanted = [run_id for run_id in sorted(live) if self._absent.get(run_id, 0) < _ABSENT_TICKS]
        if not wanted:
            return
        self.guest_commands += 1
        code, out = self._run_in_guest(SAMPLE_ARGV, b"")
        if code != 0:
            log.warning("sampling command exited %d", code)
            return
        fresh = parse_guest_sample(out, time.time())
        for run_id in wanted:
            sample = fresh.get(run_id)
            if sample is None:
                # A starting run has no unit yet; only a running one can have ended.
                if live[run_id] == "running":
                    self._absent[run_id] = self._absent.get(run_id, 0) + 1
                continue
            self._absent[run_id] = 0
            with self._lock:
                sample = follow_on(self._latest.get(run_id), sample)
                self._latest[run_id] = sample
            with open_private(self.runs_root / run_id / SAMPLES_FILE, "ab") as sink:
                sink.write(sample.model_dump_json(exclude_none=True).encode() + b"\n")
