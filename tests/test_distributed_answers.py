"""Answers shared across processes: one upstream call for identical concurrent requests on
different processes, and a shared answer cache with the local cache's TTL and size rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import pytest
import trio
from redis_fixture import RedisServer, redis_server

from trio_orchestrator import Config, PromptRequest, open_gateway
from trio_orchestrator.distributed import DistributedConfig
from trio_orchestrator.distributed.answers import SharedAnswerLayer
from trio_orchestrator.errors import ServerError
from trio_orchestrator.events import Done, Passthrough, TextDelta, Usage
from trio_orchestrator.pipeline import Pipeline
from trio_orchestrator.resilience import ResilienceConfig, iter_layers
from trio_orchestrator.resilience.config import CacheConfig, CoalescingConfig
from trio_orchestrator.resilience.keys import request_key
from trio_orchestrator.types import GenerationParams
from trio_orchestrator.workers.base import EventSink

__all__ = ["redis_server"]


@attrs.define
class Upstream:
    """A provider that answers "echo: <input>" after ``delay`` seconds, counting its calls."""

    delay: float = 0.0
    fail: bool = False
    calls: int = 0
    streaming: list[bool] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        self.streaming.append(request.streaming)
        await trio.sleep(self.delay)
        if self.fail:
            raise ServerError("upstream 500", retry_after=3.0)
        text = f"echo: {request.input}"
        await emit(TextDelta(text))
        await emit(Usage(2, 3))
        await emit(Done("stop", text, Usage(2, 3)))


def ask(text: str, temperature: float | None = 0.0) -> PromptRequest:
    """A deterministic request (temperature 0) unless told otherwise."""
    return PromptRequest(input=text, params=GenerationParams(temperature=temperature))


@asynccontextmanager
async def processes(
    server: RedisServer, workers: list[Upstream], cache: CacheConfig | None = None
) -> AsyncIterator[list[Pipeline]]:
    """One gateway's pipeline per worker (each its own Redis client), sharing answers."""
    config = Config(
        resilience=ResilienceConfig(
            cache=cache or CacheConfig(), coalescing=CoalescingConfig(enabled=True)
        ),
        # Generous Redis timeouts (as tests/_distributed_child.py has): loaded CI runs failed
        # tests here, none of them about starting, reaching their own fresh Redis within the
        # default 2 s start at 0.25 s an operation.
        distributed=DistributedConfig(
            redis_url=server.url, health_interval=0.05, operation_timeout=2, start_timeout=10
        ),
    )
    async with AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(open_gateway(config, worker=w)) for w in workers
        ]
        yield [gateway.pipeline for gateway in gateways]


def layer(pipeline: Pipeline) -> SharedAnswerLayer:
    """The pipeline's shared-answer layer."""
    return next(w for w in iter_layers(pipeline.worker) if isinstance(w, SharedAnswerLayer))


async def test_identical_requests_on_two_processes_make_one_call(
    redis_server: RedisServer,
) -> None:
    """Two processes asked the same thing at once: one upstream call, both get the answer."""
    first, second = Upstream(delay=0.3), Upstream(delay=0.3)
    answers: list[str] = []
    async with processes(redis_server, [first, second]) as (a, b):

        async def submit(pipeline: Pipeline) -> None:
            answers.append((await pipeline.submit(ask("hello"))).text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit, a)
            await trio.sleep(0.05)
            nursery.start_soon(submit, b)
        stats = [layer(a).statistics(), layer(b).statistics()]
    assert answers == ["echo: hello", "echo: hello"]
    assert first.calls + second.calls == 1
    assert (sum(s.led for s in stats), sum(s.followed for s in stats)) == (1, 1)


async def test_an_upstream_error_reaches_every_follower(redis_server: RedisServer) -> None:
    """The leader's call fails: the follower gets the same error class, without calling."""
    first, second = Upstream(delay=0.3, fail=True), Upstream(delay=0.3, fail=True)
    errors: list[ServerError] = []
    async with processes(redis_server, [first, second]) as (a, b):

        async def submit(pipeline: Pipeline) -> None:
            with pytest.raises(ServerError) as info:
                await pipeline.submit(ask("boom"))
            errors.append(info.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit, a)
            await trio.sleep(0.05)
            nursery.start_soon(submit, b)
    assert first.calls + second.calls == 1
    assert [e.retry_after for e in errors] == [3.0, 3.0]


