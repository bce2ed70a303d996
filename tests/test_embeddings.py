"""Embedding requests in the library: the request and event, the pipeline's stages and
layers (cache, coalescing, shared answers), the router's choice, and the wire helpers."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import httpx
import pytest
import trio
from redis_fixture import RedisServer, redis_server

from trio_orchestrator import Config, PromptRequest, open_gateway, open_pipeline
from trio_orchestrator.distributed import DistributedConfig
from trio_orchestrator.errors import BadRequest, MalformedResponse, UnsupportedParameter
from trio_orchestrator.events import Accumulator, Done, Embeddings, EventGrammarError, Usage
from trio_orchestrator.pipeline import DefaultAssembler
from trio_orchestrator.resilience import ResilienceConfig, is_deterministic, request_key
from trio_orchestrator.resilience.config import CacheConfig, CoalescingConfig
from trio_orchestrator.resilience.ratelimit import estimate_tokens
from trio_orchestrator.routing import ModelDeployment, RoutingConfig
from trio_orchestrator.routing.router import RouterWorker
from trio_orchestrator.types import Document, GenerationParams
from trio_orchestrator.workers import EchoWorker, EventSink, OpenAIWorker, collect
from trio_orchestrator.workers.embeddings import decode_vector, encode_vector

__all__ = ["redis_server"]


def embed(*inputs: str | Sequence[int], model: str = "echo") -> PromptRequest:
    """An embedding request for ``inputs``."""
    return PromptRequest(embed=inputs, params=GenerationParams(model=model))


@attrs.define(eq=False)
class CountingEmbedder:
    """Embeds with the echo worker after ``delay`` seconds, counting its calls and keeping
    the requests it saw."""

    delay: float = 0.0
    seen: list[PromptRequest] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Embed ``request`` (it must be an embedding request)."""
        assert request.embed is not None
        self.seen.append(request)
        await trio.sleep(self.delay)
        await EchoWorker().generate(request, emit)


# ----------------------------------------------------------------- the request and event


def test_an_embedding_request_has_inputs_and_nothing_else() -> None:
    """`embed` needs an input, excludes messages and a prompt, and keeps token arrays."""
    with pytest.raises(ValueError, match="at least one input"):
        PromptRequest(embed=[])
    with pytest.raises(ValueError, match="no messages and no input"):
        PromptRequest(input="hi", embed=["a"])
    assert embed("a", [1, 2]).embed == ("a", (1, 2))


def test_the_accumulator_keeps_the_vectors_and_refuses_a_second_set() -> None:
    """Embeddings end up in the completion; two Embeddings events break the grammar."""
    twice = Accumulator()
    twice.add(Embeddings(((1.0,),)))
    with pytest.raises(EventGrammarError):
        twice.add(Embeddings(((3.0,),)))
    accumulator = Accumulator()
    accumulator.add(Embeddings(((1.0, 2.0),)))
    accumulator.add(Usage(2, 0))
    accumulator.add(Done("stop", "", Usage(2, 0)))
    completion = accumulator.completion("r")
    assert completion.embeddings == ((1.0, 2.0),)
    assert completion.usage == Usage(2, 0)


def test_base64_vectors_are_float32_little_endian() -> None:
    """encode_vector gives OpenAI's bytes; decode_vector reverses it and refuses odd sizes."""
    assert encode_vector([1.0, -2.0]) == "AACAPwAAAMA="
    assert decode_vector("AACAPwAAAMA=") == (1.0, -2.0)
    with pytest.raises(ValueError, match="float32"):
        decode_vector("AAA=")


def test_rate_limits_estimate_an_embedding_by_its_inputs_alone() -> None:
    """Characters / 4 of the texts, a token array's length, and no output tokens."""
    assert estimate_tokens(embed("x" * 40, [1, 2, 3]), default_max_tokens=256) == 13


# ----------------------------------------------------------------- keys


def test_keys_follow_the_inputs_and_embeddings_are_deterministic() -> None:
    """Same inputs share a key; other inputs, order or model do not; always cacheable."""
    assert request_key(embed("a", "b")) == request_key(embed("a", "b"))
    others = [embed("b", "a"), embed("a"), embed("a", [1]), embed("a", "b", model="other")]
    assert len({request_key(r) for r in [embed("a", "b"), *others]}) == 5
    assert request_key(embed("a")) != request_key(PromptRequest(input="a"))
    assert is_deterministic(embed("a"))


# ----------------------------------------------------------------- the pipeline


