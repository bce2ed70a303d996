"""Poison at the door: bodies no upstream encoder could carry are a 400 before any worker runs.

A lone surrogate, nesting 1,000 or 50,000 deep, tool parameters 300 deep, integers beyond 64
bits: each is refused in OpenAI's error shape, the upstream never hears of it, and the
provider's circuit breaker (tripping on the first failure here) stays closed, so the next
ordinary request is answered.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.resilience import BreakerConfig, ResilienceConfig
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig

from .conftest import UPSTREAM_KEY, Gateway, start_gateway

PREFIX = b'{"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]'


def said(content: bytes) -> bytes:
    """A body whose one user message has ``content`` (raw JSON)."""
    return b'{"model": "fake-model", "messages": [{"role": "user", "content": ' + content + b"}]}"


def nested(depth: int) -> bytes:
    """A JSON value nested ``depth`` arrays deep."""
    return b"[" * depth + b"]" * depth


def deep_schema(depth: int) -> bytes:
    """A tool whose parameters schema nests ``depth`` objects deep."""
    schema = b'{"type": "object", "properties": {"a": ' * depth + b"{}" + b"}}" * depth
    tool = b'{"type": "function", "function": {"name": "f", "parameters": ' + schema + b"}}"
    return PREFIX + b', "tools": [' + tool + b"]}"


POISON = {
    "lone surrogate": said(b'"\\ud800"'),
    "invalid utf-8": said(b'"\xed\xa0\x80"'),
    "1,000 deep": PREFIX + b', "x": ' + nested(1_000) + b"}",
    "50,000 deep": PREFIX + b', "x": ' + nested(50_000) + b"}",
    "tool parameters 300 deep": deep_schema(300),
    "max_tokens 2**64": PREFIX + b', "max_tokens": 18446744073709551616}',
    "seed 2**64": PREFIX + b', "seed": 18446744073709551616}',
    "an unknown member -2**64": PREFIX + b', "top_k": -18446744073709551616}',
    "NaN": PREFIX + b', "temperature": NaN}',
    "Infinity": PREFIX + b', "temperature": 1e999}',
}  # fmt: skip


def guarded(fake: FakeProvider) -> Config:
    """One OpenAI-compatible provider behind a breaker that opens on its first failure."""
    upstream = ProviderConfig("openai", "up", fake.openai_base_url, api_keys=[UPSTREAM_KEY])
    breaker = BreakerConfig(enabled=True, failure_threshold=1, cooldown=600, max_cooldown=600)
    return Config(
        providers=ProvidersConfig([upstream]),
        resilience=ResilienceConfig(breaker=breaker),
        service=ServiceConfig(port=0),
    )


@pytest.fixture(scope="module")
def guarded_gateway() -> Iterator[Gateway]:
    """The gateway with a hair-trigger breaker in front of the fake OpenAI upstream."""
    running = start_gateway("openai", guarded)
    try:
        yield running.gateway
    finally:
        running.stop()


def post(gw: Gateway, body: bytes) -> httpx.Response:
    """POST raw bytes to the gateway's chat completions endpoint."""
    headers = {"authorization": "Bearer sk-client", "content-type": "application/json"}
    return httpx.post(gw.url + "/v1/chat/completions", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize("name", list(POISON))
def test_poison_is_a_400_and_the_next_request_is_answered(
    guarded_gateway: Gateway, name: str
) -> None:
    """The poison gets a 400 in OpenAI's shape; the upstream never sees it; the breaker stays
    closed, so an ordinary request right after is answered by the upstream."""
    gw = guarded_gateway
    gw.clear()
    response = post(gw, POISON[name])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert gw.received() == []
    gw.script(Behaviour(text="still here"))
    answer = gw.openai().chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.choices[0].message.content == "still here"
    assert len(gw.received()) == 1


def test_an_out_of_range_integer_is_named_by_its_path(guarded_gateway: Gateway) -> None:
    """An integer beyond 64 bits deep in a member is refused with the member's path."""
    body = PREFIX + b', "metadata_x": {"ids": [1, 18446744073709551616]}}'
    error = post(guarded_gateway, body).json()["error"]
    assert error["param"] == "metadata_x.ids[1]"


def test_the_largest_unsigned_64_bit_integer_is_carried(guarded_gateway: Gateway) -> None:
    """2**64 - 1 in an unknown member is forwarded exactly, not refused and not rounded."""
    gw = guarded_gateway
    gw.clear()
    response = post(gw, PREFIX + b', "vendor_seed": 18446744073709551615}')
    assert response.status_code == 200, response.text
    assert gw.last().body["vendor_seed"] == 2**64 - 1
