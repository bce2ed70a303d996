"""The answer cache: TTL, LRU bound, what is and is not stored, and replay as a stream."""

from __future__ import annotations

from collections import OrderedDict

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator import (
    Done,
    EchoWorker,
    GenerationParams,
    Passthrough,
    PromptRequest,
    ServerError,
    StreamEvent,
    TextDelta,
    Tool,
    Usage,
    open_pipeline,
)
from trio_orchestrator.resilience import CacheConfig, CacheLayer, LRUStore
from trio_orchestrator.resilience.config import SemanticCacheConfig
from trio_orchestrator.types import (
    RequestNotes,
    RequestTiming,
    reset_request_notes,
    set_request_notes,
)
from trio_orchestrator.workers import EventSink, collect


def greedy(text: str = "cache me please") -> PromptRequest:
    return PromptRequest(input=text, params=GenerationParams(temperature=0))


@attrs.define(eq=False)
class CountingWorker:
    """An echo worker that counts its calls and can be told to fail the next ones."""

    calls: int = 0
    failures: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ServerError("upstream 500", status=500)
        await EchoWorker(token_delay=0.01).generate(request, emit)


async def ask(layer: CacheLayer, request: PromptRequest) -> list[StreamEvent]:
    events: list[StreamEvent] = []

    async def emit(event: StreamEvent) -> None:
        events.append(event)

    await layer.generate(request, emit)
    return events


async def test_hit_replays_the_stored_stream_through_the_pipeline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A second streamed request is answered from the cache with the same events."""
    worker = CountingWorker()
    layer = CacheLayer(worker, CacheConfig(enabled=True))
    streams: list[list[StreamEvent]] = []
    async with open_pipeline(layer) as pipeline:
        for _ in range(2):
            async with pipeline.stream(greedy()) as events:
                streams.append([event async for event in events])
    assert worker.calls == 1
    assert streams[0] == streams[1]
    assert [e for e in streams[1] if isinstance(e, TextDelta)] == [
        TextDelta("cache "),
        TextDelta("me "),
        TextDelta("please"),
    ]
    assert isinstance(streams[1][-1], Done)
    stats = layer.statistics()
    assert (stats.hits, stats.misses, stats.stored, stats.size) == (1, 1, 1, 1)


async def test_entry_expires_after_its_ttl(autojump_clock: trio.testing.MockClock) -> None:
    """An answer is served until its TTL has passed, then asked for again."""
    worker = CountingWorker()
    layer = CacheLayer(worker, CacheConfig(enabled=True, ttl=60.0))
    await ask(layer, greedy())
    await trio.sleep(59)
    await ask(layer, greedy())
    assert worker.calls == 1
    await trio.sleep(2)
    await ask(layer, greedy())
    assert worker.calls == 2
    assert layer.statistics().expirations == 1


async def test_least_recently_used_entry_is_evicted() -> None:
    """With room for two, using ``a`` then adding ``c`` evicts ``b``, not ``a``."""
    worker = CountingWorker()
    layer = CacheLayer(worker, CacheConfig(enabled=True, max_entries=2))
    a, b, c = greedy("a"), greedy("b"), greedy("c")
    for request in (a, b, a, c):
        await ask(layer, request)
    assert worker.calls == 3
    await ask(layer, a)
    assert worker.calls == 3
    await ask(layer, b)
    assert worker.calls == 4
    stats = layer.statistics()
    assert (stats.evictions, stats.size) == (2, 2)


async def test_errors_are_not_cached() -> None:
    """A failed call stores nothing: the next identical request reaches the worker."""
    worker = CountingWorker(failures=1)
    layer = CacheLayer(worker, CacheConfig(enabled=True))
    async with open_pipeline(layer) as pipeline:
        try:
            await pipeline.submit(greedy())
        except ServerError:
            pass
        completion = await pipeline.submit(greedy())
    assert completion.text == "cache me please"
    assert worker.calls == 2
    assert layer.statistics().stored == 1


async def test_cancelled_answer_is_not_cached(autojump_clock: trio.testing.MockClock) -> None:
    """A stream the caller left half-way stores nothing."""
    worker = CountingWorker()
    layer = CacheLayer(worker, CacheConfig(enabled=True))
    with trio.move_on_after(0.015):
        await ask(layer, greedy())
    assert layer.statistics().size == 0
    await ask(layer, greedy())
    assert worker.calls == 2


async def test_sampled_requests_are_not_cached_by_default() -> None:
    """Requests with an unset temperature bypass the cache unless cache_sampled is set."""
    sampled = PromptRequest(input="hi")
    worker = CountingWorker()
    layer = CacheLayer(worker, CacheConfig(enabled=True))
    await ask(layer, sampled)
    await ask(layer, sampled)
    assert worker.calls == 2
    assert layer.statistics().bypassed == 2
    opted_in = CacheLayer(worker, CacheConfig(enabled=True, cache_sampled=True))
    await ask(opted_in, sampled)
    await ask(opted_in, sampled)
    assert worker.calls == 3


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("get"), st.sampled_from("abcdef")),
        st.tuples(st.just("put"), st.sampled_from("abcdef")),
        st.tuples(st.just("wait"), st.sampled_from([0.5, 1.0, 3.0])),
    ),
    max_size=60,
)


@given(ops=_OPS, max_entries=st.integers(1, 4), ttl=st.sampled_from([1.0, 2.5, 10.0]))
def test_store_agrees_with_a_reference_lru(
    ops: list[tuple[str, str | float]], max_entries: int, ttl: float
) -> None:
    """LRUStore matches an OrderedDict LRU with expiry times on every operation."""
    store: LRUStore[int] = LRUStore(max_entries, ttl)
    model: OrderedDict[str, tuple[float, int]] = OrderedDict()
    now, value = 0.0, 0
    for op, arg in ops:
        if op == "wait":
            assert isinstance(arg, float)
            now += arg
            continue
        assert isinstance(arg, str)
        if op == "put":
            value += 1
            store.put(arg, value, now)
            model[arg] = (now + ttl, value)
            model.move_to_end(arg)
            while len(model) > max_entries:
                model.popitem(last=False)
        else:
            entry = model.get(arg)
            if entry is not None and now >= entry[0]:
                del model[arg]
                entry = None
            if entry is not None:
                model.move_to_end(arg)
            assert store.get(arg, now) == (None if entry is None else entry[1])
        assert store.keys() == list(model)
        assert len(store) <= max_entries


@pytest.mark.parametrize(
    "request_",
    [
        greedy("a short answer"),
        PromptRequest(
            input="call a tool",
            params=GenerationParams(temperature=0, tools=(Tool("lookup"),), tool_choice="required"),
        ),
    ],
)
async def test_miss_and_hit_keep_the_worker_contract(request_: PromptRequest) -> None:
    """Both a miss and a hit give the grammar-checked answer of the bare worker."""
    worker = EchoWorker()
    layer = CacheLayer(worker, CacheConfig(enabled=True))
    expected = await collect(worker, request_)
    assert await collect(layer, request_) == expected
    assert await collect(layer, request_) == expected
    assert layer.statistics().hits == 1


@attrs.define(eq=False)
class RichWorker:
    """Answers with members passed through and usage details, counting its calls."""

    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        await emit(Passthrough({"system_fingerprint": "fp_1"}, {"logprobs": {"content": []}}))
        await emit(TextDelta("Hi"))
        await emit(Passthrough(message={"refusal": None, "annotations": []}))
        usage = Usage(9, 2, cached_input_tokens=8, reasoning_tokens=1, details=DETAILS)
        await emit(usage)
        await emit(Done("stop", "Hi", usage))


DETAILS = {"prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {}}


async def test_a_hit_replays_passthrough_members_and_usage_details() -> None:
    """A cached answer keeps its Passthrough events and its usage details."""
    inner = RichWorker()
    layer = CacheLayer(inner, CacheConfig(enabled=True))
    first = await collect(layer, greedy())
    second = await collect(layer, greedy())
    assert inner.calls == 1
    for completion in (first, second):
        assert completion.passthrough is not None
        assert completion.passthrough.response == {"system_fingerprint": "fp_1"}
        assert completion.passthrough.choice == {"logprobs": {"content": []}}
        assert completion.passthrough.message == {"refusal": None, "annotations": []}
        assert completion.usage == Usage(9, 2, cached_input_tokens=8, reasoning_tokens=1)
        assert completion.usage.details == DETAILS


# Tests that kill mutants the mutation session (scripts/mutation.py) found surviving.


def test_resize_keeps_the_most_recent_and_counts_each_eviction() -> None:
    """Shrinking evicts least recently used entries one count each; the new TTL applies next."""
    store: LRUStore[str] = LRUStore(4, 10.0)
    for key in "abcd":
        store.put(key, key.upper(), 0.0)
    store.resize(2, 5.0)
    assert store.keys() == ["c", "d"]
    assert (store.evictions, store.max_entries, store.ttl) == (2, 2, 5.0)
    store.resize(2, 5.0)  # already within the bound: nothing more goes
    assert store.evictions == 2
    store.put("e", "E", 0.0)
    assert store.keys() == ["d", "e"]
    assert store.evictions == 3
    assert store.get("e", 4.9) == "E"
    assert store.get("e", 5.0) is None


def test_store_counters_add_up_and_expire_at_the_ttl() -> None:
    """Hits, misses and expirations each count every time; an entry expires at put + ttl."""
    store: LRUStore[str] = LRUStore(8, 10.0)
    store.put("a", "A", 0.0)
    store.put("b", "B", 0.0)
    assert [store.get("a", 1.0), store.get("a", 2.0)] == ["A", "A"]
    assert [store.get("x", 1.0), store.get("b", 10.0), store.get("a", 10.0)] == [None] * 3
    assert (store.hits, store.misses, store.expirations) == (2, 3, 2)


@attrs.define(eq=False)
class _Scripted:
    """A worker that emits exactly ``events`` (a broken answer, for what is not cached)."""

    events: list[StreamEvent]

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        for event in self.events:
            await emit(event)


@pytest.mark.parametrize(
    "events",
    [
        [TextDelta("a")],
        [Done("stop", "a", None, (), "m"), TextDelta("a")],
    ],
    ids=["no Done", "Done not last"],
)
async def test_an_answer_not_ending_in_its_one_done_is_not_stored(
    events: list[StreamEvent],
) -> None:
    """Only an answer whose single Done is its last event is kept."""
    layer = CacheLayer(_Scripted(events), CacheConfig(enabled=True))
    assert await ask(layer, greedy()) == events
    assert layer.statistics().stored == 0


async def test_stored_counts_every_answer_kept() -> None:
    """Each complete answer stored adds one; the bound is reported."""
    layer = CacheLayer(CountingWorker(), CacheConfig(enabled=True, max_entries=7))
    await ask(layer, greedy("one"))
    await ask(layer, greedy("two"))
    stats = layer.statistics()
    assert (stats.stored, stats.max_entries, stats.size) == (2, 7, 2)


async def test_reconfigure_resizes_and_retimes_but_refuses_a_toggle() -> None:
    """A reload shrinks the store and changes the TTL; turning the cache off is refused."""
    layer = CacheLayer(CountingWorker(), CacheConfig(enabled=True, max_entries=4, ttl=100.0))
    for text in ("a", "b", "c"):
        await ask(layer, greedy(text))
    assert layer.reconfigure(CacheConfig(enabled=True, max_entries=1, ttl=5.0)) == []
    stats = layer.statistics()
    assert (stats.size, stats.max_entries, stats.evictions) == (1, 1, 2)
    refused = layer.reconfigure(CacheConfig(enabled=False, max_entries=9))
    assert refused == [
        "resilience.cache.enabled: adding or removing a layer needs a restart True → False"
    ]
    assert layer.statistics().max_entries == 1


async def test_a_reloaded_ttl_applies_to_new_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a reload to a 5 s TTL, an answer stored then is gone 5 s later."""
    worker = CountingWorker()
    layer = CacheLayer(worker, CacheConfig(enabled=True, ttl=100.0))
    layer.reconfigure(CacheConfig(enabled=True, ttl=5.0))
    await ask(layer, greedy())
    await trio.sleep(5.0)
    await ask(layer, greedy())
    assert worker.calls == 2


async def test_a_lookup_marks_the_requests_timing_miss_then_hit() -> None:
    """A miss marks the request's timing "miss"; a hit marks it "hit", over an outer miss."""
    layer = CacheLayer(CountingWorker(), CacheConfig(enabled=True))
    first = attrs.evolve(greedy(), timing=RequestTiming(arrived=0.0))
    await ask(layer, first)
    assert first.timing is not None
    assert first.timing.cache == "miss"
    # An outer cache (the semantic one) looked first and missed; the exact hit wins.
    second = attrs.evolve(greedy(), timing=RequestTiming(arrived=0.0, cache="miss"))
    await ask(layer, second)
    assert second.timing is not None
    assert second.timing.cache == "hit"


async def test_a_hit_notes_cache_hit_for_the_request_log() -> None:
    """The request's notes say cache_hit on a hit, and not on the miss before it."""
    layer = CacheLayer(CountingWorker(), CacheConfig(enabled=True))
    seen: list[bool] = []
    for _ in range(2):
        notes = RequestNotes()
        token = set_request_notes(notes)
        try:
            await ask(layer, greedy())
        finally:
            reset_request_notes(token)
        seen.append(notes.cache_hit)
    assert seen == [False, True]


async def test_reconfigure_refuses_toggling_the_semantic_cache_by_its_name() -> None:
    """Turning the semantic cache on by a reload is refused, naming its section."""
    layer = CacheLayer(CountingWorker(), CacheConfig(enabled=True, max_entries=4))
    section = CacheConfig(
        enabled=True,
        max_entries=1,
        semantic=SemanticCacheConfig(enabled=True, embedding_model="e"),
    )
    assert layer.reconfigure(section) == [
        "resilience.cache.semantic.enabled: adding or removing a layer needs a restart False → True"
    ]
    assert layer.statistics().max_entries == 4
