"""vmsbx must import on a Windows host: no module may import a Unix-only module (termios, fcntl,
pty, tty, resource, pwd, grp) at import time. Checked in a child interpreter where importing
any of them fails, as it does on Windows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_PROBE = r"""
import importlib, json, pkgutil, sys
BLOCKED = {"termios", "fcntl", "pty", "tty", "resource", "pwd", "grp"}

class NotOnWindows:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

for loaded in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
    del sys.modules[loaded]
sys.meta_path.insert(0, NotOnWindows())
import vmsbx
failed, checked = {}, []
for info in pkgutil.walk_packages(vmsbx.__path__, "vmsbx."):
    if info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
        checked.append(info.name)
    except Exception as exc:
        failed[info.name] = repr(exc)
print(json.dumps({"failed": failed, "checked": checked}))
"""


def test_every_module_imports_without_unix_only_modules() -> None:
    orchestrator = Path(__file__).resolve().parents[2] / "orchestrator"
    env = dict(os.environ, PYTHONPATH=f"{orchestrator}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["failed"] == {}
    for module in ("vmsbx.cli.main", "vmsbx.cli.up", "vmsbx.cli.ssh", "vmsbx.providers.wsl2",
                   "vmsbx.providers.multipass", "vmsbx.transport.ssh", "vmsbx.agent.client"):  # fmt: skip
        assert module in result["checked"]


def test_the_blocker_does_block() -> None:
    # Positive control: a module that imports termios at the top fails under the same probe.
    probe = _PROBE.replace("import vmsbx\n", "import vmsbx\nimport termios\n", 1)
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0 and "termios" in done.stderr
