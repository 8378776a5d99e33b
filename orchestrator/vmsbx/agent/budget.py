"""A run's spend cap and its token usage: pure parsing, counting and pricing.

`--budget 200000` / `200k` / `1.5M` caps the tokens a run may use (every token the API reports:
input, output, cache writes and cache reads); `--budget '$5'` caps its cost in US dollars,
priced with `PRICES` below. The relay checks the cap before forwarding a request, so requests
already in flight when the cap is reached still finish: the overshoot is at most one turn per
concurrent request, and a run has at most `agent.max_concurrent_requests` of those. A response
the relay did not see to its end (the client hung up, or upstream did) is settled at what its
request could cost at most (`RequestFacts`), never at the partial count seen so far.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any

_TOKEN_RE = re.compile(r"(?P<number>\d{1,15}(?:\.\d{1,6})?)\s*(?P<unit>[kKmM]?)")
_DOLLAR_RE = re.compile(
    r"\$\s*(?P<number>\d{1,9}(?:\.\d{1,6})?)|(?P<number2>\d{1,9}(?:\.\d{1,6})?)\s*(?:\$|usd)"
)
_TOKEN_UNITS = {"": 1, "k": 1_000, "m": 1_000_000}

BUDGET_FORMS = "a number of tokens (200000, 200k, 1.5M) or dollars ('$5', '$0.50')"

# The most output any model can be asked for (the 128k-output beta): what a cut-off response is
# charged when its request named no single usable max_tokens.
OUTPUT_CEILING = 128_000


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens, for one model family."""

    input: float
    output: float
    cache_write: float
    cache_read: float


# List prices per model family, as Claude Code 2.1.332 itself computes `total_cost_usd` (measured
# by feeding it scripted usage; the 4.5 rows match Anthropic's published prices). The first
# matching prefix wins. A model not listed is priced with the dearest row, so an unknown model
# can only make the cap trip early, never late. Long-context surcharges are not modelled.
PRICES: tuple[tuple[str, Price], ...] = (
    ("claude-opus-5", Price(4.0, 20.0, 5.0, 0.2)),
    ("claude-sonnet-5", Price(2.0, 10.0, 2.5, 0.1)),
    ("claude-haiku-5", Price(0.1, 0.5, 0.125, 0.01)),
    ("claude-opus-4-5", Price(5.0, 25.0, 6.25, 0.5)),
    ("claude-sonnet-4", Price(3.0, 15.0, 3.75, 0.3)),
    ("claude-haiku-4", Price(1.0, 5.0, 1.25, 0.1)),
    ("claude-3-5-haiku", Price(0.8, 4.0, 1.0, 0.08)),
)
FALLBACK_PRICE = Price(
    input=max(p.input for _, p in PRICES),
    output=max(p.output for _, p in PRICES),
    cache_write=max(p.cache_write for _, p in PRICES),
    cache_read=max(p.cache_read for _, p in PRICES),
)


def price_for(model: str | None) -> Price:
    """The price row for `model` (a family prefix match), or the dearest row when unknown."""
    for prefix, price in PRICES:
        if model and model.startswith(prefix):
            return price
    return FALLBACK_PRICE


@dataclass(frozen=True)
class Budget:
    """A per-run cap: at most `tokens` tokens and/or `usd` dollars (None: no cap of that kind)."""

    tokens: int | None = None
    usd: float | None = None

    def exhausted_by(self, usage: Usage) -> bool:
        """True once `usage` has reached either cap."""
        if self.tokens is not None and usage.total_tokens >= self.tokens:
            return True
        return self.usd is not None and usage.cost_usd >= self.usd

    def describe(self) -> str:
        parts = []
        if self.tokens is not None:
            parts.append(f"{self.tokens} tokens")
        if self.usd is not None:
            parts.append(f"${self.usd:.2f}")
        return " and ".join(parts) or "no cap"


