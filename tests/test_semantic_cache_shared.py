"""The semantic cache shared through Redis (``[distributed]``): two served gateways on one
real ``redis-server``, each with its own upstream, asked with the official openai SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import openai
import pytest
from redis_fixture import RedisServer, redis_server
from service_helpers import running_service
from test_semantic_cache_served import ALICE, BOB, SemanticWorker, Served, semantic_config

from trio_orchestrator.distributed.config import DistributedConfig
from trio_orchestrator.distributed.semantic import SKEW_MS, _Seen
from trio_orchestrator.resilience.config import CoalescingConfig

__all__ = ["redis_server"]

# The SDK's HTTP stack leaves async generators to the garbage collector (trio warns), as in
# test_semantic_cache_served.py.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning"
)


@asynccontextmanager
async def gateways(
    server: RedisServer, count: int = 2, *, coalescing: bool = False, **semantic: Any
) -> AsyncIterator[list[Served]]:
    """``count`` served gateways with the semantic cache, sharing ``server`` (and, with
    ``coalescing``, sharing identical requests' answers through it too)."""
    config = semantic_config(**semantic)
    resilience = attrs.evolve(config.resilience, coalescing=CoalescingConfig(enabled=coalescing))
    config = attrs.evolve(
        config,
        resilience=resilience,
        # A generous operation timeout: on a loaded test machine the first script load can
        # outlast the default 0.25 s, and a timed-out push is (rightly) a local-only answer.
        distributed=DistributedConfig(
            redis_url=server.url, health_interval=0.05, operation_timeout=5.0
        ),
    )
    async with AsyncExitStack() as stack:
        served = []
        for _ in range(count):
            worker = SemanticWorker()
            url = await stack.enter_async_context(running_service(config, worker))
            alice = openai.AsyncOpenAI(base_url=url + "/v1", api_key=ALICE, max_retries=0)
            bob = openai.AsyncOpenAI(base_url=url + "/v1", api_key=BOB, max_retries=0)
            await stack.enter_async_context(alice)
            await stack.enter_async_context(bob)
            served.append(Served(url, worker, alice, bob))
        yield served


async def marker(
    served: Served, question: str, who: str = "alice", **options: Any
) -> tuple[str, str | None]:
    """Ask ``question`` as ``who``; the answer's text and its ``x-cache`` header."""
    client = served.alice if who == "alice" else served.bob
    raw = await client.chat.completions.with_raw_response.create(
        model="echo",
        messages=[{"role": "user", "content": question}],
        temperature=0,
        **options,
    )
    return raw.parse().choices[0].message.content or "", raw.headers.get("x-cache")


async def shared_stats(served: Served) -> dict[str, float]:
    """The shared index's counters from ``/metrics``."""
    stats = await served.semantic_stats()
    return {k.removeprefix("shared_"): v for k, v in stats.items() if k.startswith("shared_")}


async def test_a_paraphrase_on_another_process_hits_the_first_ones_answer(
    redis_server: RedisServer,
) -> None:
    """The answer one gateway stored answers a paraphrase on the other: its upstream is
    never called, and the answer says ``x-cache: semantic-hit``."""
    async with gateways(redis_server) as (a, b):
        assert await marker(a, "What is the capital of France?") == (
            "What is the capital of France?",
            "miss",
        )
        answer, cached = await marker(b, "Tell me the capital of France, please.")
        assert (answer, cached) == ("What is the capital of France?", "semantic-hit")
        assert b.worker.chats == []
        assert (await shared_stats(a))["pushed"] == 1
        assert (await shared_stats(b))["pulled"] == 1
        # And back: what b stores, a finds.
        await marker(b, "Who wrote Hamlet?")
        assert (await marker(a, "Hamlet: who wrote it?"))[1] == "semantic-hit"
        assert a.worker.chats == ["What is the capital of France?"]


async def test_another_key_on_another_process_never_gets_the_answer(
    redis_server: RedisServer,
) -> None:
    """Shared entries keep their scope: bob's paraphrase on the other gateway misses."""
    async with gateways(redis_server) as (a, b):
        await marker(a, "What is the capital of France?", who="alice")
        answer, cached = await marker(b, "Tell me the capital of France, please.", who="bob")
        assert (answer, cached) == ("Tell me the capital of France, please.", "miss")
        assert b.worker.chats == ["Tell me the capital of France, please."]


async def test_redis_keeps_max_entries_per_scope(redis_server: RedisServer) -> None:
    """With ``max_entries = 2``, a scope holds the two newest answers in Redis: a third
    gateway pulls two, and the oldest question is a miss there."""
    async with gateways(redis_server, count=3, max_entries=2) as (a, b, c):
        for question in ("Who wrote Hamlet?", "Who painted Guernica?", "Who built Petra?"):
            await marker(a, question)
        assert (await marker(b, "Petra: who built it?"))[1] == "semantic-hit"
        assert (await shared_stats(b))["pulled"] == 2
        assert (await marker(c, "Hamlet: who wrote it?"))[1] == "miss"
        assert (await shared_stats(c))["pulled"] == 2


async def test_without_redis_the_cache_goes_on_locally_and_no_request_fails(
    redis_server: RedisServer,
) -> None:
    """Redis stopped: every request is answered; the local index still hits, and the failed
    pushes and pulls are counted."""
    async with gateways(redis_server) as (a, b):
        redis_server.stop()
        assert await marker(a, "What is the capital of France?") == (
            "What is the capital of France?",
            "miss",
        )
        assert (await marker(a, "Tell me the capital of France, please."))[1] == "semantic-hit"
        assert (await marker(b, "Tell me the capital of France, please."))[1] == "miss"
        assert (await shared_stats(a))["errors"] >= 1
        assert (await shared_stats(b))["errors"] >= 1


async def test_an_embedding_answered_by_the_shared_answers_is_no_hit_of_the_chat(
    redis_server: RedisServer,
) -> None:
    """With answers shared through Redis too, the second gateway's embedding of the same
    question is the first one's (a shared hit of the *embedding* call); its chat, asked with
    another max_tokens, is answered by its upstream: ``x-cache: miss``, not ``hit``."""
    async with gateways(redis_server, coalescing=True) as (a, b):
        await marker(a, "Who wrote Hamlet?")
        answer, cached = await marker(b, "Who wrote Hamlet?", max_tokens=50)
        assert (answer, cached) == ("Who wrote Hamlet?", "miss")
        assert b.worker.embedded == []  # the embedding came from a's call, through Redis
        assert b.worker.chats == ["Who wrote Hamlet?"]


def test_a_pull_reaches_back_past_a_lagging_clock_without_taking_an_entry_twice() -> None:
    """The read position of a scope: an entry stored by a process whose clock lags (within
    SKEW_MS of the newest seen) is still new, one seen already is not, and ids older than
    the window are forgotten (a pull never reaches that far back)."""
    seen = _Seen()
    assert seen.new("a-1", 10_000)
    assert not seen.new("a-1", 10_000)
    assert seen.new("b-1", 10_000 - SKEW_MS + 1)  # stored by a lagging clock: still taken
    assert seen.new("a-2", 20_000)
    assert seen.since == 20_000
    assert set(seen.ids) == {"a-2"}  # 10_000 and before are outside the window now
