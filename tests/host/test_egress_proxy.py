"""The egress proxy on this host, against real servers on loopback: HTTP forwarding, CONNECT
(with real TLS through the tunnel), SOCKS5, every refusal, rebinding, hostile heads, the log.

Test names reach the test servers through a resolver the test injects. That does not weaken
the address rules: the proxy checks whatever the resolver returns, so every test that must get
through also lists its loopback server by IP ("127.0.0.1:PORT"), as a user would have to.
"""

from __future__ import annotations

import datetime as dt
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from egress_servers import LoopServer, MapResolver, tls_server_context

from vmsbx.agent.egress.proxy import EgressProxy, ProxyLimits
from vmsbx.agent.egress.rules import EgressRules

RUN = "r-egress-test"


@dataclass
class Harness:
    proxy: EgressProxy
    records: list[dict[str, object]]
    resolver: MapResolver

    @property
    def port(self) -> int:
        return self.proxy.address[1]


@pytest.fixture
def server() -> Iterator[LoopServer]:
    srv = LoopServer("127.0.0.1", b"GOOD").start()
    yield srv
    srv.close()


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., Harness]]:
    proxies: list[EgressProxy] = []

    def make(
        allow: Sequence[str],
        answers: dict[str, Sequence[str] | Callable[[int], Sequence[str]]],
        policy: str = "allowlist",
        limits: ProxyLimits | None = None,
    ) -> Harness:
        records: list[dict[str, object]] = []
        resolver = MapResolver(answers)
        rules = EgressRules.from_settings(policy, tuple(allow))  # type: ignore[arg-type]
        proxy = EgressProxy(
            RUN, rules, lambda run, record: records.append(record), resolver=resolver, limits=limits
        )
        proxy.start()
        proxies.append(proxy)
        return Harness(proxy, records, resolver)

    yield make
    for proxy in proxies:
        proxy.close()