def parse_budget(text: str) -> Budget:
    """Parse a `--budget` value: "200000", "200k", "1.5M" (tokens) or "$5", "5$", "5usd" (dollars).

    Raises ValueError with a message fit for the user for anything else, zero or negative.
    """
    value = text.strip().lower()
    dollars = _DOLLAR_RE.fullmatch(value)
    if dollars is not None:
        usd = float(dollars["number"] or dollars["number2"])
        if usd <= 0 or not math.isfinite(usd):
            raise ValueError("a dollar budget must be greater than zero")
        return Budget(usd=usd)
    tokens = _TOKEN_RE.fullmatch(value)
    if tokens is None:
        raise ValueError(f"{text!r} is not a budget: use {BUDGET_FORMS}")
    count = math.floor(float(tokens["number"]) * _TOKEN_UNITS[tokens["unit"].lower()])
    if count <= 0:
        raise ValueError("a token budget must be greater than zero")
    return Budget(tokens=count)


@dataclass(frozen=True)
class Usage:
    """Tokens a run has used, as the API reported them, and their cost by `PRICES`."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    def plus(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            requests=self.requests + other.requests,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "requests": self.requests,
        }


_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def usage_from_api(fields: dict[str, int], model: str | None) -> Usage:
    """One response's usage (the API's field names) priced for `model`; one request."""
    counts = {name: _count(fields.get(name)) for name in _USAGE_FIELDS}
    price = price_for(model)
    cost = (
        counts["input_tokens"] * price.input
        + counts["output_tokens"] * price.output
        + counts["cache_creation_input_tokens"] * price.cache_write
        + counts["cache_read_input_tokens"] * price.cache_read
    ) / 1_000_000
    return replace(Usage(**counts), cost_usd=cost, requests=1)


def merge_usage_fields(into: dict[str, int], update: object) -> None:
    """Fold an API `usage` object into `into`: later values replace earlier ones.

    `message_delta.usage` carries cumulative counts, so the last value seen for a field is the
    response's total. Anything that is not a non-negative int is ignored (upstream data is
    parsed defensively, even though it comes from the trusted API).
    """
    if not isinstance(update, dict):
        return
    for name in _USAGE_FIELDS:
        value = update.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            into[name] = value


@dataclass(frozen=True)
class RequestFacts:
    """What the relay reads off a Messages request before sending it: its model, for pricing,
    and the most it can cost, for a response cut off before its final usage arrived."""

    model: str | None
    """The one `model` the body names; None when absent or named twice (then priced dearest)."""
    max_output_tokens: int
    """The request's `max_tokens`; OUTPUT_CEILING when absent, repeated or not a positive int
    (a duplicate key might be read one way here and the other way upstream)."""
    size: int
    """The body's length in bytes: stands in for the input count if no message_start was seen
    (a text prompt has fewer tokens than bytes)."""


def read_request(body: bytes) -> RequestFacts:
    """Read `model` and `max_tokens` off a request body; junk yields the dearest assumptions."""
    try:
        # Pairs, not a dict: a key given twice must be seen twice, not silently collapsed.
        top = json.loads(body, object_pairs_hook=list) if body else None
    except (ValueError, RecursionError):
        top = None
    pairs = top if isinstance(top, list) and all(isinstance(p, tuple) for p in top) else []
    models = [value for key, value in pairs if key == "model"]
    caps = [value for key, value in pairs if key == "max_tokens"]
    model = models[0][:200] if len(models) == 1 and isinstance(models[0], str) else None
    usable = len(caps) == 1 and isinstance(caps[0], int) and not isinstance(caps[0], bool) and caps[0] > 0
    return RequestFacts(model=model, max_output_tokens=caps[0] if usable else OUTPUT_CEILING, size=len(body))


def cut_off_fields(fields: dict[str, int], request: RequestFacts, *, input_seen: bool) -> dict[str, int]:
    """The usage to settle a cut-off response at: the output at its request's max_tokens (the
    API bills what it generated before the cut, at most that), the input as seen, or at the
    request's size when its count never arrived."""
    settled = dict(fields)
    settled["output_tokens"] = max(settled.get("output_tokens", 0), request.max_output_tokens)
    if not input_seen:
        settled["input_tokens"] = max(settled.get("input_tokens", 0), request.size)
    return settled


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
