"""The sync engine against the real guest: wsync.py as pushed by `vmsbx up`, run as root by the
guest's own python3 through the host agent's exec channel (AgentClient.exec), both ways."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from sync_world import sync_in
from vmcli import Cli

from vmsbx.agent.client import AgentClient
from vmsbx.sync.apply import apply
from vmsbx.sync.driver import collect, guest_manifest
from vmsbx.sync.rules import ExcludeRules

pytestmark = pytest.mark.vm
WS = "/var/tmp/vmsbx-sync-test"


def _sh(client: AgentClient, script: str) -> bytes:
    out, err = io.BytesIO(), io.BytesIO()
    code = client.exec(["sh", "-c", script], stdin=None, stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return out.getvalue()


def test_sync_collect_apply_through_the_real_guest(
    cli: Cli, default_vm: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMSBX_HOME", str(cli.home))
    client = AgentClient(str(default_vm["name"]))
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "app.py").write_text("x = 1\n")
    (project / ".env").write_text("SECRET=1\n")
    for index in range(2000):
        (project / "src" / f"m{index:04d}.py").write_text(f"N = {index}\n")
    _sh(client, f"rm -rf {WS} && mkdir -p {WS}/src && ln -s /etc {WS}/src/planted && ln -s /etc {WS}/stale")

    host_cache, guest_cache = tmp_path / "host-cache.json", "/var/tmp/vmsbx-sync-cache.json"
    synced = sync_in(
        client, project, WS, ExcludeRules(), owner=(0, 0), host_cache=host_cache, guest_cache=guest_cache
    )
    started = time.monotonic()
    assert guest_manifest(client, WS) == synced.scan.manifest
    listing = time.monotonic() - started
    assert synced.plan.delete == ("src/planted", "stale")
    assert _sh(client, "cat /etc/hostname; test ! -e /etc/app.py && echo clean").endswith(b"clean\n")
    again = sync_in(client, project, WS, ExcludeRules(), host_cache=host_cache, guest_cache=guest_cache)
    assert (again.plan.files, again.plan.delete) == ((), ())

    _sh(
        client,
        f"cd {WS} && echo 'x = 2' > src/app.py && echo new > new.txt && ln -s /root/.bashrc bashrc"
        " && cp /bin/true tool && chmod 4755 tool",
    )
    collected = collect(client, synced.scan.manifest, WS, tmp_path / "changes")
    changeset = collected.changeset
    report = apply(
        project,
        changeset,
        collected.store,
        base=synced.scan.manifest,
        shown_digest=changeset.digest,
        include_sensitive=False,
    )
    assert set(report.applied) == {"src/app.py", "new.txt", "tool"}
    assert dict(report.refused).keys() == {"bashrc"}
    assert (project / "src" / "app.py").read_text() == "x = 2\n"
    assert (project / "tool").stat().st_mode & 0o7777 == 0o755
    assert (project / ".env").read_text() == "SECRET=1\n"
    print(
        f"\n2,001 files into the TCG guest: {synced.seconds:.1f} s; guest manifest without cache "
        f"{listing:.1f} s; no-change resync with both caches {again.seconds:.1f} s"
    )
    _sh(client, f"rm -rf {WS} /var/tmp/vmsbx-sync-cache.json")
