"""Network policies inside the real sandbox: the proxy on the host decides, the sandbox has no
other way out, and every decision is logged.

Targets are servers this test starts: a loopback HTTP server on the host (reached only through
the run's proxy; test names map to it via VMSBX_TEST_RESOLVE, and 127.0.0.1:PORT is listed by IP
as any user would have to), and listeners in the guest's own root network namespace, reachable
*without* the sandbox — so a failure to reach them proves that the sandbox is what blocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmcli import Cli

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve().parent
UDP_PORT = 5599
TCP_PORT = 5598

# One probe script per run (inside the sandbox): each line "name=result".
PROBE = r"""
P="$1"
code() { curl -s -o /dev/null -m 15 -w '%{http_code}' "$@" || true; }
echo "allowed=$(code http://allowed.test:$P/)"
echo "notlisted=$(code http://not-listed.test:$P/)"
echo "wildsub=$(code http://sub.wild.test:$P/)"
echo "wildbare=$(code http://wild.test:$P/)"
echo "lookalike=$(code http://evil-wild.test:$P/)"
echo "socks=$(code --proxy socks5h://127.0.0.1:8788 http://allowed.test:$P/)"
echo "rawip=$(code http://10.0.2.2:$P/)"
python3 - "$P" <<'EOF'
import socket, sys
def tcp(host, port, family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port)); return "open"
    except OSError as exc:
        return "blocked:" + type(exc).__name__
    finally:
        s.close()
print("guest_tcp=" + tcp("10.0.2.15", 5598))
print("guest_sshd=" + tcp("10.0.2.15", 22))
print("loop_sshd=" + tcp("127.0.0.1", 22))
print("ipv6_sshd=" + tcp("::1", 22, socket.AF_INET6))
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"udp-escape", ("10.0.2.15", 5599)); print("udp_send=sent")
except OSError as exc:
    print("udp_send=blocked:" + type(exc).__name__)
try:
    socket.getaddrinfo("allowed.test", 80); print("dns=resolved")
except OSError as exc:
    print("dns=blocked:" + type(exc).__name__)
EOF
"""


@pytest.fixture(scope="module")
def guest_listeners(cli: Cli, default_vm: dict[str, object]) -> Iterator[None]:
    """TCP and UDP listeners in the guest's root network namespace, outside any sandbox."""
    udp = f"socat -u UDP-RECV:{UDP_PORT},bind=10.0.2.15 OPEN:/root/udp.got,creat,append"
    tcp = f"socat TCP-LISTEN:{TCP_PORT},bind=10.0.2.15,fork,reuseaddr SYSTEM:'echo reached'"
    check = f"import socket; s=socket.create_connection(('10.0.2.15', {TCP_PORT}), 5); print(s.recv(9))"
    start = (
        f"rm -f /root/udp.got; (timeout 900 {udp} >/dev/null 2>&1 &); (timeout 900 {tcp} >/dev/null 2>&1 &);"
        f' sleep 1; python3 -c "{check}"'
    )
    assert b"reached" in cli.ok("ssh", "--", "sh", "-c", start).stdout  # positive control
    yield
    cli.run("ssh", "--", "sh", "-c", f"pkill -f 'socat.*{UDP_PORT}'; pkill -f 'socat.*{TCP_PORT}'; true")


@pytest.fixture(scope="module")
def server() -> Iterator[object]:
    from egress_servers import LoopServer

    loop = LoopServer("127.0.0.1", b"test-server").start()
    yield loop
    loop.close()


def _probe(cli: Cli, port: int, *flags: str) -> tuple[dict[str, str], str]:
    done = cli.ok("run", *flags, "--", "sh", "-c", PROBE, "probe", str(port))
    results = dict(line.split("=", 1) for line in done.stdout.decode().splitlines() if "=" in line)
    runs = cli.json("runs")
    assert isinstance(runs, list)
    run_id = str(max(runs, key=lambda run: str(run["started_at"]))["id"])
    return results, run_id


def _always_blocked(results: dict[str, str]) -> None:
    for name in ("guest_tcp", "guest_sshd", "loop_sshd", "ipv6_sshd", "dns"):
        assert results[name].startswith("blocked"), (name, results)


def test_allowlist(cli: Cli, guest_listeners: None, server: object, tmp_path: Path) -> None:
    port = server.port  # type: ignore[attr-defined]
    results, run_id = _probe(
        cli, port, "--network", "allowlist", "--allow", f"allowed.test:{port}",
        "--allow", f"*.wild.test:{port}", "--allow", f"127.0.0.1:{port}",
    )  # fmt: skip
    assert results["allowed"] == "200" and results["socks"] == "200"
    assert results["wildsub"] == "200"
    assert results["notlisted"] == "403" and results["wildbare"] == "403" and results["lookalike"] == "403"
    assert results["rawip"] == "403"
    _always_blocked(results)
    log = [
        json.loads(line) for line in (cli.home / "runs" / run_id / "network.jsonl").read_text().splitlines()
    ]
    allowed = [entry for entry in log if entry["decision"] == "allow"]
    denied = {entry["host"] for entry in log if entry["decision"] == "deny"}
    assert {entry["host"] for entry in allowed} == {"allowed.test", "sub.wild.test"}
    assert all(entry["bytes_down"] > 0 for entry in allowed)
    assert {"not-listed.test", "wild.test", "evil-wild.test", "10.0.2.2"} <= denied
    summary = cli.json("logs", "--network", run_id)
    assert isinstance(summary, list)
    rows = {row["destination"]: row for row in summary}
    assert rows[f"allowed.test:{port}"]["allowed"] == 2  # plain and SOCKS
    assert rows[f"not-listed.test:{port}"]["denied"] == 1
    _no_udp_arrived(cli)


def test_api_policy_denies_and_logs(cli: Cli, guest_listeners: None, server: object) -> None:
    port = server.port  # type: ignore[attr-defined]
    results, run_id = _probe(cli, port, "--network", "api")
    assert results["allowed"] == "403" and results["notlisted"] == "403"
    _always_blocked(results)
    log = (cli.home / "runs" / run_id / "network.jsonl").read_text()
    assert '"decision":"deny"' in log and '"allow"' not in log
    _no_udp_arrived(cli)


def test_none_has_no_network_at_all(cli: Cli, guest_listeners: None, server: object) -> None:
    port = server.port  # type: ignore[attr-defined]
    results, run_id = _probe(cli, port, "--network", "none")
    assert results["allowed"] == "000" and results["socks"] == "000"
    _always_blocked(results)
    assert not (cli.home / "runs" / run_id / "network.jsonl").exists()
    _no_udp_arrived(cli)


def _no_udp_arrived(cli: Cli) -> None:
    got = cli.ok("ssh", "--", "sh", "-c", "cat /root/udp.got 2>/dev/null; true").stdout
    assert b"udp-escape" not in got