def _wait_records(harness: Harness, count: int, timeout: float = 5.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while len(harness.records) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(harness.records) >= count, harness.records
    return harness.records


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_all(sock)


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def _socks_connect(
    port: int, host: str | bytes, dest_port: int, command: int = 1
) -> tuple[socket.socket, int]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    address = b"\x01" + host if isinstance(host, bytes) else b"\x03" + bytes([len(host)]) + host.encode()
    sock.sendall(b"\x05" + bytes([command]) + b"\x00" + address + dest_port.to_bytes(2, "big"))
    reply = sock.recv(10)
    assert reply[0] == 5 and len(reply) == 10, reply
    return sock, reply[1]


# --- reaching an allowed destination -----------------------------------------------------------


def test_plain_http_forwarding_reaches_an_allowed_name(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    h = make_proxy(
        [f"allowed.test:{server.port}", f"127.0.0.1:{server.port}"], {"allowed.test": ["127.0.0.1"]}
    )
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
    conn.request(
        "GET", f"http://Allowed.Test:{server.port}/path?q=1", headers={"Proxy-Connection": "keep-alive"}
    )
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200
    assert body.startswith(b"GOOD\nGET /path?q=1 HTTP/1.1\r\n")
    head = server.heads[-1].lower()
    assert b"proxy-connection" not in head  # hop-by-hop headers stay with the proxy
    assert b"connection: close" in head
    (record,) = _wait_records(h, 1)
    assert record["kind"] == "GET"
    assert record["host"] == "allowed.test"
    assert record["port"] == server.port
    assert record["address"] == "127.0.0.1"
    assert record["decision"] == "allow"
    assert record["rule"] == f"allowed.test:{server.port}"
    assert record["run"] == RUN
    assert record["bytes_down"] == len(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert int(record["bytes_up"]) > 0  # type: ignore[call-overload]


def test_connect_tunnels_real_tls_to_an_allowed_name(
    make_proxy: Callable[..., Harness], tmp_path: Path
) -> None:
    context, cert_file = tls_server_context(tmp_path, "secure.test")
    tls_server = LoopServer("127.0.0.1", b"TLS", tls=context).start()
    try:
        h = make_proxy(
            [f"secure.test:{tls_server.port}", f"127.0.0.1:{tls_server.port}"], {"secure.test": ["127.0.0.1"]}
        )
        client_context = ssl.create_default_context(cafile=str(cert_file))
        conn = http.client.HTTPSConnection("127.0.0.1", h.port, timeout=5, context=client_context)
        conn.set_tunnel("secure.test", tls_server.port)
        conn.request("GET", "/over-tls")
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 200
        assert body.startswith(b"TLS\nGET /over-tls HTTP/1.1\r\n")  # the server checked SNI/cert: real TLS
        (record,) = _wait_records(h, 1)
        assert (record["kind"], record["decision"], record["host"]) == ("CONNECT", "allow", "secure.test")
        assert int(record["bytes_up"]) > 200 and int(record["bytes_down"]) > 200  # type: ignore[call-overload]
    finally:
        tls_server.close()


def test_socks5_reaches_an_allowed_name_by_domain(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    h = make_proxy([f"git.test:{server.port}", f"127.0.0.1:{server.port}"], {"git.test": ["127.0.0.1"]})
    sock, code = _socks_connect(h.port, "git.test", server.port)
    with sock:
        assert code == 0x00
        sock.sendall(b"SSH-2.0-probe\r\n\r\n")
        answer = _read_all(sock)
    assert b"GOOD\nSSH-2.0-probe" in answer
    (record,) = _wait_records(h, 1)
    assert record["kind"] == "SOCKS"
    assert record["decision"] == "allow"
    assert record["bytes_up"] == len(b"SSH-2.0-probe\r\n\r\n")
    assert record["bytes_down"] == len(answer)


def test_socat_style_connect_as_git_ssh_uses_it(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    # What `socat - PROXY:127.0.0.1:%h:%p,proxyport=N` (GIT_SSH_COMMAND's proxy command) sends.
    h = make_proxy([f"github.test:{server.port}", f"127.0.0.1:{server.port}"], {"github.test": ["127.0.0.1"]})
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as sock:
        sock.sendall(f"CONNECT github.test:{server.port} HTTP/1.0\r\n\r\n".encode())
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        sock.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")
        assert b"GOOD\nSSH-2.0-OpenSSH" in _read_all(sock)


# --- refusals ----------------------------------------------------------------------------------


def test_a_name_not_listed_gets_403_with_the_reason_and_is_logged(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    h = make_proxy([f"allowed.test:{server.port}", f"127.0.0.1:{server.port}"], {"other.test": ["127.0.0.1"]})
    answer = _exchange(
        h.port, f"CONNECT other.test:{server.port} HTTP/1.1\r\nHost: other.test\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"not in sandbox.allow_hosts" in answer
    assert f'add "other.test:{server.port}"'.encode() in answer
    plain = _exchange(h.port, f"GET http://other.test:{server.port}/ HTTP/1.1\r\n\r\n".encode())
    assert plain.startswith(b"HTTP/1.1 403")
    records = _wait_records(h, 2)
    assert [(r["kind"], r["decision"], r["rule"], r["host"]) for r in records] == [
        ("CONNECT", "deny", "not-listed", "other.test"),
        ("GET", "deny", "not-listed", "other.test"),
    ]
    assert h.resolver.calls == {}  # refused before any DNS lookup
    assert server.heads == []


def test_policy_api_denies_every_name_with_a_hint(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    h = make_proxy([], {"allowed.test": ["127.0.0.1"]}, policy="api")
    answer = _exchange(h.port, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403")
    assert b'network policy "api"' in answer
    assert _wait_records(h, 1)[0]["rule"] == "policy"


def test_wildcard_matches_subdomains_not_the_bare_name_nor_a_look_alike(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    names = ["sub.wild.test", "deep.sub.wild.test", "wild.test", "evil-wild.test"]
    h = make_proxy(
        [f"*.wild.test:{server.port}", f"127.0.0.1:{server.port}"], {name: ["127.0.0.1"] for name in names}
    )
    status = {}
    for name in names:
        answer = _exchange(h.port, f"GET http://{name}:{server.port}/ HTTP/1.1\r\n\r\n".encode())
        status[name] = answer.split(b" ", 2)[1]
    assert status == {
        "sub.wild.test": b"200",
        "deep.sub.wild.test": b"200",
        "wild.test": b"403",
        "evil-wild.test": b"403",
    }


def test_a_raw_ip_is_refused_unless_listed_as_such(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    h = make_proxy([f"allowed.test:{server.port}"], {})
    assert _exchange(h.port, f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n\r\n".encode()).startswith(
        b"HTTP/1.1 403"
    )
    assert _exchange(h.port, b"CONNECT 140.82.112.3:443 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 403")
    assert _exchange(h.port, b"CONNECT [::ffff:127.0.0.1]:22 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 403")
    sock, code = _socks_connect(h.port, socket.inet_aton("127.0.0.1"), server.port)
    sock.close()
    assert code == 0x02  # "connection not allowed by ruleset"
    assert server.heads == []
    listed = make_proxy([f"127.0.0.1:{server.port}"], {})
    answer = _exchange(listed.port, f"GET http://127.0.0.1:{server.port}/ip HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.0 200") and b"GOOD" in answer


@pytest.mark.parametrize(
    ("address", "why"),
    [
        (["127.0.0.1"], b"loopback"),
        (["169.254.169.254"], b"link-local"),
        (["::1"], b"loopback"),
        (["::ffff:127.0.0.1"], b"loopback"),
        (["10.0.0.7"], b"private"),
        (["100.100.100.200"], b"carrier-grade NAT"),
        (["fd00:ec2::254"], b"unique-local"),
        (["127.0.0.1", "10.0.0.1"], b"private"),  # one bad answer refuses the name
    ],
)
def test_a_listed_name_resolving_to_a_private_address_is_refused(
    make_proxy: Callable[..., Harness], server: LoopServer, address: list[str], why: bytes
) -> None:
    allow = ["inside.test:443", f"inside.test:{server.port}"]
    if len(address) > 1:
        allow.append(f"127.0.0.1:{server.port}")  # the first answer is fine, the second is not
    h = make_proxy(allow, {"inside.test": address})
    answer = _exchange(h.port, f"CONNECT inside.test:{server.port} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert why in answer
    assert b"by IP" in answer
    (record,) = _wait_records(h, 1)
    assert (record["decision"], record["rule"], record["address"]) == ("deny", "address-forbidden", None)
    assert server.heads == []


def test_dns_rebinding_cannot_move_the_connection(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    # The resolver answers the listed loopback server once, then an unlisted address on which a
    # "secret" server listens. The proxy must connect to the address it checked, resolving once.
    secret = LoopServer("127.0.0.2", b"SECRET").start(port=server.port)
    try:
        h = make_proxy(
            [f"rebind.test:{server.port}", f"127.0.0.1:{server.port}"],
            {"rebind.test": lambda call: ["127.0.0.1"] if call == 1 else ["127.0.0.2"]},
        )
        answer = _exchange(h.port, f"GET http://rebind.test:{server.port}/ HTTP/1.1\r\n\r\n".encode())
        assert b"GOOD" in answer
        assert h.resolver.calls == {"rebind.test": 1}
        assert secret.heads == []
        # The next request resolves again, and the new answer meets the address gate.
        again = _exchange(h.port, f"GET http://rebind.test:{server.port}/ HTTP/1.1\r\n\r\n".encode())
        assert again.startswith(b"HTTP/1.1 403")
        assert secret.heads == []
    finally:
        secret.close()


def test_socks_refuses_udp_and_bind_with_the_proper_codes(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    h = make_proxy([f"git.test:{server.port}", f"127.0.0.1:{server.port}"], {"git.test": ["127.0.0.1"]})
    for command in (3, 2):  # UDP ASSOCIATE, BIND
        sock, code = _socks_connect(h.port, "git.test", server.port, command=command)
        sock.close()
        assert code == 0x07  # command not supported
    sock, code = _socks_connect(h.port, "nope.test", server.port)
    sock.close()
    assert code == 0x02
    records = _wait_records(h, 3)
    assert [(r["kind"], r["decision"]) for r in records] == [
        ("SOCKS-UDP", "deny"),
        ("SOCKS-BIND", "deny"),
        ("SOCKS", "deny"),
    ]
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as sock:
        sock.sendall(b"\x05\x01\x02")  # only username/password offered
        assert sock.recv(2) == b"\x05\xff"
    assert server.heads == []


def test_host_header_must_name_the_url_destination(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    h = make_proxy(
        [f"allowed.test:{server.port}", f"127.0.0.1:{server.port}"], {"allowed.test": ["127.0.0.1"]}
    )
    answer = _exchange(
        h.port,
        f"GET http://allowed.test:{server.port}/ HTTP/1.1\r\nHost: metadata.google.internal\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 400")
    ok = _exchange(
        h.port,
        f"GET http://allowed.test:{server.port}/ HTTP/1.1\r\n"
        f"Host: ALLOWED.test:{server.port}\r\n\r\n".encode(),
    )
    assert ok.startswith(b"HTTP/1.0 200")
    assert len(server.heads) == 1


def test_the_proxy_has_no_other_surface(make_proxy: Callable[..., Harness], server: LoopServer) -> None:
    h = make_proxy(
        [f"allowed.test:{server.port}", f"127.0.0.1:{server.port}"], {"allowed.test": ["127.0.0.1"]}
    )
    for request in (
        b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
        b"GET https://allowed.test/ HTTP/1.1\r\n\r\n",
        b"POST /rules HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        b"GET http://user@allowed.test/ HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello\r\n\r\n",
    ):
        assert _exchange(h.port, request).startswith(b"HTTP/1.1 400"), request
    assert server.heads == []


# --- hostile input is bounded ------------------------------------------------------------------


def test_huge_heads_are_refused_without_reading_them_all(make_proxy: Callable[..., Harness]) -> None:
    h = make_proxy(["allowed.test"], {}, limits=ProxyLimits(head_bytes=8192, head_headers=50))
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as sock:
        line = b"GET http://allowed.test/ HTTP/1.1\r\nX-Big: "
        # A head that never ends: the proxy answers once it holds more than its limit.
        sock.sendall(line + b"a" * (8192 + 100 - len(line)))
        assert _read_all(sock).startswith(b"HTTP/1.1 431")
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(60))
    answer = _exchange(h.port, b"GET http://allowed.test/ HTTP/1.1\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    rules = [r["rule"] for r in _wait_records(h, 2)]
    assert rules == ["head-too-large", "head-too-large"]


def test_a_slow_head_is_cut_off_at_the_deadline(make_proxy: Callable[..., Harness]) -> None:
    h = make_proxy(["allowed.test"], {}, limits=ProxyLimits(head_seconds=1.0))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as sock:
        answer = b""
        for byte in b"GET http://allowed.test/ HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.2)
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            break
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408")
    assert 0.9 < elapsed < 3.0
    assert _wait_records(h, 1)[0]["rule"] == "head-timeout"
    # A client that connects and says nothing is dropped too (and is no request to log).
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as silent:
        assert silent.recv(10) == b""


def test_connections_beyond_the_limit_are_turned_away(make_proxy: Callable[..., Harness]) -> None:
    h = make_proxy(["allowed.test"], {}, limits=ProxyLimits(max_connections=2, head_seconds=3.0))
    held = [socket.create_connection(("127.0.0.1", h.port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", h.port), timeout=5) as third:
            assert _read_all(third).startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()


# --- the decision log --------------------------------------------------------------------------


def test_close_cuts_open_tunnels_and_each_is_recorded_with_its_bytes(
    make_proxy: Callable[..., Harness],
) -> None:
    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen(1)
    port = echo.getsockname()[1]
    h = make_proxy([f"echo.test:{port}", f"127.0.0.1:{port}"], {"echo.test": ["127.0.0.1"]})
    client = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    client.sendall(f"CONNECT echo.test:{port} HTTP/1.1\r\n\r\n".encode())
    assert client.recv(64).startswith(b"HTTP/1.1 200")
    peer, _ = echo.accept()
    client.sendall(b"x" * 1000)
    got = b""
    while len(got) < 1000:
        got += peer.recv(4096)
    peer.sendall(b"y" * 300)
    assert len(client.recv(4096)) > 0
    time.sleep(0.1)
    h.proxy.close()
    (record,) = _wait_records(h, 1)
    assert set(record) == {
        "time", "run", "kind", "host", "port", "address", "decision", "rule", "reason",
        "bytes_up", "bytes_down", "duration",
    }  # fmt: skip
    assert (record["bytes_up"], record["bytes_down"]) == (1000, 300)
    assert record["decision"] == "allow"
    assert dt.datetime.fromisoformat(str(record["time"])).tzinfo is not None
    assert client.recv(10) == b""
    client.close()
    peer.close()
    echo.close()


def test_a_run_proxy_from_settings_writes_network_jsonl(tmp_path: Path, server: LoopServer) -> None:
    from vmsbx.agent.egress.netlog import summarise
    from vmsbx.agent.egress.run_proxy import start_run_proxy
    from vmsbx.config import SandboxSettings

    assert start_run_proxy(RUN, SandboxSettings(network="none"), tmp_path) is None
    settings = SandboxSettings(
        network="allowlist", allow_hosts=(f"Allowed.Test:{server.port}", f"127.0.0.1:{server.port}")
    )
    resolver = MapResolver({"allowed.test": ["127.0.0.1"]})
    proxy = start_run_proxy(RUN, settings, tmp_path / "run", resolver=resolver)
    assert proxy is not None
    try:
        port = proxy.address[1]
        assert b"GOOD" in _exchange(port, f"GET http://allowed.test:{server.port}/ HTTP/1.1\r\n\r\n".encode())
        assert _exchange(port, b"CONNECT evil.example:443 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 403")
    finally:
        proxy.close()
    lines = (tmp_path / "run" / "network.jsonl").read_text().splitlines()
    rows = {s.destination: (s.allowed, s.denied) for s in summarise(lines)}
    assert rows == {f"allowed.test:{server.port}": (1, 0), "evil.example:443": (0, 1)}


def test_open_allows_any_name_but_still_not_the_hosts_own_addresses(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    h = make_proxy([], {"anything.test": ["127.0.0.1"], "meta.test": ["169.254.169.254"]}, policy="open")
    for name in ("anything.test", "meta.test"):
        answer = _exchange(h.port, f"GET http://{name}:{server.port}/ HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 403"), answer
        assert b"by IP" in answer
    assert _exchange(h.port, f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n\r\n".encode()).startswith(
        b"HTTP/1.1 403"
    )
    listed = make_proxy([f"127.0.0.1:{server.port}"], {"anything.test": ["127.0.0.1"]}, policy="open")
    answer = _exchange(listed.port, f"GET http://anything.test:{server.port}/ HTTP/1.1\r\n\r\n".encode())
    assert b"GOOD" in answer
    assert [r["rule"] for r in _wait_records(h, 3)] == ["address-forbidden"] * 3
    assert server.heads[-1].startswith(b"GET / HTTP/1.1")
    assert len(server.heads) == 1


def test_many_clients_at_once_each_get_their_own_answer(
    make_proxy: Callable[..., Harness], server: LoopServer
) -> None:
    h = make_proxy(
        [f"allowed.test:{server.port}", f"127.0.0.1:{server.port}"], {"allowed.test": ["127.0.0.1"]}
    )
    answers: dict[int, bytes] = {}

    def fetch(index: int) -> None:
        request = f"GET http://allowed.test:{server.port}/n{index} HTTP/1.1\r\n\r\n".encode()
        answers[index] = _exchange(h.port, request)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(f"GET /n{i} HTTP/1.1".encode() in answers[i] for i in range(40))
    records = _wait_records(h, 40)
    assert sum(r["decision"] == "allow" for r in records) == 40
