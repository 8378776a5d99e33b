"""Load the guest's programs (provision/guest) on the host the way the guest has them: a flat
folder in which vmsbx.contract is the module `contract` (vmsbx pushes that very file beside the
launcher). The contract is loaded from its file as a module of its own, not as vmsbx.contract,
so that the guest code under test shares no object with the host package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import vmsbx.contract

GUEST = Path(__file__).resolve().parents[2] / "provision" / "guest"
CONTRACT = Path(vmsbx.contract.__file__)


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_guest(name: str, *, as_name: str | None = None) -> ModuleType:
    """provision/guest/<name>.py, with `contract` (and its sibling modules) importable."""
    if "contract" not in sys.modules:
        _load("contract", CONTRACT)
    sys.path.insert(0, str(GUEST))
    try:
        return _load(as_name or f"{name}_under_test", GUEST / f"{name}.py")
    finally:
        sys.path.remove(str(GUEST))
