"""End to end: the pipeline, configured provider workers, real HTTP, the fake provider."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

from trio_orchestrator import PromptRequest, open_pipeline
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.errors import (
    MalformedResponse,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from trio_orchestrator.events import Done, TextDelta
from trio_orchestrator.pipeline.core import RequestStream
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider, open_fake_provider
from trio_orchestrator.types import GenerationParams
from trio_orchestrator.workers import (
    KeyPool,
    LoadBalancedWorker,
    OpenAIWorker,
    ProviderConfig,
    ProvidersConfig,
    Timeouts,
    build_worker,
)

REQUEST = PromptRequest(input="hello", params=GenerationParams(model="fake-model"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with open_fake_provider(Behaviour(text="Hello from the fake")) as fake:
        yield fake


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def drain(request_stream: RequestStream) -> None:
    async with request_stream as stream:
        async for _ in stream:
            pass


def openai_config(fake: FakeProvider, **kwargs: object) -> ProvidersConfig:
    provider = ProviderConfig("openai", "fake", fake.openai_base_url, **kwargs)  # type: ignore[arg-type]
    return ProvidersConfig([provider])


async def test_streaming_through_the_pipeline(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """Tokens streamed by the provider reach the pipeline's caller, then Done."""
    worker = build_worker(openai_config(fake), client)
    async with open_pipeline(worker) as pipeline, pipeline.stream(REQUEST) as stream:
        events = [event async for event in stream]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello from the fake"
    assert isinstance(events[-1], Done)
    assert events[-1].usage is not None


async def test_non_streaming_anthropic_through_the_pipeline(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """An Anthropic provider without streaming answers a submitted request."""
    config = ProvidersConfig(
        [ProviderConfig("anthropic", "claude", fake.base_url, api_keys=["k"], stream=False)]
    )
    async with open_pipeline(build_worker(config, client)) as pipeline:
        completion = await pipeline.submit(REQUEST)
    assert (completion.text, completion.finish_reason) == ("Hello from the fake", "stop")
    assert fake.requests[-1].headers["x-api-key"] == "k"


async def test_upstream_429_is_rate_limited_at_the_caller(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """An upstream 429 reaches the caller as RateLimited with the Retry-After, counted failed."""
    fake.script(Behaviour(status=429, retry_after=12))
    async with open_pipeline(build_worker(openai_config(fake), client)) as pipeline:
        with pytest.raises(RateLimited) as info:
            await pipeline.submit(REQUEST)
        assert pipeline.statistics().failed == 1
    assert info.value.retry_after == 12.0


async def test_upstream_500_is_server_error_at_the_caller(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """An upstream 500 reaches a streaming caller as ServerError."""
    fake.script(Behaviour(status=500))
    async with open_pipeline(build_worker(openai_config(fake), client)) as pipeline:
        with pytest.raises(ServerError):
            await drain(pipeline.stream(REQUEST))


async def test_stalled_stream_is_cut_by_idle_timeout(
    fake: FakeProvider, client: httpx.AsyncClient, mock_clock: trio.testing.MockClock
) -> None:
    """A provider that stalls mid-stream is cut at the idle timeout: ProviderTimeout, not a hang."""
    # Jump only once everything has waited a little in real time (the network is real).
    mock_clock.autojump_threshold = 0.05
    fake.script(Behaviour(stall_after=3))
    config = openai_config(fake, timeouts=Timeouts(idle=5))
    async with open_pipeline(build_worker(config, client)) as pipeline:
        with pytest.raises(ProviderTimeout, match="idle"):
            await pipeline.submit(REQUEST)
    assert fake.statistics().client_disconnects == 1


async def test_malformed_sse_is_a_typed_error(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """A chunk that is not JSON reaches the caller as MalformedResponse."""
    fake.script(Behaviour(malformed_after=2))
    async with open_pipeline(build_worker(openai_config(fake), client)) as pipeline:
        with pytest.raises(MalformedResponse):
            await pipeline.submit(REQUEST)


async def test_caller_leaving_closes_the_upstream_stream(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """A streaming caller that stops reading cancels the request and the fake sees it close."""
    fake.script(Behaviour(tokens=50, stall_after=2))
    async with open_pipeline(build_worker(openai_config(fake), client)) as pipeline:
        async with pipeline.stream(REQUEST) as stream:
            async for event in stream:
                assert isinstance(event, TextDelta)
                break
        with trio.fail_after(10):
            await fake.wait_for_disconnects(1)
        assert pipeline.statistics().cancelled == 1


async def test_key_pool_carries_on_past_a_rate_limited_key(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """With one key rate limited upstream, requests still complete on the other key."""
    fake.set_key("sk-first-key-1", Behaviour(status=429, retry_after=60))
    config = openai_config(fake, api_keys=["sk-first-key-1", "sk-second-key-2"])
    worker = build_worker(config, client)
    async with open_pipeline(worker) as pipeline:
        texts = [(await pipeline.submit(REQUEST)).text for _ in range(3)]
    assert texts == ["Hello from the fake"] * 3
    assert isinstance(worker, OpenAIWorker)
    assert isinstance(worker.keys, KeyPool)
    stats = worker.keys.statistics().keys
    assert "fake-model" in stats[Secret("sk-first-key-1").fingerprint()].model_rests
    assert stats[Secret("sk-second-key-2").fingerprint()].successes == 3


async def test_several_providers_are_load_balanced(client: httpx.AsyncClient) -> None:
    """Two configured providers share requests under the weighted strategy."""
    async with open_fake_provider() as a, open_fake_provider() as b:
        providers = [
            ProviderConfig("openai", "a", a.openai_base_url, weight=3),
            ProviderConfig("anthropic", "b", b.base_url, api_keys=["k"]),
        ]
        worker = build_worker(ProvidersConfig(providers, strategy="weighted"), client)
        assert isinstance(worker, LoadBalancedWorker)
        async with open_pipeline(worker) as pipeline:
            for _ in range(8):
                await pipeline.submit(REQUEST)
    assert (a.statistics().requests, b.statistics().requests) == (6, 2)
