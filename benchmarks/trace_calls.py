"""Run one vmsbx command and print, on stderr, how long each guest call of it took.

    python3 benchmarks/trace_calls.py run -- true

The profile behind results.md's "where the time goes": the host side of a run is almost all
waiting for the guest, so the useful unit is the guest call (each one a process started in the
guest over the host agent's SSH connection), not a Python function.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from vmsbx.agent import client
from vmsbx.cli.main import main

_original_exec = client.AgentClient.exec
_original_call = client.AgentClient.call
_calls: list[tuple[str, float]] = []
_start = time.perf_counter()


def _exec(self: client.AgentClient, argv: list[str], **kwargs: Any) -> int:
    began = time.perf_counter()
    try:
        return _original_exec(self, argv, **kwargs)
    finally:
        words = [word for word in argv[1:6] if not word.startswith(("/", "-"))][:3]
        _calls.append(("guest " + " ".join(words), time.perf_counter() - began))


def _call(self: client.AgentClient, request: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        return _original_call(self, request, **kwargs)
    finally:
        _calls.append((f"agent {request.get('op')}", time.perf_counter() - began))


def _report() -> None:
    total = time.perf_counter() - _start
    spent = sum(seconds for _, seconds in _calls)
    for name, seconds in _calls:
        print(f"trace: {seconds:7.3f} s  {name}", file=sys.stderr)
    print(
        f"trace: {spent:7.3f} s  in {len(_calls)} calls; {total - spent:.3f} s elsewhere; "
        f"{total:.3f} s total",
        file=sys.stderr,
    )


client.AgentClient.exec = _exec  # type: ignore[method-assign]
client.AgentClient.call = _call  # type: ignore[method-assign]

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    finally:
        _report()
