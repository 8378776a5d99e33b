"""The guest's own tools (curl, python3, socat, git over ssh) work through the egress proxy with
the environment `env_for_sandbox` gives, over a real SSH reverse forward into the real guest.

This proves the proxy's protocols against the exact client versions in the image. It runs the
clients as root in the guest, outside any sandbox: wiring the proxy into the run's unit (bound
socket and in-sandbox forwarder) and the per-policy wall probes are the run path's tests.
The test servers listen on the host's loopback; test names reach them through the test's
resolver, and the proxy still has to be told their address by IP.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmcli import Cli

from vmsbx.agent.egress.proxy import EgressProxy
from vmsbx.agent.egress.rules import EgressRules
from vmsbx.agent.egress.sandbox_env import env_for_sandbox
from vmsbx.sshinfo import SSHInfo
from vmsbx.transport import Connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))
from egress_servers import LoopServer, MapResolver, tls_server_context

pytestmark = pytest.mark.vm


@pytest.fixture
def guest(cli: Cli, default_vm: dict[str, object]) -> Iterator[Connection]:
    vm_dir = cli.home / "vms" / "default"
    info = SSHInfo(
        host="127.0.0.1",
        port=int(str(default_vm["ssh"]).rsplit(":", 1)[1]),
        user="root",
        key_file=vm_dir / "keys" / "client_ed25519",
        known_hosts=vm_dir / "known_hosts",
        host_key_alias="vmsbx-default",
    )
    with Connection(info) as conn:
        conn.open()
        yield conn


def test_guest_clients_reach_allowed_names_and_are_refused_the_rest(
    guest: Connection, tmp_path: Path
) -> None:
    web = LoopServer("127.0.0.1", b"GOOD").start()
    context, cert_file = tls_server_context(tmp_path, "secure.test")
    tls = LoopServer("127.0.0.1", b"TLS", tls=context).start()
    git = LoopServer("127.0.0.1", b"NOT-SSH").start()
    records: list[dict[str, object]] = []
    allow = [f"{name}:{server.port}" for name, server in (("allowed.test", web), ("secure.test", tls))]
    allow += [f"git.test:{git.port}"] + [f"127.0.0.1:{s.port}" for s in (web, tls, git)]
    resolver = MapResolver({name: ["127.0.0.1"] for name in ("allowed.test", "secure.test", "git.test")})
    proxy = EgressProxy(
        "r-guest-tools",
        EgressRules.from_settings("allowlist", tuple(allow)),
        lambda _run, record: records.append(record),
        resolver=resolver,
    )
    proxy.start()
    try:
        with guest.forward_remote("127.0.0.1", 0, "127.0.0.1", proxy.address[1]) as forward:
            env = env_for_sandbox("allowlist", forward.remote_port)
            guest.put(cert_file, "/tmp/egress-test-ca.pem")
            port = forward.remote_port
            python_probe = (
                "import urllib.request as u; "
                f'print(u.urlopen("http://allowed.test:{web.port}/py").read().decode().split()[0])'
            )
            script = f"""
                one() {{ tr '\\r\\n' '  '; }}
                echo "http=$(curl -sS http://allowed.test:{web.port}/curl-http | one)"
                ca=/tmp/egress-test-ca.pem socks=socks5h://127.0.0.1:{port}
                echo "https=$(curl -sS --cacert $ca https://secure.test:{tls.port}/tls | one)"
                echo "socks=$(curl -sS --proxy $socks http://allowed.test:{web.port}/s | one)"
                echo "denied_http=$(curl -s -o /dev/null -w '%{{http_code}}' http://evil.test/)"
                curl -sS https://evil.test/ 2>/dev/null; echo "denied_https_exit=$?"
                echo "denied_body=$(curl -s http://evil.test/ | one)"
                echo "python=$(python3 -c '{python_probe}')"
                echo "socat=$(printf 'SSH-2.0-probe\\r\\n' \\
                    | socat - PROXY:127.0.0.1:git.test:{git.port},proxyport={port} | one)"
                git ls-remote ssh://git@git.test:{git.port}/repo.git >/dev/null 2>&1; echo "git_exit=$?"
                curl --version | head -1; socat -V | grep 'socat version'; ssh -V 2>&1
            """
            argv = ["env", *(f"{key}={value}" for key, value in env.items()), "sh", "-c", script]
            result = guest.run(argv, timeout=120)
        out = result.stdout.decode(errors="replace")
        lines = dict(
            line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith(" ")
        )
        assert lines["http"].startswith("GOOD"), out
        assert "GET /curl-http HTTP/1.1" in lines["http"]
        assert lines["https"].startswith("TLS"), out
        assert lines["socks"].startswith("GOOD"), out
        assert lines["denied_http"] == "403", out
        assert lines["denied_https_exit"] == "56", out  # curl: CONNECT refused by the proxy
        assert "not in sandbox.allow_hosts" in lines["denied_body"]
        assert lines["python"] == "GOOD", out
        assert "GOOD" not in lines["socat"] and "NOT-SSH" in lines["socat"], out
        assert lines["git_exit"] != "0"  # the test server is no sshd; what matters is who it saw
        ssh_banners = [head for head in git.heads if head.startswith(b"SSH-2.0-OpenSSH")]
        assert ssh_banners, git.heads  # git -> ssh -> ProxyCommand socat -> CONNECT -> the proxy
        print(out)  # the client versions, for the record
    finally:
        proxy.close()
        for server in (web, tls, git):
            server.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(records) < 9:
        time.sleep(0.05)
    seen = {(r["kind"], r["host"], r["decision"]) for r in records}
    assert ("GET", "allowed.test", "allow") in seen
    assert ("CONNECT", "secure.test", "allow") in seen
    assert ("SOCKS", "allowed.test", "allow") in seen
    assert ("GET", "evil.test", "deny") in seen
    assert ("CONNECT", "evil.test", "deny") in seen
    assert ("CONNECT", "git.test", "allow") in seen
