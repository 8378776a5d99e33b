"""Golden files (tests/unit/golden): compare, or rewrite with VMSBX_TEST_UPDATE_GOLDEN=1."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("VMSBX_TEST_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    """`text` must equal golden/<name>; with VMSBX_TEST_UPDATE_GOLDEN=1 it becomes it."""
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
        return
    assert path.is_file(), f"no golden {path}; create it with VMSBX_TEST_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs; regenerate if intended"
