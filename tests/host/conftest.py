"""Host tests use the fakes that ship in tests/fakes (the fake Messages API, a throw-away CA)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
