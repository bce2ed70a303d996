"""``x-gateway-overhead-ms`` and ``trio_orchestrator_gateway_overhead_seconds`` (issue 17,
item 3), through the running service over real HTTP with the official SDKs.

The upstream is the fake provider, told to take ``LATENCY`` seconds; the clock is Trio's
mock clock, jumping once everything has waited a little in real time (the network is real),
so the upstream's wait is long on the clock the gateway measures with and short in real
time. The gateway's own work is far below ``LATENCY``: an overhead that included the
upstream's wait would be at least ``LATENCY``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio
import trio.testing
from service_helpers import running_app

from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.testing import FakeBehaviour, FakeProvider, open_fake_provider
from trio_orchestrator.types import RequestTiming

# The SDK's HTTP stack (httpx2, httpcore2) leaves async generators of a streamed response to
# the garbage collector (trio warns); that is the client's doing, not the service's (as in
# test_service_openai.py).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning"
)

LATENCY = 10.0
HEADER = "x-gateway-overhead-ms"
CHAT: Any = [{"role": "user", "content": "hi"}]


def settings(url: str, kind: str = "openai", stream: bool = True, extra: str = "") -> Config:
    """The service in front of one provider of ``kind`` at ``url``."""
    return parse_config(
        f'{extra}\n[service]\nport = 0\n[[providers.providers]]\nkind = "{kind}"\nname = "up"\n'
        f'base_url = "{url}"\napi_keys = ["sk-up"]\nstream = {str(stream).lower()}\n'
        "timeouts = { first_token = 30.0 }\n"
    )


@asynccontextmanager
async def gateway(
    mock_clock: trio.testing.MockClock, behaviour: FakeBehaviour, **options: Any
) -> AsyncIterator[tuple[str, FakeProvider]]:
    """The fake provider answering with ``behaviour`` and the service in front of it; the
    service's URL and the fake."""
    mock_clock.autojump_threshold = 0.05
    async with open_fake_provider(behaviour) as fake:
        kind = options.pop("kind", "openai")
        base = fake.base_url if kind == "anthropic" else fake.openai_base_url
        async with running_app(settings(base, kind, **options)) as (url, _app):
            yield url, fake


def sdk(url: str) -> openai.AsyncOpenAI:
    """The official OpenAI SDK on the service."""
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0)


def overhead_of(headers: Mapping[str, str]) -> float:
    """The header's value in seconds, checked to be a non-negative decimal number."""
    value = headers[HEADER]
    assert re.fullmatch(r"\d+\.\d{3}", value), value
    return float(value) / 1000.0


async def overhead_counts(url: str) -> dict[tuple[str, str], float]:
    """The histogram's ``_count`` by (endpoint, stream), from ``GET /metrics``."""
    async with httpx.AsyncClient(base_url=url) as client:
        text = (await client.get("/metrics")).text
    pattern = (
        r'trio_orchestrator_gateway_overhead_seconds_count\{endpoint="([^"]+)",'
        r'stream="(yes|no)"\} (\S+)'
    )
    return {(e, s): float(n) for e, s, n in re.findall(pattern, text)}


@pytest.mark.parametrize("upstream_streams", [True, False])
async def test_a_whole_answer_counts_the_gateway_not_the_upstream(
    mock_clock: trio.testing.MockClock, upstream_streams: bool
) -> None:
    """A non-streaming chat over an upstream taking LATENCY: the overhead is below it, and
    with the upstream's wait it fits in the time the client waited."""
    behaviour = FakeBehaviour(text="ok", first_token_delay=LATENCY)
    async with gateway(mock_clock, behaviour, stream=upstream_streams) as (url, _fake):
        async with sdk(url) as client:
            started = trio.current_time()
            raw = await client.chat.completions.with_raw_response.create(model="m", messages=CHAT)
            total = trio.current_time() - started
            assert raw.parse().choices[0].message.content == "ok"
        overhead = overhead_of(raw.headers)
        assert overhead < LATENCY
        assert LATENCY + overhead <= total + 0.001  # the header is rounded to a microsecond
        assert (await overhead_counts(url))["/v1/chat/completions", "no"] == 1


async def test_a_stream_counts_until_its_first_event(mock_clock: trio.testing.MockClock) -> None:
    """A streamed chat: its headers come with the first event, after the upstream's
    LATENCY; the overhead leaves that wait out, and later tokens' waits do not count."""
    behaviour = FakeBehaviour(text="a b c", first_token_delay=LATENCY, token_delay=LATENCY)
    async with gateway(mock_clock, behaviour) as (url, _fake), sdk(url) as client:
        started = trio.current_time()
        async with client.chat.completions.with_streaming_response.create(
            model="m", messages=CHAT, stream=True
        ) as raw:
            headers_after = trio.current_time() - started
            overhead = overhead_of(raw.headers)
            chunks = [chunk async for chunk in await raw.parse()]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "a b c"
        assert overhead < LATENCY
        assert LATENCY + overhead <= headers_after + 0.001
        assert (await overhead_counts(url))["/v1/chat/completions", "yes"] == 1


