"""Real-VM tests: one QEMU guest per test session, shared, driven through the real CLI.

The image is cached in the user cache dir (keyed by its recipe hash), so only the first session
on a machine builds it. VM state lives in a throw-away VMSBX_HOME; every VM is destroyed at the
end of the session whatever happened.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The scripted fake of the Messages API (tests/fakes) and the egress test servers (tests/host).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

from fake_anthropic import FakeAnthropic
from vmcli import Cli

WITH_CLAUDE = {"VMSBX_AGENT_INSTALL": "auto"}
TEST_NAMES = ("allowed.test", "not-listed.test", "sub.wild.test", "wild.test", "evil-wild.test")


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    """The scripted fake of the Messages API on loopback, empty: each test scripts its turns."""
    api = FakeAnthropic([])
    api.start()
    yield api
    api.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that reboot the shared guest go last: it comes back on another SSH port, which
    every later test holding the session's `default_vm` summary would trip over."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_vm") is not None)


@pytest.fixture(scope="session")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    home = tmp_path_factory.mktemp("vmsbx-home")
    project = tmp_path_factory.mktemp("project")
    env = dict(os.environ)
    env.update(
        VMSBX_HOME=str(home),
        VMSBX_CONFIG=str(home / "no-user-config.toml"),
        # Tests never give a guest NAT: nothing may leave the machine.
        VMSBX_VM_GUEST_NETWORK="restricted",
        # Only the shared guest gets Claude Code (a 186 MB push under TCG); the extra VMs some
        # tests boot only run commands. The default VM's `up` below and test_claude_install ask
        # for it explicitly.
        VMSBX_AGENT_INSTALL="none",
        # Names the egress tests use, all mapped to their loopback server (the proxy still
        # refuses 127.0.0.1 unless a run lists it by IP, as a user would have to).
        VMSBX_TEST_RESOLVE=",".join(
            f"{name}=127.0.0.1"
            for name in ("allowed.test", "not-listed.test", "sub.wild.test", "wild.test", "evil-wild.test")
        ),
    )
    runner = Cli(env=env, cwd=project)
    yield runner
    for vm_dir in sorted((home / "vms").glob("*")):
        if vm_dir.is_dir() and not vm_dir.name.startswith("."):
            runner.run("destroy", "-y", "--name", vm_dir.name, timeout=120)


@pytest.fixture(scope="session")
def default_vm(cli: Cli) -> dict[str, object]:
    """The shared guest, brought up once by the first test that needs it."""
    summary = json.loads(cli.ok("up", "--json", extra_env=WITH_CLAUDE, timeout=1800).stdout)
    assert isinstance(summary, dict)
    return summary