async def test_the_cache_is_shared(redis_server: RedisServer) -> None:
    """With the cache on, an answer stored by one process is replayed by another."""
    first, second = Upstream(), Upstream()
    async with processes(redis_server, [first, second], CacheConfig(enabled=True)) as (a, b):
        await a.submit(ask("hello"))
        completion = await b.submit(ask("hello"))
        assert layer(b).statistics().hits == 1
    assert completion.text == "echo: hello"
    assert completion.usage == Usage(2, 3)
    assert (first.calls, second.calls) == (1, 0)


async def test_the_shared_cache_keeps_max_entries(redis_server: RedisServer) -> None:
    """Beyond max_entries the least recently used shared answer is evicted."""
    cache = CacheConfig(enabled=True, max_entries=2)
    first, second = Upstream(), Upstream()
    async with processes(redis_server, [first, second], cache) as (a, b):
        for text in ("one", "two", "three"):
            await a.submit(ask(text))
        await b.submit(ask("three"))  # still there
        await b.submit(ask("one"))  # evicted: asked again
    assert (first.calls, second.calls) == (3, 1)


async def test_without_a_cache_answers_are_not_kept_for_long(redis_server: RedisServer) -> None:
    """With the cache off, a finished answer is not replayed once its short life is over."""
    first, second = Upstream(), Upstream()
    async with processes(redis_server, [first, second]) as (a, b):
        await a.submit(ask("hello"))
        layer(b).result_ttl = 0.1
        layer(a).result_ttl = 0.1
        await a.submit(ask("again"))
        await trio.sleep(0.2)
        await b.submit(ask("again"))
    assert (first.calls, second.calls) == (2, 1)


async def test_sampled_requests_are_not_shared(redis_server: RedisServer) -> None:
    """A request at the provider's default temperature (sampled) makes its own call."""
    first, second = Upstream(), Upstream()
    async with processes(redis_server, [first, second], CacheConfig(enabled=True)) as (a, b):
        await a.submit(ask("hello", temperature=None))
        await b.submit(ask("hello", temperature=None))
    assert (first.calls, second.calls) == (1, 1)


async def test_a_dead_leader_is_replaced(redis_server: RedisServer) -> None:
    """A lock left by a process that died lapses; a waiting request then makes the call."""
    upstream = Upstream()
    async with processes(redis_server, [upstream]) as (a,):
        redis = layer(a).connection
        lock = redis.key("flight", request_key(ask("hello")))
        await redis.call(lambda r: r.set(lock, "dead-process", px=300))
        with trio.fail_after(5):
            completion = await a.submit(ask("hello"))
    assert completion.text == "echo: hello"
    assert upstream.calls == 1


async def test_without_redis_requests_are_served_locally(redis_server: RedisServer) -> None:
    """Redis lost: a request makes its own call instead of waiting on shared state."""
    upstream = Upstream()
    async with processes(redis_server, [upstream]) as (a,):
        redis_server.stop()
        with trio.fail_after(5):
            completion = await a.submit(ask("hello"))
        assert layer(a).statistics().local == 1
    assert completion.text == "echo: hello"


@attrs.define
class Drip:
    """A provider streaming ``tokens`` words, ``delay`` seconds apart, logging each one."""

    log: list[str]
    tokens: int = 8
    delay: float = 0.1
    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        for i in range(self.tokens):
            await trio.sleep(self.delay)
            self.log.append(f"upstream {i}")
            await emit(TextDelta(f"w{i} "))
        text = "".join(f"w{i} " for i in range(self.tokens))
        await emit(Done("stop", text))


