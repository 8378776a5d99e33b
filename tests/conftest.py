"""Under CI a skipped test is a failure: a skip there means an install step is missing.

A fresh CI machine once skipped every wheel test ("needs hatchling") while a developer's machine,
where hatchling happened to be installed, ran them; nobody saw the gap. So when the environment
says CI (`CI=true`, which .ci/run sets), every skip (at collection, setup or call) is turned
into a failure that says what to do, unless it is listed in ALLOWED_SKIPS below: the one place
for skips that are legitimate on some platforms. Away from CI, skips stay skips.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Generator
from pathlib import Path

import pytest

import shards

pytest_plugins = ("pytester",)

# Skip reason -> the platforms (sys.platform) where that skip is legitimate. On any other
# platform the skip fails under CI like every unlisted one.
#
# Not listed, on purpose: "wsync.py runs as root in the guest" (tests/host/test_sync_*.py,
# test_wsync_cache.py). CI runs as root (.ci/run), so a non-root CI would hide the whole
# sync engine; that must fail, not pass quietly.
ALLOWED_SKIPS: dict[str, frozenset[str]] = {
    "FIFOs are POSIX-only": frozenset({"win32"}),
}


def restore_sigint() -> None:
    """Give Ctrl-C back to this session and every process it starts, if it came in ignored.

    A shell starts a background job (scripts/test's shards: `pytest … &`) with SIGINT ignored,
    the ignore is inherited across exec, and Python installs its KeyboardInterrupt handler only
    when SIGINT is not ignored: every `vmsbx` a test sends SIGINT to (the Ctrl-C tests) then
    went on as if nothing happened. Python's handler (a C-level one) becomes the default again
    in each child at exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


restore_sigint()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    # A skip's longrepr is (path, line, "Skipped: reason").
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def _fail_unless_allowed(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (_in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if sys.platform in ALLOWED_SKIPS.get(reason, frozenset()):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI ({reason}): a skip on CI hides a gap. Install what the test needs in "
        f"scripts/setup (or the test extra in pyproject.toml); if the skip is legitimate on "
        f"{sys.platform}, list its reason in ALLOWED_SKIPS in tests/conftest.py."
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_unless_allowed(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_unless_allowed(report)
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only this session's shard (VMSBX_TEST_SHARD=K/N, see tests/shards.py)."""
    text = os.environ.get("VMSBX_TEST_SHARD", "")
    root = Path(config.rootpath)
    # Only this repository's own session: a pytest run inside a test (pytester, which inherits
    # the environment) has other files and must keep them all.
    if not text or root != Path(__file__).resolve().parents[1]:
        return
    index, count = shards.parse_shard(text)
    groups = {item.nodeid: shards.group_of(item.path.relative_to(root).as_posix()) for item in items}
    weights = shards.load_weights()
    # The weighed files count too, collected or not: a shard keeps the same files whatever
    # subset a command line picks.
    placed = shards.assign([*weights, *groups.values()], weights, count)
    keep = [item for item in items if placed[groups[item.nodeid]] == index]
    dropped = [item for item in items if placed[groups[item.nodeid]] != index]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep
