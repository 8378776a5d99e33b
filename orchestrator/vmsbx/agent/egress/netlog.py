"""runs/<id>/network.jsonl: the egress proxy's decisions, one JSON object a line.

The proxy writes them (trusted: never inferred from what the sandbox prints); `vmsbx logs
--network` reads them back and sums them up per destination.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

NETWORK_LOG_NAME = "network.jsonl"


def append_decision(path: Path, record: dict[str, object]) -> None:
    """Append one decision record to `path` (created 0600), one line, flushed at once."""
    line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


@dataclass(slots=True)
class DestinationSummary:
    """What one destination (host:port) saw during a run."""

    destination: str
    count: int = 0
    allowed: int = 0
    denied: int = 0
    errors: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    kinds: list[str] = field(default_factory=list)
    """CONNECT, GET, SOCKS, … in the order first seen."""
    reasons: list[str] = field(default_factory=list)
    """Distinct reasons for denials and errors, so the user sees what to allow."""

    def as_dict(self) -> dict[str, object]:
        return {
            "destination": self.destination,
            "count": self.count,
            "allowed": self.allowed,
            "denied": self.denied,
            "errors": self.errors,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "kinds": list(self.kinds),
            "reasons": list(self.reasons),
        }


def destination_of(record: dict[str, object]) -> str:
    host = record.get("host")
    port = record.get("port")
    if not isinstance(host, str) or not host:
        return "(unparsed request)"
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if isinstance(port, int) else shown


def summarise(lines: Iterable[str | bytes]) -> list[DestinationSummary]:
    """Per destination, in order of first appearance; lines that are not records are skipped."""
    by_destination: dict[str, DestinationSummary] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        key = destination_of(record)
        summary = by_destination.setdefault(key, DestinationSummary(key))
        summary.count += 1
        decision = record.get("decision")
        if decision == "allow":
            summary.allowed += 1
        elif decision == "deny":
            summary.denied += 1
        else:
            summary.errors += 1
        summary.bytes_up += _count(record.get("bytes_up"))
        summary.bytes_down += _count(record.get("bytes_down"))
        kind = record.get("kind")
        if isinstance(kind, str) and kind not in summary.kinds:
            summary.kinds.append(kind)
        reason = record.get("reason")
        if decision != "allow" and isinstance(reason, str) and reason and reason not in summary.reasons:
            summary.reasons.append(reason)
    return list(by_destination.values())


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