async def test_the_pipeline_completes_an_embedding_request_unassembled() -> None:
    """Vectors reach the completion; no system prompt or retrieved context is added."""
    worker = CountingEmbedder()

    class Retriever:
        async def retrieve(self, request: PromptRequest) -> list[Document]:
            raise AssertionError("an embedding request was sent to retrieval")

    assembler = DefaultAssembler(system_prompt="be brief")
    async with open_pipeline(worker, retriever=Retriever(), assembler=assembler) as pipeline:
        completion = await pipeline.submit(embed("a b", "c"))
        statistics = pipeline.statistics()
    assert [len(v) for v in completion.embeddings] == [16, 16]
    assert completion.usage == Usage(3, 0)
    assert worker.seen[0].messages == ()
    assert (statistics.submitted, statistics.completed) == (1, 1)


async def test_the_cache_answers_a_repeated_embedding_request_only() -> None:
    """The same inputs again come from the cache; other inputs call the worker."""
    worker = CountingEmbedder()
    config = Config(resilience=ResilienceConfig(cache=CacheConfig(enabled=True)))
    async with open_gateway(config, worker=worker) as gateway:
        pipeline = gateway.pipeline
        first = await pipeline.submit(embed("a"))
        again = await pipeline.submit(embed("a"))
        other = await pipeline.submit(embed("b"))
    assert len(worker.seen) == 2
    assert again.embeddings == first.embeddings != other.embeddings


async def test_identical_embedding_requests_in_flight_share_one_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Coalescing merges identical embedding requests; different inputs are not merged."""
    worker = CountingEmbedder(delay=1.0)
    config = Config(resilience=ResilienceConfig(coalescing=CoalescingConfig(enabled=True)))
    results = {}
    async with open_gateway(config, worker=worker) as gateway, trio.open_nursery() as nursery:

        async def ask(name: str, text: str) -> None:
            results[name] = await gateway.pipeline.submit(embed(text))

        for name, text in (("one", "a"), ("two", "a"), ("three", "b")):
            nursery.start_soon(ask, name, text)
    assert len(worker.seen) == 2
    assert results["one"].embeddings == results["two"].embeddings != results["three"].embeddings


async def test_a_shared_cache_gives_embeddings_to_another_process(
    redis_server: RedisServer,
) -> None:
    """Through Redis, a second process replays the first one's vectors without a call."""
    first, second = CountingEmbedder(), CountingEmbedder()
    config = Config(
        resilience=ResilienceConfig(
            cache=CacheConfig(enabled=True), coalescing=CoalescingConfig(enabled=True)
        ),
        distributed=DistributedConfig(redis_url=redis_server.url, health_interval=0.05),
    )
    async with (
        open_gateway(config, worker=first) as a,
        open_gateway(config, worker=second) as b,
    ):
        answer = await a.pipeline.submit(embed("shared", [7, 8]))
        replayed = await b.pipeline.submit(embed("shared", [7, 8]))
    assert (len(first.seen), len(second.seen)) == (1, 0)
    assert replayed.embeddings == answer.embeddings
    assert replayed.usage == answer.usage


# ----------------------------------------------------------------- the router


def _router(context_window: int, capabilities: Sequence[str]) -> RouterWorker:
    deployment = ModelDeployment(
        "e@echo", "e", "echo", context_window=context_window, capabilities=capabilities
    )
    return RouterWorker({"e@echo": (deployment, EchoWorker())}, RoutingConfig())


async def test_the_router_fits_each_input_on_its_own() -> None:
    """A batch larger than the window in all is routed when every input fits alone."""
    request = embed(*["word " * 40] * 10, model="e")  # ~50 tokens each, ~500 in all
    completion = await collect(_router(100, ["embeddings"]), request)
    assert len(completion.embeddings) == 10


async def test_the_router_skips_a_deployment_without_the_embeddings_capability() -> None:
    """A deployment that does not declare `embeddings` is not called for an embedding."""
    with pytest.raises(BadRequest, match="lacks embeddings"):
        await collect(_router(8192, ["streaming"]), embed("a", model="e"))


# ----------------------------------------------------------------- workers


async def test_the_openai_worker_refuses_an_answer_without_a_vector_per_input() -> None:
    """Fewer vectors than inputs is a MalformedResponse, not a short answer."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0]}]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        worker = OpenAIWorker(client, "http://upstream/v1")
        with pytest.raises(MalformedResponse, match="one vector per input"):
            await collect(worker, embed("a", "b", model="m"))


async def test_the_echo_worker_refuses_absurd_dimensions() -> None:
    """More dimensions than the echo worker gives is an UnsupportedParameter naming them."""
    request = PromptRequest(embed=["a"], params=GenerationParams(extra={"dimensions": 10**9}))
    with pytest.raises(UnsupportedParameter) as caught:
        await collect(EchoWorker(), request)
    assert caught.value.param == "dimensions"
