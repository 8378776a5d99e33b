"""Budget parsing, pricing and the usage meter that reads token counts off API responses."""

from __future__ import annotations

import json
import random

import pytest

from vmsbx.agent.budget import (
    FALLBACK_PRICE,
    OUTPUT_CEILING,
    Budget,
    RequestFacts,
    Usage,
    parse_budget,
    price_for,
    read_request,
    usage_from_api,
)
from vmsbx.agent.usage_meter import UsageMeter


@pytest.mark.parametrize(
    ("text", "budget"),
    [
        ("200000", Budget(tokens=200_000)),
        ("200k", Budget(tokens=200_000)),
        ("200K", Budget(tokens=200_000)),
        ("1.5M", Budget(tokens=1_500_000)),
        (" 50 k ", Budget(tokens=50_000)),
        ("$5", Budget(usd=5.0)),
        ("$ 0.50", Budget(usd=0.5)),
        ("5$", Budget(usd=5.0)),
        ("2.25usd", Budget(usd=2.25)),
    ],
)
def test_parse_budget(text: str, budget: Budget) -> None:
    assert parse_budget(text) == budget


@pytest.mark.parametrize(
    "text", ["", "0", "$0", "-5", "$-1", "5 dollars", "1e9", "k", "$", "12 tokens", "9" * 40]
)
def test_parse_budget_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def test_budget_trips_at_the_cap() -> None:
    assert not Budget(tokens=100).exhausted_by(Usage(input_tokens=99))
    assert Budget(tokens=100).exhausted_by(Usage(input_tokens=60, cache_read_input_tokens=40))
    assert Budget(usd=1.0).exhausted_by(Usage(cost_usd=1.0))
    assert not Budget(usd=1.0).exhausted_by(Usage(input_tokens=10**9, cost_usd=0.5))
    assert not Budget().exhausted_by(Usage(input_tokens=10**12, cost_usd=10**6))
    assert Budget(tokens=200_000, usd=5.0).describe() == "200000 tokens and $5.00"


def test_prices_by_family_and_unknown_models_fail_closed() -> None:
    assert price_for("claude-opus-5-5").input == 4.0
    assert price_for("claude-sonnet-4-5-20250929").output == 15.0
    assert price_for("claude-haiku-4-5").cache_read == 0.1
    assert price_for("gpt-4") == FALLBACK_PRICE
    assert price_for(None) == FALLBACK_PRICE
    assert all(FALLBACK_PRICE.output >= price.output for price in (price_for("claude-opus-5"),))
    # The numbers Claude Code 2.1.332 itself reports for 100k tokens of each kind on opus-5-5.
    for field, cost in [
        ("input_tokens", 0.4),
        ("output_tokens", 2.0),
        ("cache_creation_input_tokens", 0.5),
        ("cache_read_input_tokens", 0.02),
    ]:
        assert usage_from_api({field: 100_000}, "claude-opus-5-5").cost_usd == pytest.approx(cost)


def _stream(
    usage_start: dict[str, int], usage_end: dict[str, int], model: str = "claude-sonnet-5-5"
) -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {"model": model, "usage": usage_start}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"text": "x" * 3000}}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage_end},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {name}\r\ndata: {json.dumps(data)}\r\n\r\n" for name, data in events).encode()


def test_meter_reads_sse_usage_across_any_chunking() -> None:
    body = _stream(
        {"input_tokens": 10, "cache_read_input_tokens": 500, "output_tokens": 1},
        {"output_tokens": 77},
    )
    rng = random.Random(4)
    for _ in range(50):
        meter = UsageMeter("text/event-stream; charset=utf-8", None)
        cut = 0
        while cut < len(body):
            step = rng.randint(1, 200)
            meter.feed(body[cut : cut + step])
            cut += step
        usage = meter.finish()
        assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (10, 500, 77)
        assert usage.requests == 1
        assert meter.model == "claude-sonnet-5-5"
        assert usage.cost_usd == pytest.approx((10 * 2 + 500 * 0.1 + 77 * 10) / 1e6)


def test_meter_reads_json_usage_and_ignores_junk() -> None:
    meter = UsageMeter("application/json", "claude-haiku-5")
    message = {"type": "message", "usage": {"input_tokens": 3, "output_tokens": 4}}
    meter.feed(json.dumps(message).encode())
    assert meter.finish().total_tokens == 7
    hostile = UsageMeter("text/event-stream", None)
    hostile.feed(
        b'data: {"type": "message_start", "message": '
        b'{"usage": {"input_tokens": -5, "output_tokens": true}}}\n\n'
    )
    hostile.feed(b"data: not json\n\n")
    hostile.feed(b'data: {"type": "message_delta", "usage": {"output_tokens": "9"}}\n\n')
    assert hostile.finish().total_tokens == 0
    assert UsageMeter("text/html", None).finish() == Usage(requests=1)


def test_request_facts_take_the_dearest_reading_of_a_doubtful_body() -> None:
    plain = read_request(json.dumps({"model": "claude-haiku-5", "max_tokens": 3000, "messages": []}).encode())
    assert (plain.model, plain.max_output_tokens) == ("claude-haiku-5", 3000)
    # A key given twice may be read one way here and the other way upstream: assume the worst.
    doubled = read_request(b'{"model": "claude-haiku-5", "max_tokens": 1, "max_tokens": 64000, "model": "x"}')
    assert (doubled.model, doubled.max_output_tokens) == (None, OUTPUT_CEILING)
    for junk in (b"", b"not json", b"[1, 2]", b'{"max_tokens": true}', b'{"max_tokens": -5}', b"[" * 100_000):
        facts = read_request(junk)
        assert (facts.model, facts.max_output_tokens, facts.size) == (None, OUTPUT_CEILING, len(junk))


def test_a_cut_off_stream_is_settled_at_the_request_ceiling() -> None:
    body = _stream({"input_tokens": 10, "output_tokens": 1}, {"output_tokens": 77})
    request = RequestFacts(model=None, max_output_tokens=4096, size=2000)
    cut = body[: body.index(b"event: message_delta")]
    meter = UsageMeter("text/event-stream", None)
    meter.feed(cut)
    usage = meter.finish(request)
    assert (usage.input_tokens, usage.output_tokens) == (10, 4096)
    # Cut before message_start: the input side never arrived, the request's size stands in.
    early = UsageMeter("text/event-stream", None)
    early.feed(b"event: ping\n")
    assert (early.finish(request).input_tokens, early.finish(request).output_tokens) == (2000, 4096)
    # The final event passed: the usage is exact even if the client left afterwards.
    whole = UsageMeter("text/event-stream", None)
    whole.feed(body)
    assert whole.ended and whole.finish(request).output_tokens == 77
    message = UsageMeter("application/json", None)
    message.feed(json.dumps({"usage": {"input_tokens": 3, "output_tokens": 4}}).encode())
    assert message.finish(request).total_tokens == 7
    half = UsageMeter("application/json", None)
    half.feed(b'{"usage": {"input_tokens": 3, "outp')
    assert half.finish(request).output_tokens == 4096
