"""Claude Code in the real guest: `up` pushes the verified program, it runs as an unprivileged
user, a second `up` pushes nothing, a corrupted host cache stops `up`, and the guest-fetch path
downloads from a registry mirror on the host's loopback (reached through an SSH reverse forward)
and refuses a tarball that does not match the pinned integrity.

Tests in this module run in file order and share the session's guest. The push of the 402 MB
program takes about a minute under TCG on an idle host (several on a loaded one).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from vmcli import Cli

from vmsbx.claude.package import lock, metadata_url, tarball_path
from vmsbx.config.models import AgentSettings
from vmsbx.contract import CLAUDE_MARKER, claude_binary
from vmsbx.paths import cache_root
from vmsbx.sshinfo import SSHInfo
from vmsbx.transport import Connection

pytestmark = pytest.mark.vm

# The session's VMs skip the install (conftest); this module's `up` calls ask for it.
WITH_CLAUDE = {"VMSBX_AGENT_INSTALL": "auto"}

VERSION = AgentSettings().claude_version
BINARY = claude_binary(VERSION)
INTEGRITY = lock()[VERSION]["linux-x64"]


def _probe(cli: Cli) -> dict[str, str]:
    """One round trip: the program's inode/mtime/owner/mode, and `claude --version` as nobody."""
    script = (
        'stat -c "%i %Y %U %a" "$1"; '
        "cd /tmp && HOME=/tmp setpriv --reuid=nobody --regid=nogroup --clear-groups -- "
        '"$1" --version; echo "exit=$?"; id -u nobody; cat "$2"'
    )
    out = cli.ok("ssh", "--", "sh", "-c", script, "probe", BINARY, CLAUDE_MARKER).stdout.decode()
    lines = out.strip().splitlines()
    return {"stat": lines[0], "version": lines[1], "exit": lines[2], "uid": lines[3], "marker": lines[4]}


def test_up_installs_claude_and_it_runs_unprivileged(cli: Cli, default_vm: dict[str, object]) -> None:
    assert default_vm["claude"] == "installed"
    assert default_vm["claude_version"] == VERSION
    probe = _probe(cli)
    _inode, _mtime, owner, mode = probe["stat"].split()
    assert (owner, mode) == ("root", "755")
    assert probe["version"].startswith(VERSION)
    assert "Claude Code" in probe["version"]
    assert probe["exit"] == "exit=0"
    assert probe["uid"] != "0"
    assert probe["marker"] == f"{VERSION} linux-x64 {INTEGRITY}"
    # The sandbox cannot replace it: root-owned, read-only to everyone else.
    denied = cli.run(
        "ssh", "--", "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
        "sh", "-c", 'echo x >> "$1"', "w", BINARY,
    )  # fmt: skip
    assert denied.returncode != 0


def test_second_up_does_not_push_again(cli: Cli, default_vm: dict[str, object]) -> None:
    before = _probe(cli)["stat"]
    again = json.loads(cli.ok("up", "--json", extra_env=WITH_CLAUDE).stdout)
    assert isinstance(again, dict)
    assert again["claude"] == "present"
    assert _probe(cli)["stat"] == before  # same inode and mtime: nothing was rewritten
    rows = cli.json("status")
    assert isinstance(rows, list)
    assert next(row for row in rows if row["name"] == "default")["claude"] == VERSION


def test_corrupted_cache_stops_up(cli: Cli, default_vm: dict[str, object], tmp_path: Path) -> None:
    # A private cache (the shared one stays intact for everyone else): the built images by link,
    # the Claude Code tarball as a copy with one byte flipped.
    shared = cache_root()
    private = tmp_path / "cache"
    private.mkdir()
    for entry in shared.iterdir():
        if entry.name != "claude":
            (private / entry.name).symlink_to(entry)
    good = tarball_path(VERSION, "linux-x64", cache=shared / "claude")
    bad = tarball_path(VERSION, "linux-x64", cache=private / "claude")
    bad.parent.mkdir(parents=True)
    shutil.copyfile(good, bad)
    with bad.open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)[0]
        handle.seek(1000)
        handle.write(bytes([byte ^ 0x01]))
    refused = cli.run("up", extra_env={**WITH_CLAUDE, "VMSBX_CACHE": str(private)}, timeout=300)
    assert refused.returncode == 3, refused.stderr.decode()
    message = refused.stderr.decode()
    assert "does not match its integrity" in message
    assert f"rm -r {bad.parent}" in message
    assert "vmsbx up" in message