async def test_a_follower_streams_the_leaders_answer_as_it_comes(
    redis_server: RedisServer,
) -> None:
    """A follower on another process receives the leader's tokens while the leader is still
    generating (not only once the answer is complete), from the first token on."""
    log: list[str] = []
    first, second = Drip(log), Drip(log)
    followed: list[str] = []
    async with processes(redis_server, [first, second]) as (a, b):  # type: ignore[list-item]

        async def lead() -> None:
            await a.submit(ask("stream me"))

        async def follow() -> None:
            async with b.stream(ask("stream me")) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        log.append(f"follower {event.text.strip()}")
                        followed.append(event.text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lead)
            await trio.sleep(0.25)  # the leader has begun; the follower joins late
            nursery.start_soon(follow)
    assert first.calls + second.calls == 1
    assert "".join(followed) == "".join(f"w{i} " for i in range(8))
    # The follower had tokens before the upstream produced its last one.
    assert log.index("follower w0") < log.index("upstream 7")


async def test_a_follower_mid_answer_is_told_when_the_leader_dies(
    redis_server: RedisServer,
) -> None:
    """A leader that dies after publishing part of its answer: the follower, having streamed
    that part, gets a typed ProviderConnectionError instead of another call's answer spliced
    on."""
    from trio_orchestrator.errors import ProviderConnectionError

    upstream = Upstream()
    seen: list[object] = []
    async with processes(redis_server, [upstream]) as (a,):
        redis = layer(a).connection
        key = request_key(ask("half"))
        partial = '["dead", "TextDelta", {"text": "half "}]'
        await redis.call(lambda r: r.set(redis.key("flight", key), "dead", px=300))
        await redis.call(lambda r: r.rpush(redis.key("answer-events", key), [partial]))

        async def consume() -> None:
            async with a.stream(ask("half")) as events:
                async for event in events:
                    seen.append(event)

        with pytest.raises(ProviderConnectionError, match="went away mid-answer"):
            await consume()
    assert seen == [TextDelta("half ")]
    assert upstream.calls == 0


@attrs.define
class RichUpstream:
    """Answers with members passed through and usage details, counting its calls."""

    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        logprobs = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}
        await emit(Passthrough({"system_fingerprint": "fp_1"}, {"logprobs": logprobs}))
        await emit(TextDelta("Hi"))
        usage = Usage(9, 2, 8, 0, 1, {"prompt_tokens_details": {"cached_tokens": 8}})
        await emit(usage)
        await emit(Done("stop", "Hi", usage))


async def test_a_shared_answer_keeps_passthrough_members_and_usage_details(
    redis_server: RedisServer,
) -> None:
    """An answer replayed from Redis has the same Passthrough members and usage details."""
    first, second = RichUpstream(), RichUpstream()
    async with processes(redis_server, [first, second], CacheConfig(enabled=True)) as (a, b):  # type: ignore[list-item]
        stored = await a.submit(ask("hello"))
        replayed = await b.submit(ask("hello"))
    assert (first.calls, second.calls) == (1, 0)
    for completion in (stored, replayed):
        assert completion.passthrough is not None
        assert completion.passthrough.response == {"system_fingerprint": "fp_1"}
        assert completion.passthrough.choice["logprobs"]["content"][0]["bytes"] == [72, 105]
        assert completion.usage == Usage(9, 2, 8, 0, 1)
        assert completion.usage.details == {"prompt_tokens_details": {"cached_tokens": 8}}


async def test_a_shared_call_streams_whoever_leads_it(redis_server: RedisServer) -> None:
    """A call shared across processes streams even when its leader takes the answer whole
    (followers elsewhere may stream). The layer is there for the cache; the local
    coalescing layer, which streams its shared calls too, is off."""
    upstream = Upstream()
    config = Config(
        resilience=ResilienceConfig(
            cache=CacheConfig(enabled=True), coalescing=CoalescingConfig(enabled=False)
        ),
        distributed=DistributedConfig(
            redis_url=redis_server.url, operation_timeout=2, start_timeout=10
        ),
    )
    async with open_gateway(config, worker=upstream) as gateway:
        completion = await gateway.pipeline.submit(ask("whole").streamed(False))
    assert completion.text == "echo: whole"
    assert upstream.streaming == [True]