async def test_every_attempt_s_wait_is_upstream_time(mock_clock: trio.testing.MockClock) -> None:
    """A first attempt that times out after its first-token limit, then a retry answered
    after LATENCY: both waits are left out of the overhead."""
    extra = "[resilience.retry]\nenabled = true\ninitial_backoff = 0.001\n"
    behaviour = FakeBehaviour(text="ok", first_token_delay=LATENCY)
    async with gateway(mock_clock, behaviour, stream=False, extra=extra) as (url, fake):
        fake.script(FakeBehaviour(hang=True))
        async with sdk(url) as client:
            started = trio.current_time()
            raw = await client.chat.completions.with_raw_response.create(model="m", messages=CHAT)
            total = trio.current_time() - started
        assert len(fake.requests) == 2
        assert total >= 30.0 + LATENCY  # the first attempt's first-token limit, then the retry
        assert overhead_of(raw.headers) < LATENCY


async def test_every_openai_endpoint_answers_with_the_header(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Completions, Responses (whole and streamed) and Embeddings answer with the header,
    and the histogram counts each under its endpoint."""
    async with gateway(mock_clock, FakeBehaviour(text="ok")) as (url, _fake), sdk(url) as client:
        raws: list[Any] = [
            await client.completions.with_raw_response.create(model="m", prompt="hi"),
            await client.responses.with_raw_response.create(model="m", input="hi"),
            await client.embeddings.with_raw_response.create(model="m", input="hi"),
        ]
        async with client.completions.with_streaming_response.create(
            model="m", prompt="hi", stream=True
        ) as streamed:
            raws.append(streamed)
        async with client.responses.with_streaming_response.create(
            model="m", input="hi", stream=True
        ) as streamed:
            raws.append(streamed)
        for raw in raws:
            assert overhead_of(raw.headers) >= 0.0
        assert await overhead_counts(url) == {
            ("/v1/completions", "no"): 1,
            ("/v1/completions", "yes"): 1,
            ("/v1/responses", "no"): 1,
            ("/v1/responses", "yes"): 1,
            ("/v1/embeddings", "no"): 1,
        }


async def test_messages_answer_with_the_header(mock_clock: trio.testing.MockClock) -> None:
    """The Anthropic ingress, whole and streamed, in front of an Anthropic upstream taking
    LATENCY: the header leaves the upstream's wait out."""
    behaviour = FakeBehaviour(text="ok", first_token_delay=LATENCY)
    async with gateway(mock_clock, behaviour, kind="anthropic") as (url, _fake):
        client = anthropic.AsyncAnthropic(base_url=url, api_key="sk-client", max_retries=0)
        async with client:
            ask: dict[str, Any] = {"model": "m", "max_tokens": 16, "messages": CHAT}
            whole = await client.messages.with_raw_response.create(**ask)
            async with client.messages.with_streaming_response.create(
                **ask, stream=True
            ) as streamed:
                assert overhead_of(streamed.headers) < LATENCY
        assert overhead_of(whole.headers) < LATENCY
        counts = await overhead_counts(url)
        assert counts["/v1/messages", "no"] == counts["/v1/messages", "yes"] == 1


async def test_an_error_answer_carries_the_header_too(mock_clock: trio.testing.MockClock) -> None:
    """An upstream error (a 400 here) is answered with the header as well."""
    async with gateway(mock_clock, FakeBehaviour(status=400)) as (url, _fake):
        async with httpx.AsyncClient(base_url=url) as client:
            answer = await client.post(
                "/v1/chat/completions", json={"model": "m", "messages": CHAT}
            )
        assert answer.status_code == 400
        assert overhead_of(answer.headers) >= 0.0


async def test_an_echo_worker_has_no_upstream_wait(mock_clock: trio.testing.MockClock) -> None:
    """With no provider (the echo worker) the header is there: the gateway's whole time."""
    config = parse_config("[service]\nport = 0\n")
    async with running_app(config) as (url, _app), sdk(url) as client:
        raw = await client.chat.completions.with_raw_response.create(model="echo", messages=CHAT)
        assert overhead_of(raw.headers) >= 0.0


async def test_turned_off_there_is_no_header_and_no_histogram(
    mock_clock: trio.testing.MockClock,
) -> None:
    """``observability.gateway_overhead = false``: neither the header nor the histogram."""
    config = parse_config("[observability]\ngateway_overhead = false\n[service]\nport = 0\n")
    async with running_app(config) as (url, _app), sdk(url) as client:
        raw = await client.chat.completions.with_raw_response.create(model="echo", messages=CHAT)
        assert HEADER not in raw.headers
        assert await overhead_counts(url) == {}


def test_overlapping_waits_count_once() -> None:
    """Two upstream calls awaited at once (n choices, embedding batches) count as the time
    during which either was awaited."""
    timing = RequestTiming(arrived=0.0)
    timing.wait_began(1.0)
    timing.wait_began(2.0)
    timing.wait_ended(4.0)
    assert timing.waited(5.0) == 4.0  # one wait still open since 1.0
    timing.wait_ended(6.0)
    timing.wait_began(7.0)
    timing.wait_ended(8.0)
    assert (timing.upstream, timing.overhead(10.0)) == (6.0, 4.0)