class _Mirror(BaseHTTPRequestHandler):
    """A registry mirror: the version document, and a tarball that is either the real one or not."""

    tarball: Path
    corrupt = False
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        name = "/@anthropic-ai%2Fclaude-code-linux-x64/" + VERSION
        if self.path == name:
            host = self.headers["Host"]
            body = json.dumps({
                "name": "@anthropic-ai/claude-code-linux-x64",
                "version": VERSION,
                "dist": {"integrity": INTEGRITY, "tarball": f"http://{host}/tarballs/claude.tgz"},
            }).encode()  # fmt: skip
            self._send(body)
        elif self.path == "/tarballs/claude.tgz":
            if self.corrupt:
                self._send(b"\x1f\x8b not the package" * 4096)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(self.tarball.stat().st_size))
            self.end_headers()
            with self.tarball.open("rb") as source:
                shutil.copyfileobj(source, self.wfile, 1 << 20)
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror_in_guest(cli: Cli, default_vm: dict[str, object]) -> Iterator[tuple[type[_Mirror], str]]:
    """The mirror on the host's loopback, and its URL as the guest sees it (a reverse forward)."""
    handler = type("Mirror", (_Mirror,), {
        "tarball": tarball_path(VERSION, "linux-x64", cache=cache_root() / "claude"), "requests": [],
    })  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    vm_dir = cli.home / "vms" / "default"
    info = SSHInfo(
        host="127.0.0.1",
        port=int(str(default_vm["ssh"]).rsplit(":", 1)[1]),
        user="root",
        key_file=vm_dir / "keys" / "client_ed25519",
        known_hosts=vm_dir / "known_hosts",
        host_key_alias="vmsbx-default",
    )
    try:
        with Connection(info) as conn:
            conn.open()
            forward = conn.forward_remote("127.0.0.1", 0, "127.0.0.1", server.server_address[1])
            yield handler, f"http://127.0.0.1:{forward.remote_port}"
            forward.close()
    finally:
        server.shutdown()


def test_guest_fetch_refuses_a_mirror_serving_a_wrong_tarball(
    cli: Cli, mirror_in_guest: tuple[type[_Mirror], str]
) -> None:
    handler, url = mirror_in_guest
    handler.corrupt = True
    cli.ok("ssh", "--", "rm", "-rf", "/usr/local/lib/vmsbx/claude")
    env = {"VMSBX_AGENT_INSTALL": "guest-fetch", "VMSBX_AGENT_REGISTRY": url}
    refused = cli.run("up", "--json", extra_env=env, timeout=600)
    assert refused.returncode == 10, refused.stderr.decode()
    assert "does not match the pinned integrity" in refused.stderr.decode()
    assert handler.requests == [metadata_url("", "linux-x64", VERSION), "/tarballs/claude.tgz"]
    script = 'ls -A "$1"/*/ 2>/dev/null; cat "$2" 2>/dev/null'
    left = cli.run("ssh", "--", "sh", "-c", script, "x", "/usr/local/lib/vmsbx/claude", CLAUDE_MARKER)
    assert left.stdout == b""  # no program, no marker, no partial file


def test_guest_fetch_installs_from_a_loopback_mirror(
    cli: Cli, mirror_in_guest: tuple[type[_Mirror], str]
) -> None:
    handler, url = mirror_in_guest
    env = {"VMSBX_AGENT_INSTALL": "guest-fetch", "VMSBX_AGENT_REGISTRY": url}
    summary = json.loads(cli.ok("up", "--json", extra_env=env, timeout=900).stdout)
    assert summary["claude"] == "installed"
    assert "/tarballs/claude.tgz" in handler.requests
    probe = _probe(cli)
    assert probe["version"].startswith(VERSION)
    assert probe["exit"] == "exit=0"
    assert probe["marker"] == f"{VERSION} linux-x64 {INTEGRITY}"
    # And the push path now sees it as present: the marker is the same whichever path wrote it.
    assert json.loads(cli.ok("up", "--json", extra_env=WITH_CLAUDE).stdout)["claude"] == "present"
