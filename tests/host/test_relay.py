"""The API relay in front of the fake Messages API served over TLS by a throw-away CA.

Real sockets on loopback, real TLS, real HTTP: what the sandbox would send goes in, and the fake
records exactly what reached the "upstream".
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic
from sse import parse_events
from tls_ca import ThrowawayCA, make_ca

from vmsbx.agent.budget import Budget
from vmsbx.agent.credential import OAUTH_BETA, Credential
from vmsbx.agent.relay import Relay
from vmsbx.agent.services import admit_to_relay
from vmsbx.config.models import NetworkMode, SandboxSettings, Settings
from vmsbx.errors import ConfigError
from vmsbx.runs.agentrun import new_token
from vmsbx.runs.lifecycle import admission_request, plan_relay, sandbox_environment

FAKE_KEY = "sk-ant-api03-RECOGNISABLE-fake-key-0123456789"
FAKE_OAUTH = "sk-ant-oat01-RECOGNISABLE-fake-oauth-0123456789"
TOOLS = [{"name": "Bash", "input_schema": {"type": "object"}}]
SCRIPT: list[dict[str, Any]] = [
    {
        "tool_use": {"name": "Bash", "input": {"command": "ls"}},
        "usage": {"input_tokens": 100, "output_tokens": 50},
    },
    {"text": "Done.", "usage": {"input_tokens": 200, "output_tokens": 30, "cache_read_input_tokens": 1000}},
]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, run_id: str, event: dict[str, Any]) -> None:
        self.seen.append((run_id, event))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for _, event in self.seen if event["event"] == name]


class Setup:
    def __init__(self, fake: FakeAnthropic, relay: Relay, events: Events) -> None:
        self.fake = fake
        self.relay = relay
        self.events = events
        self.port = relay.address[1]

    def send(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None = None
    ) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, data, {"content-type": "application/json", **headers})
        return connection.getresponse()


def _setup(script: list[dict[str, Any]], ca: ThrowawayCA, *, trust: bool = True) -> Iterator[Setup]:
    events = Events()
    with FakeAnthropic(script, tls=ca.server_context()) as fake:
        relay = Relay(fake.url, ca_file=ca.ca_file if trust else None, on_event=events, timeout=20)
        relay.start()
        try:
            yield Setup(fake, relay, events)
        finally:
            relay.stop()


_serving = contextlib.contextmanager(_setup)


@pytest.fixture
def setup(ca: ThrowawayCA) -> Iterator[Setup]:
    yield from _setup(SCRIPT, ca)


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage() + (str(record.exc_info) if record.exc_info else "")
        assert "RECOGNISABLE" not in text, record.getMessage()


def _token(
    relay: Relay,
    run_id: str = "run-1",
    credential: Credential | None = None,
    budget: Budget | None = None,
    **options: Any,
) -> str:
    token = new_token()
    relay.register_run(
        run_id, token, credential or Credential("api_key", FAKE_KEY, source="test"), budget, **options
    )
    return token


def _body_chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while chunk := response.read1(4096):
        yield chunk


def _assert_no_secret(events: Events) -> None:
    dumped = json.dumps(events.seen)
    assert "RECOGNISABLE" not in dumped
    assert "vmsbx-run-" not in dumped


def test_valid_token_streams_and_upstream_sees_only_the_real_key(setup: Setup) -> None:
    token = _token(setup.relay)
    response = setup.send(
        "POST",
        "/v1/messages?beta=true",
        {
            "x-api-key": token,
            "authorization": f"Bearer {token}",
            "proxy-authorization": "Basic c2FuZGJveA==",
            "cookie": "session=sandbox",
            "x-forwarded-for": "10.0.0.9",
            "connection": "keep-alive, x-hop-secret",
            "x-hop-secret": "1",
            "anthropic-beta": "claude-code-20250219",
            "anthropic-version": "2023-06-01",
            "accept-encoding": "gzip, br",
        },
        {"model": "claude-opus-5-5", "stream": True, "tools": TOOLS, "messages": []},
    )
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/event-stream")
    events = list(parse_events(_body_chunks(response)))
    assert events[0].event == "message_start"
    assert events[-1].event == "message_stop"

    [seen] = setup.fake.requests
    assert seen.path == "/v1/messages"
    assert seen.query == "beta=true"
    assert seen.headers["x-api-key"] == FAKE_KEY
    for header in ("authorization", "proxy-authorization", "cookie", "x-forwarded-for", "x-hop-secret"):
        assert header not in seen.headers
    assert seen.headers["anthropic-beta"] == "claude-code-20250219"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.headers["host"] == setup.fake.url.removeprefix("https://")
    assert token not in json.dumps(seen.as_json())
    assert seen.body["model"] == "claude-opus-5-5"

    usage = setup.relay.usage("run-1")
    assert (usage.input_tokens, usage.output_tokens, usage.requests) == (100, 50, 1)
    assert usage.cost_usd == pytest.approx((100 * 4 + 50 * 20) / 1e6)
    [event] = setup.events.named("api_request")
    assert event["status"] == 200
    assert event["path"] == "/v1/messages"
    assert (event["input_tokens"], event["output_tokens"], event["run_total_tokens"]) == (100, 50, 150)
    _assert_no_secret(setup.events)


def test_keep_alive_connection_carries_several_requests(setup: Setup) -> None:
    token = _token(setup.relay)
    connection = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=20)
    for _ in range(2):
        connection.request(
            "POST", "/v1/messages", json.dumps({"tools": TOOLS, "stream": True}), {"x-api-key": token}
        )
        response = connection.getresponse()
        assert response.status == 200
        response.read()
    assert setup.relay.usage("run-1").total_tokens == 150 + 1230
    assert len(setup.fake.requests) == 2


def test_oauth_credential_goes_as_bearer_with_the_oauth_beta(setup: Setup) -> None:
    token = _token(setup.relay, credential=Credential("oauth_token", FAKE_OAUTH, source="test"))
    response = setup.send(
        "POST",
        "/v1/messages",
        {"x-api-key": token, "anthropic-beta": "claude-code-20250219"},
        {"tools": TOOLS},
    )
    assert response.status == 200
    response.read()
    [seen] = setup.fake.requests
    assert seen.headers["authorization"] == f"Bearer {FAKE_OAUTH}"
    assert "x-api-key" not in seen.headers
    assert seen.headers["anthropic-beta"] == f"claude-code-20250219,{OAUTH_BETA}"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "vmsbx-run-not-a-live-token-at-all-0123456789"},
        {"authorization": "Bearer vmsbx-run-not-a-live-token-at-all-0123456789"},
        {"x-api-key": FAKE_KEY},
        {"authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["none", "wrong-key", "wrong-bearer", "real-key", "basic"],
)
def test_without_a_live_token_nothing_reaches_upstream(setup: Setup, headers: dict[str, str]) -> None:
    _token(setup.relay)
    response = setup.send("POST", "/v1/messages", headers, {"tools": TOOLS})
    assert response.status == 401
    assert json.loads(response.read())["error"]["type"] == "authentication_error"
    assert setup.fake.requests == []
    assert setup.events.seen == []


def test_a_good_token_next_to_a_bad_one_is_refused(setup: Setup) -> None:
    token = _token(setup.relay)
    response = setup.send("POST", "/v1/messages", {"x-api-key": token, "authorization": "Bearer other"}, {})
    assert response.status == 401
    assert setup.fake.requests == []


def test_unregistered_run_token_is_refused(setup: Setup) -> None:
    token = _token(setup.relay)
    ok = setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS})
    assert ok.status == 200
    ok.read()
    final = setup.relay.unregister_run("run-1")
    assert final is not None
    assert final.total_tokens == 150
    refused = setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS})
    assert refused.status == 401
    assert len(setup.fake.requests) == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("POST", "/v1/files"),
        ("POST", "/v1/messages/batches"),
        ("GET", "/v1/messages"),
        ("HEAD", "/api/hello"),
        ("POST", "/v1/messages?beta=true&x=1"),
        ("POST", "/v1/messages/../complete"),
    ],
)
def test_routes_other_than_the_agent_api_are_forbidden(setup: Setup, method: str, path: str) -> None:
    token = _token(setup.relay)
    response = setup.send(method, path, {"x-api-key": token}, {"tools": TOOLS} if method == "POST" else None)
    assert response.status == 403
    if method != "HEAD":
        assert json.loads(response.read())["error"]["type"] == "permission_error"
    assert setup.fake.requests == []
    [event] = setup.events.named("api_refused")
    assert event["reason"] == "route"


def test_count_tokens_is_relayed_and_not_metered(setup: Setup) -> None:
    token = _token(setup.relay)
    response = setup.send("POST", "/v1/messages/count_tokens", {"x-api-key": token}, {"messages": []})
    assert response.status == 200
    assert json.loads(response.read())["input_tokens"] > 0
    assert setup.relay.usage("run-1").total_tokens == 0


def test_upstream_redirect_is_not_followed(ca: ThrowawayCA) -> None:
    for setup in _setup([{"redirect": "/v1/messages/redirected"}], ca):
        token = _token(setup.relay)
        response = setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS})
        assert response.status == 502
        assert response.getheader("location") is None
        assert response.getheader("x-should-retry") == "false"
        assert "redirect" in json.loads(response.read())["error"]["message"]
        assert [r.path for r in setup.fake.requests] == ["/v1/messages"]


def test_without_the_ca_tls_verification_fails(ca: ThrowawayCA) -> None:
    for setup in _setup(SCRIPT, ca, trust=False):
        token = _token(setup.relay)
        response = setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS})
        assert response.status == 502
        assert "certificate" in json.loads(response.read())["error"]["message"]
        # The handshake failed before any request was sent: the key never left the host.
        assert setup.fake.requests == []
        [event] = setup.events.named("api_request")
        assert event["status"] == 502


def test_token_budget_stops_further_requests(ca: ThrowawayCA) -> None:
    script = [
        {
            "repeat_tool_use": {"name": "Bash", "input": {"command": "true"}},
            "usage": {"input_tokens": 100, "output_tokens": 20},
        }
    ]
    for setup in _setup(script, ca):
        token = _token(setup.relay, budget=Budget(tokens=300))
        statuses = []
        for _ in range(5):
            response = setup.send(
                "POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS, "stream": True}
            )
            statuses.append(response.status)
            last = response.read()
        assert statuses == [200, 200, 200, 402, 402]
        error = json.loads(last)["error"]
        assert error["type"] == "billing_error"
        assert "vmsbx budget exhausted" in error["message"]
        assert len(setup.fake.requests) == 3
        [exhausted] = setup.events.named("budget_exhausted")
        assert exhausted["budget_tokens"] == 300
        assert exhausted["usage"]["total_tokens"] == 360
        assert [e["reason"] for e in setup.events.named("api_refused")] == ["budget", "budget"]
        _assert_no_secret(setup.events)


def test_dollar_budget_stops_further_requests(ca: ThrowawayCA) -> None:
    # claude-opus-5 costs $4 per million input tokens: each turn costs $0.40.
    script = [
        {
            "repeat_tool_use": {"name": "Bash", "input": {}},
            "usage": {"input_tokens": 100_000, "output_tokens": 0},
        }
    ]
    for setup in _setup(script, ca):
        token = _token(setup.relay, budget=Budget(usd=1.0))
        statuses = []
        for _ in range(4):
            response = setup.send(
                "POST", "/v1/messages", {"x-api-key": token}, {"model": "claude-opus-5-5", "tools": TOOLS}
            )
            statuses.append(response.status)
            response.read()
        assert statuses == [200, 200, 200, 402]
        assert setup.relay.usage("run-1").cost_usd == pytest.approx(1.2)


def test_stream_is_passed_on_before_upstream_finishes(ca: ThrowawayCA) -> None:
    for setup in _setup([{"text": "held", "hold": True}], ca):
        token = _token(setup.relay)
        response = setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS, "stream": True})
        assert response.status == 200
        events = parse_events(_body_chunks(response))
        first = next(events)
        # The fake is still holding the rest of the message: the relay did not wait for it.
        assert first.event == "message_start"
        assert setup.relay.usage("run-1").requests == 0
        setup.fake.release()
        rest = [e.event for e in events]
        assert rest[-1] == "message_stop"
        assert setup.relay.usage("run-1").requests == 1


def test_oversized_or_chunked_bodies_are_refused(setup: Setup) -> None:
    token = _token(setup.relay)
    connection = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=20)
    connection.putrequest("POST", "/v1/messages")
    connection.putheader("x-api-key", token)
    connection.putheader("content-length", str(64 * 1024 * 1024))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=20)
    connection.request(
        "POST", "/v1/messages", iter([b"{}"]), {"x-api-key": token, "transfer-encoding": "chunked"}
    )
    assert connection.getresponse().status == 400
    connection = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=20)
    connection.putrequest("POST", "/v1/messages")
    connection.putheader("x-api-key", token)
    connection.putheader("content-length", "2")
    connection.putheader("content-length", "40")
    connection.endheaders(b"{}")
    assert connection.getresponse().status == 400
    assert setup.fake.requests == []


def test_plain_http_upstream_is_refused_unless_loopback() -> None:
    with pytest.raises(ConfigError, match="plain http"):
        Relay("http://api.anthropic.com")
    Relay("http://127.0.0.1:9")  # loopback test servers are fine


def test_bad_ca_file_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ConfigError, match="api_ca_file"):
        Relay("https://127.0.0.1:9", ca_file=bogus)


def test_runs_are_accounted_apart(setup: Setup) -> None:
    first = _token(setup.relay, "run-a")
    second = _token(setup.relay, "run-b", credential=Credential("api_key", FAKE_KEY + "-b", source="test"))
    for token in (first, second):
        response = setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS})
        assert response.status == 200
        response.read()
    assert setup.relay.usage("run-a").total_tokens == 150
    assert setup.relay.usage("run-b").total_tokens == 1230
    assert [r.headers["x-api-key"] for r in setup.fake.requests] == [FAKE_KEY, FAKE_KEY + "-b"]
    assert {run_id for run_id, _ in setup.events.seen} == {"run-a", "run-b"}
    with pytest.raises(ValueError, match="already holds"):
        setup.relay.register_run("run-c", first, Credential("api_key", FAKE_KEY, source="test"))
    with pytest.raises(ValueError, match="32"):
        setup.relay.register_run("run-d", "short", Credential("api_key", FAKE_KEY, source="test"))


def test_stop_cuts_streams_in_flight(ca: ThrowawayCA) -> None:
    for setup in _setup([{"text": "held", "hold": True}], ca):
        token = _token(setup.relay)
        response = setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS, "stream": True})
        assert response.status == 200
        assert next(parse_events(_body_chunks(response))).event == "message_start"
        started = time.monotonic()
        setup.relay.stop()
        with pytest.raises((http.client.IncompleteRead, OSError)):
            while response.read1(4096):
                pass
        assert time.monotonic() - started < 5
        with pytest.raises(OSError):
            setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS})


def _wait_for(condition: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_client_that_hangs_up_is_settled_at_its_max_tokens(ca: ThrowawayCA) -> None:
    # The output count arrives only in the last message_delta: a client that leaves before it
    # must not be charged the 1 token message_start reports. A long text (hundreds of
    # relayed chunks) makes sure the relay meets the closed socket well before that event.
    script = [{"text": "x" * 300_000, "hold": True, "usage": {"input_tokens": 100, "output_tokens": 9}}]
    with _serving(script, ca) as setup:
        token = _token(setup.relay)
        response = setup.send(
            "POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS, "stream": True, "max_tokens": 5000}
        )
        assert next(parse_events(_body_chunks(response))).event == "message_start"
        response.close()
        setup.fake.release()
        _wait_for(lambda: setup.relay.usage("run-1").requests == 1, "the aborted stream to be settled")
        usage = setup.relay.usage("run-1")
        assert (usage.input_tokens, usage.output_tokens) == (100, 5000)
        [event] = setup.events.named("api_request")
        assert event["output_tokens"] == 5000 and event["cut_off"] is True


def test_concurrent_requests_of_a_run_are_capped_and_wait_for_a_slot(ca: ThrowawayCA) -> None:
    script = [{"text": "held", "hold": True, "usage": {"input_tokens": 100, "output_tokens": 20}}] * 12
    with _serving(script, ca) as setup:
        token = _token(setup.relay, budget=Budget(tokens=100))  # the default cap: 4
        statuses: list[int] = []

        def one() -> None:
            response = setup.send(
                "POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS, "stream": True}
            )
            response.read()
            statuses.append(response.status)

        threads = [threading.Thread(target=one) for _ in range(12)]
        for thread in threads:
            thread.start()
        _wait_for(lambda: len(setup.fake.requests) >= 4, "four requests upstream")
        time.sleep(1.0)
        assert len(setup.fake.requests) == 4  # the other eight wait at the relay
        setup.fake.release()
        for thread in threads:
            thread.join(timeout=30)
        # The first turn of 120 tokens used up the 100-token cap: the waiting requests meet it.
        assert sorted(statuses) == [200] * 4 + [402] * 8
        assert len(setup.fake.requests) == 4


def test_a_request_that_finds_no_slot_in_time_gets_a_429(ca: ThrowawayCA) -> None:
    with _serving([{"text": "held", "hold": True}], ca) as setup:
        setup.relay.slot_wait = 0.5
        token = _token(setup.relay, max_concurrent=1)
        first = setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS, "stream": True})
        assert first.status == 200
        second = setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS, "stream": True})
        assert second.status == 429
        assert second.getheader("retry-after") is not None
        error = json.loads(second.read())["error"]
        assert error["type"] == "rate_limit_error" and "at most 1 API request" in error["message"]
        assert [e["reason"] for e in setup.events.named("api_refused")] == ["busy"]
        setup.fake.release()
        first.read()
        assert len(setup.fake.requests) == 1


def test_a_waiting_request_whose_client_left_or_whose_run_ended_goes_nowhere(ca: ThrowawayCA) -> None:
    for ending in ("client leaves", "run ends"):
        with _serving([{"text": "held", "hold": True}] * 2, ca) as setup:
            token = _token(setup.relay, max_concurrent=1)
            first = setup.send("POST", "/v1/messages", {"x-api-key": token}, {"tools": TOOLS, "stream": True})
            assert first.status == 200
            waiting = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=20)
            waiting.request("POST", "/v1/messages", json.dumps({"tools": TOOLS}), {"x-api-key": token})
            time.sleep(0.5)  # it now waits for the run's one slot
            if ending == "client leaves":
                waiting.close()
            else:
                setup.relay.unregister_run("run-1")
            setup.fake.release()
            first.read()
            if ending == "run ends":
                assert waiting.getresponse().status == 401
            time.sleep(0.5)
            assert len(setup.fake.requests) == 1, ending


@pytest.mark.parametrize("network", ["api", "allowlist", "open"])
def test_every_policy_plans_its_run_through_the_relay_and_its_budget(
    ca: ThrowawayCA, network: NetworkMode
) -> None:
    # The CLI's plan for the run, handed to the real relay the way the host agent does.
    settings = Settings(
        sandbox=SandboxSettings(network=network, allow_hosts=("github",) if network == "allowlist" else ())
    )
    access = plan_relay(settings, "300", required=True, environ={"ANTHROPIC_API_KEY": FAKE_KEY})
    token = new_token()
    request = admission_request(settings, "run-1", token, access)
    assert request is not None and isinstance(request.get("relay"), dict)
    script = [
        {
            "repeat_tool_use": {"name": "Bash", "input": {}},
            "usage": {"input_tokens": 100, "output_tokens": 20},
        }
    ]
    with _serving(script, ca) as setup:
        admit_to_relay(setup.relay, "run-1", request["relay"])
        env = sandbox_environment(settings, {"relay": setup.port, "proxy": 1}, token, access)
        assert FAKE_KEY not in json.dumps(env)
        statuses = []
        for _ in range(5):
            response = setup.send(
                "POST",
                "/v1/messages",
                {"x-api-key": env["ANTHROPIC_API_KEY"]},
                {"tools": TOOLS, "stream": True},
            )
            statuses.append(response.status)
            response.read()
        assert statuses == [200, 200, 200, 402, 402]
        assert [r.headers["x-api-key"] for r in setup.fake.requests] == [FAKE_KEY] * 3
