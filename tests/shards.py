"""Split the test session into shards that run at the same time, each with its own guest.

The real-VM tests spend much of their time waiting on one emulated guest (TCG), which leaves the
second core of a CI machine idle; two pytest sessions side by side, each with its own
VMSBX_HOME and guest, use both. `VMSBX_TEST_SHARD=K/N` (scripts/test sets it) keeps the K-th
of N shards: whole test files, never split (a file shares one guest or fixture), assigned
greedily by their measured seconds in shard_weights.json so the shards end at about the same
time. The assignment depends only on the weighed and the collected file names and the weights,
so every shard computes the same one and each test runs in exactly one shard. A file that has no weight yet
counts as UNKNOWN_WEIGHT seconds; refresh the weights from a run's JUnit XML with
`python3 tests/shards.py SHARD1.xml SHARD2.xml > tests/shard_weights.json`.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

WEIGHTS = Path(__file__).with_name("shard_weights.json")
# Files outside tests/vm need no guest: they travel together, as one group.
NO_GUEST = "no-guest"
UNKNOWN_WEIGHT = 120.0
_SHARD = re.compile(r"([1-9][0-9]*)/([1-9][0-9]*)")


class ShardError(ValueError):
    pass


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` -> (K, N), 1 <= K <= N."""
    found = _SHARD.fullmatch(text.strip())
    if not found or not 1 <= int(found.group(1)) <= int(found.group(2)):
        raise ShardError(f"VMSBX_TEST_SHARD={text!r}: expected K/N with 1 <= K <= N, e.g. 1/2")
    return int(found.group(1)), int(found.group(2))


def group_of(test_file: str) -> str:
    """The group a test file (its path relative to the repo, '/'-separated) belongs to."""
    return test_file if test_file.startswith("tests/vm/") else NO_GUEST


def assign(groups: Iterable[str], weights: dict[str, float], count: int) -> dict[str, int]:
    """Group -> shard (1..count): heaviest first onto the lightest shard so far; ties by name."""
    loads = [0.0] * count
    placed: dict[str, int] = {}
    for group in sorted(set(groups), key=lambda g: (-weights.get(g, UNKNOWN_WEIGHT), g)):
        lightest = min(range(count), key=lambda i: (loads[i], i))
        loads[lightest] += weights.get(group, UNKNOWN_WEIGHT)
        placed[group] = lightest + 1
    return placed


def load_weights(path: Path = WEIGHTS) -> dict[str, float]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {str(group): float(seconds) for group, seconds in data.items()}


def weights_from_junit(xml_text: str) -> dict[str, float]:
    """Seconds per group from a pytest JUnit XML report (setup, call and teardown included)."""
    totals: dict[str, float] = defaultdict(float)
    for case in ET.fromstring(xml_text).iter("testcase"):
        # classname is the dotted module path plus any class: tests.vm.test_runs[.TestX]
        parts = case.get("classname", "").split(".")
        module = next((i for i, part in enumerate(parts) if part.startswith("test_")), len(parts) - 1)
        test_file = "/".join(parts[: module + 1]) + ".py"
        totals[group_of(test_file)] += float(case.get("time", "0") or 0)
    return {group: round(seconds, 1) for group, seconds in sorted(totals.items())}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python3 tests/shards.py JUNIT.xml... > tests/shard_weights.json")
    merged: dict[str, float] = defaultdict(float)
    for report in sys.argv[1:]:
        for group, seconds in weights_from_junit(Path(report).read_text(encoding="utf-8")).items():
            merged[group] += seconds
    print(json.dumps({group: round(seconds, 1) for group, seconds in sorted(merged.items())}, indent=2))
