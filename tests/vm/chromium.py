"""Headless Chromium for the report tests: the DOM it builds from a page, and a screenshot."""

from __future__ import annotations

import shutil
import subprocess


def chromium() -> str:
    binary = shutil.which("chromium")
    assert binary is not None, "chromium is missing: `bash scripts/setup` installs it"
    return binary


def chromium_run(*args: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: the tests run as root, where Chromium's own sandbox cannot start.
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
