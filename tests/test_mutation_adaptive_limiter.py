"""Behaviour of the adaptive limiter and its layer that the mutation session
(scripts/mutation.py, resilience/adaptive_limiter.py) showed unpinned: admission order, the
wait budget, counters, statistics, per-model targets, reloads and what counts as a drop."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from trio_orchestrator.errors import BadRequest, Overloaded, RateLimited, ServerError
from trio_orchestrator.events import Done, TextDelta
from trio_orchestrator.resilience import (
    AdaptiveConfig,
    AdaptiveLimiter,
    AdaptiveLimitLayer,
    AdaptiveStatistics,
    ConcurrencyLimited,
    GradientLimit,
)
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import EchoWorker, EventSink
from trio_orchestrator.workers.config import ProviderConfig


def _config(**changes: object) -> AdaptiveConfig:
    base = AdaptiveConfig(enabled=True, initial_limit=2, max_limit=10, max_waiting=4)
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


# A limit held at 1 whose every call closes a window (so one call sets the baseline).
_FIXED = {"initial_limit": 1, "max_limit": 1, "min_samples": 1, "window": 0.1}


def _request(model: str = "m") -> PromptRequest:
    return PromptRequest(input="hi", params=GenerationParams(model=model))


async def _ignore(_event: object) -> None:
    pass


@attrs.define
class Scripted:
    """Waits ``first`` s, emits a delta, waits ``rest`` s, then ends with Done or raises
    ``error`` (before any event when ``first`` is None)."""

    first: float | None = 0.5
    rest: float = 0.0
    error: BaseException | None = None
    name: str = "scripted"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        if self.first is not None:
            await trio.sleep(self.first)
            await emit(TextDelta("x"))
        await trio.sleep(self.rest)
        if self.error is not None:
            raise self.error
        await emit(Done("stop", "x"))


async def _with_baseline(rtt: float, **changes: object) -> AdaptiveLimiter:
    """A limiter held at limit 1 whose baseline latency is ``rtt`` seconds."""
    limiter = AdaptiveLimiter(_config(**{**_FIXED, **changes}), "p/m")
    await trio.sleep(1.0)
    limiter.record(rtt, await limiter.acquire(), dropped=False)
    assert limiter.statistics().baseline_rtt == rtt
    return limiter


async def test_an_unused_layer_reports_its_initial_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Before any call, the layer's statistics are the provider's initial limit, all zero."""
    layer = AdaptiveLimitLayer(EchoWorker(), _config(initial_limit=3), provider="p")
    stats = layer.statistics()
    assert stats == AdaptiveStatistics("p", 3, 0, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    assert layer.targets() == ()
    assert layer.name == "p"


async def test_calls_beyond_the_limit_wait_and_are_admitted_first_come_first_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Limit 2: two calls are admitted at once (acquire says how many are in flight), two
    more wait and each release admits the one that waited longest."""
    limiter = AdaptiveLimiter(_config(max_wait=100.0), "p")
    assert limiter.idle
    assert [await limiter.acquire(), await limiter.acquire()] == [1, 2]
    admitted: list[tuple[str, int]] = []

    async def wait(name: str) -> None:
        admitted.append((name, await limiter.acquire()))

    async with trio.open_nursery() as nursery:
        for name in ("first", "second"):
            nursery.start_soon(wait, name)
            await trio.sleep(1.0)
        stats = limiter.statistics()
        assert (stats.in_flight, stats.waiting, stats.admitted) == (2, 2, 2)
        assert not limiter.idle
        limiter.release()
        await trio.sleep(1.0)
        assert admitted == [("first", 2)]
        assert (limiter.in_flight, limiter.statistics().waiting) == (2, 1)
        limiter.release()
    assert admitted == [("first", 2), ("second", 2)]
    assert limiter.statistics().admitted == 4
    limiter.release()
    limiter.release()
    assert limiter.idle
    assert limiter.in_flight == 0


async def test_the_queue_holds_max_waiting_calls_and_sheds_the_next_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the limit reached and max_waiting 2 calls waiting, a third is refused at once
    with the limit, the reason and a Retry-After of at least a second."""
    limiter = AdaptiveLimiter(_config(initial_limit=1, max_waiting=2, max_wait=100.0), "p/m")
    await limiter.acquire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.acquire)
        nursery.start_soon(limiter.acquire)
        await trio.sleep(1.0)
        with pytest.raises(ConcurrencyLimited) as refused:
            await limiter.acquire()
        assert trio.current_time() == 1.0
        assert str(refused.value) == (
            "p/m is at its adaptive concurrency limit of 1 calls and its queue is full; "
            "retry after Retry-After"
        )
        assert (refused.value.provider, refused.value.retry_after) == ("p", 1.0)
        assert not refused.value.retryable
        assert not refused.value.trips_breaker
        stats = limiter.statistics()
        assert (stats.waiting, stats.shed, stats.admitted) == (2, 1, 1)
        nursery.cancel_scope.cancel()


async def test_without_a_queue_a_call_over_the_limit_is_shed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_waiting 0: the call over the limit is refused at once, never admitted."""
    limiter = AdaptiveLimiter(_config(initial_limit=1, max_waiting=0), "p")
    await limiter.acquire()
    with pytest.raises(ConcurrencyLimited, match="queue is full"):
        await limiter.acquire()
    assert (limiter.in_flight, limiter.statistics().shed) == (1, 1)


async def test_a_call_waits_max_wait_without_a_deadline_then_leaves_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No slot frees: the waiter is refused after max_wait, leaves the queue, and the slot
    freed later is not handed to it."""
    limiter = AdaptiveLimiter(_config(initial_limit=1, max_wait=1.5), "p")
    await limiter.acquire()
    with pytest.raises(ConcurrencyLimited, match=r"no slot freed within 1\.5 s"):
        await limiter.acquire()
    assert trio.current_time() == 1.5
    stats = limiter.statistics()
    assert (stats.waiting, stats.shed, stats.in_flight) == (0, 1, 1)
    limiter.release()
    assert limiter.idle
    assert await limiter.acquire() == 1


async def test_the_wait_leaves_one_baseline_latency_of_the_deadline_for_the_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Baseline 2 s: a call 5 s from its deadline waits 3 s; one 2.5 s from it 0.5 s; one
    exactly 2 s from it is shed without waiting; Retry-After is the baseline."""
    limiter = await _with_baseline(2.0, max_wait=10.0)
    await limiter.acquire()
    start = trio.current_time()
    for left, waited in ((5.0, 3.0), (2.5, 0.5)):
        with trio.fail_after(left), pytest.raises(ConcurrencyLimited) as refused:
            await limiter.acquire()
        assert trio.current_time() - start == pytest.approx(waited)
        assert f"no slot freed within {waited:g} s" in str(refused.value)
        start = trio.current_time()
    with trio.fail_after(2.0), pytest.raises(ConcurrencyLimited, match="leaves no time") as shed:
        await limiter.acquire()
    assert trio.current_time() == start
    reason = " calls and the call's deadline leaves no time to wait for a slot; retry after"
    assert reason in str(shed.value)
    assert shed.value.retry_after == 2.0
    assert limiter.statistics().shed == 3


async def test_a_cancelled_waiter_leaves_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    """A waiter its caller abandons is gone from the queue; the next free slot stays free."""
    limiter = AdaptiveLimiter(_config(initial_limit=1, max_wait=100.0), "p")
    await limiter.acquire()
    with trio.move_on_after(1.0):
        await limiter.acquire()
    assert limiter.statistics().waiting == 0
    limiter.release()
    assert limiter.idle


async def test_a_waiter_cancelled_as_it_is_handed_a_slot_gives_the_slot_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A waiter cancelled in the same instant a release hands it the slot frees that slot."""
    limiter = AdaptiveLimiter(_config(initial_limit=1, max_wait=100.0), "p")
    await limiter.acquire()
    outcome: list[str] = []

    async def wait(scope: trio.CancelScope) -> None:
        with scope:
            await limiter.acquire()
            outcome.append("admitted")
        outcome.append("cancelled" if scope.cancelled_caught else "left")

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        nursery.start_soon(wait, scope)
        await trio.sleep(1.0)
        assert limiter.statistics().waiting == 1
        scope.cancel()
        limiter.release()  # hands the slot to the waiter before it sees its cancellation
    assert outcome == ["cancelled"]
    assert limiter.idle
    assert (limiter.in_flight, limiter.statistics().admitted) == (0, 1)


async def test_record_gives_the_algorithm_the_sample_and_frees_the_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """AIMD at limit 4: a fast call with 2 in flight raises the limit, one with 1 does not, a
    call slower than slow_call or dropped cuts it; each frees its slot."""
    limiter = AdaptiveLimiter(
        _config(algorithm="aimd", initial_limit=4, slow_call=1.0, window=1.0), "p"
    )
    for _ in range(4):
        await limiter.acquire()
    limiter.record(0.5, 1, dropped=False)
    assert (limiter.limit, limiter.in_flight) == (4, 3)
    limiter.record(0.5, 2, dropped=False)
    assert (limiter.limit, limiter.in_flight) == (5, 2)
    limiter.record(1.5, 2, dropped=False)
    assert (limiter.limit, limiter.in_flight) == (3, 1)
    await trio.sleep(2.0)
    limiter.record(0.1, 1, dropped=True)
    stats = limiter.statistics()
    assert (stats.limit, stats.in_flight, stats.drops, stats.cuts, stats.raises) == (2, 0, 2, 2, 1)


async def test_slower_than_baseline_is_strictly_slower_than_a_known_baseline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No baseline: nothing is slower; baseline 2 s: 2.5 s is, 2 s and 1 s are not."""
    assert not AdaptiveLimiter(_config(), "p").slower_than_baseline(100.0)
    limiter = await _with_baseline(2.0)
    assert limiter.slower_than_baseline(2.5)
    assert not limiter.slower_than_baseline(2.0)
    assert not limiter.slower_than_baseline(1.0)


async def test_a_reload_raising_the_limit_admits_the_waiting_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Limit 1 with two calls waiting: a reload with min_limit 3 admits both at once, and
    its max_waiting 0 applies to the next call."""
    limiter = AdaptiveLimiter(_config(initial_limit=1, max_wait=100.0), "p")
    await limiter.acquire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.acquire)
        nursery.start_soon(limiter.acquire)
        await trio.sleep(1.0)
        limiter.reconfigure(_config(initial_limit=3, min_limit=3, max_waiting=0))
        assert (limiter.limit, limiter.in_flight) == (3, 3)
    assert limiter.config.max_waiting == 0
    with pytest.raises(ConcurrencyLimited, match="queue is full"):
        await limiter.acquire()


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ({"max_limit": 10, "initial_limit": 1}, 10),
        ({"min_limit": 30, "initial_limit": 30, "max_limit": 40}, 30),
        ({"initial_limit": 1, "max_limit": 100}, 20),
    ],
)
async def test_a_new_algorithm_starts_from_the_current_limit_within_the_new_bounds(
    autojump_clock: trio.testing.MockClock, bounds: dict[str, int], expected: int
) -> None:
    """Gradient at 20 switched to AIMD: it starts at 20 moved into the new bounds (not at
    the new initial_limit), and it is AIMD (a slow call is a drop)."""
    limiter = AdaptiveLimiter(_config(initial_limit=20, max_limit=100), "p")
    limiter.reconfigure(_config(algorithm="aimd", slow_call=1.0, **bounds))
    assert (limiter.limit, limiter.config.algorithm) == (expected, "aimd")
    await trio.sleep(5.0)
    limiter.record(2.0, await limiter.acquire(), dropped=False)
    assert limiter.statistics().drops == 1


async def test_per_model_limiters_are_named_and_kept_apart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without per_model every model shares the provider's limiter, named after it; with it
    each model has its own, named provider/model."""
    shared = AdaptiveLimitLayer(EchoWorker(), _config(), provider="p")
    assert shared.limiter("a") is shared.limiter("b")
    assert shared.limiter("a").name == "p"
    apart = AdaptiveLimitLayer(EchoWorker(), _config(per_model=True), provider="p")
    assert apart.limiter("a") is not apart.limiter("b")
    assert apart.limiter("a") is apart.limiter("a")
    assert [t.target for t in apart.targets()] == ["p/a", "p/b"]


async def test_past_256_models_the_idle_limiters_are_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """256 per-model limiters are kept; the 257th forgets the idle ones, never a busy one."""
    layer = AdaptiveLimitLayer(EchoWorker(), _config(per_model=True), provider="p")
    await layer.limiter("busy").acquire()
    for index in range(255):
        layer.limiter(f"m{index}")
    assert len(layer.targets()) == 256
    layer.limiter("new")
    assert [t.target for t in layer.targets()] == ["p/busy", "p/new"]


async def test_a_provider_with_several_models_sums_their_limits_and_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Per model: the provider's statistics sum limits, load and counters, and give the
    lowest baseline and the highest window latency."""
    config = _config(per_model=True, initial_limit=4, min_samples=1, window=0.1, max_waiting=0)
    layer = AdaptiveLimitLayer(EchoWorker(), config, provider="p")
    fast, slow = layer.limiter("fast"), layer.limiter("slow")
    await trio.sleep(1.0)
    fast.record(1.0, await fast.acquire(), dropped=False)
    slow.record(3.0, await slow.acquire(), dropped=False)
    await slow.acquire()
    await slow.acquire()
    await trio.sleep(1.0)
    slow.record(0.0, 2, dropped=True)
    for _ in range(fast.limit):
        await fast.acquire()
    with pytest.raises(ConcurrencyLimited):
        await fast.acquire()
    a, b = layer.targets()
    assert (a.baseline_rtt, b.baseline_rtt, a.window_rtt, b.window_rtt) == (1.0, 3.0, 1.0, 3.0)
    assert layer.statistics() == AdaptiveStatistics(
        target="p",
        limit=a.limit + b.limit,
        in_flight=a.in_flight + b.in_flight,
        waiting=0,
        baseline_rtt=1.0,
        window_rtt=3.0,
        admitted=a.admitted + b.admitted,
        shed=1,
        drops=1,
        cuts=a.cuts + b.cuts,
        raises=a.raises + b.raises,
    )
    assert (a.in_flight, b.in_flight, a.admitted, b.admitted) == (a.limit, 1, a.limit + 1, 3)
    assert b.cuts == 1


async def test_a_single_target_is_the_provider_statistics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One limiter: the provider's statistics are its own."""
    layer = AdaptiveLimitLayer(Scripted(), _config(), provider="p")
    await layer.generate(_request(), _ignore)
    (only,) = layer.targets()
    assert layer.statistics() == only
    assert (only.target, only.admitted, only.in_flight) == ("p", 1, 0)


async def test_a_reload_refusal_names_each_setting_and_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Switching enabled or per_model is refused with the old and new values, and the
    rest of that section is not applied; without an entry nothing is refused."""
    layer = AdaptiveLimitLayer(EchoWorker(), _config(initial_limit=5), provider="p")
    layer.limiter("m")
    assert layer.reconfigure(None) == []
    section = _config(enabled=False, initial_limit=1, max_limit=1)
    refused = layer.reconfigure(ProviderConfig(kind="echo", name="p", adaptive=section))
    assert refused == [
        "providers.p.adaptive.enabled: changes only on a restart True → False",
    ]
    assert layer.statistics().limit == 5
    assert layer.config.max_limit == 10
    section = _config(per_model=True)
    refused = layer.reconfigure(ProviderConfig(kind="echo", name="p", adaptive=section))
    assert refused == ["providers.p.adaptive.per_model: changes only on a restart False → True"]


async def test_an_accepted_reload_applies_to_every_limiter_and_the_next_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reload moves each model's limit into the new bounds, and a model first seen after
    it starts from the new initial limit."""
    layer = AdaptiveLimitLayer(EchoWorker(), _config(per_model=True, initial_limit=8), provider="p")
    layer.limiter("a")
    layer.limiter("b")
    section = _config(per_model=True, initial_limit=2, max_limit=3)
    assert layer.reconfigure(ProviderConfig(kind="echo", name="p", adaptive=section)) == []
    assert layer.config == section
    layer.limiter("c")
    assert [t.limit for t in layer.targets()] == [3, 3, 2]


async def test_a_call_s_latency_is_its_time_to_the_first_event_after_admission(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call that waited 1 s for a slot and then took 0.5 s to its first event (and 3 s
    more to its end) is a 0.5 s sample; one with no event at all is its whole time."""
    layer = AdaptiveLimitLayer(Scripted(first=0.5, rest=3.0), _config(**_FIXED, max_wait=10))
    await trio.sleep(1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(layer.generate, _request(), _ignore)
        await trio.sleep(2.5)
        await layer.generate(_request(), _ignore)  # waits 1 s for the first one's slot
    assert layer.statistics().window_rtt == pytest.approx(0.5)
    assert layer.statistics().admitted == 2
    layer.inner = Scripted(first=None, rest=0.7)
    await layer.generate(_request(), _ignore)
    assert layer.statistics().window_rtt == pytest.approx(0.7)


async def test_the_calls_in_flight_at_admission_go_with_the_sample(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """AIMD at limit 4: a lone call (1 in flight) does not raise the limit; of two at once,
    the second (2 in flight) does."""
    layer = AdaptiveLimitLayer(Scripted(), _config(algorithm="aimd", initial_limit=4))
    await layer.generate(_request(), _ignore)
    assert layer.statistics().limit == 4
    async with trio.open_nursery() as nursery:
        nursery.start_soon(layer.generate, _request(), _ignore)
        nursery.start_soon(layer.generate, _request(), _ignore)
    assert layer.statistics().limit == 5


@pytest.mark.parametrize(
    ("error", "drop"),
    [
        (RateLimited("429", status=429), True),
        (Overloaded("529", status=529), True),
        (ServerError("500", status=500), True),
        (BaseExceptionGroup("nursery", [RateLimited("429", status=429)]), True),
        (BadRequest("400", status=400), False),
        (ValueError("a bug"), False),
        (
            BaseExceptionGroup("nursery", [RateLimited("429"), RateLimited("429")]),
            False,
        ),
    ],
)
async def test_which_failures_are_drops(
    autojump_clock: trio.testing.MockClock, error: BaseException, drop: bool
) -> None:
    """429, overload and 5xx (alone or as a nursery's only error) are drops that cut; an
    invalid request, a bug or several errors at once are no sample; each frees its slot."""
    layer = AdaptiveLimitLayer(Scripted(first=0.2, error=error), _config(initial_limit=4))
    with pytest.raises(type(error)):
        await layer.generate(_request(), _ignore)
    stats = layer.statistics()
    assert (stats.drops, stats.cuts, stats.in_flight) == (int(drop), int(drop), 0)
    assert layer.limiter("m")._algorithm.statistics().samples == int(drop)


async def _abandon_after(layer: AdaptiveLimitLayer, seconds: float) -> None:
    """Call ``layer`` and leave after ``seconds``, as a client does (no deadline)."""

    async def leave(scope: trio.CancelScope) -> None:
        await trio.sleep(seconds)
        scope.cancel()

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as client:
            nursery.start_soon(leave, client)
            await layer.generate(_request(), _ignore)


async def test_an_abandoned_call_that_had_its_first_event_is_no_sample(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Baseline 0.5 s: a call abandoned at 3 s after a first event at 0.6 s says nothing;
    one abandoned at 0.3 s before any event (not slower than the baseline) neither; one
    abandoned at 0.7 s with no event (within tolerance of the baseline) is a 0.7 s sample."""
    upstream = Scripted(first=0.5)
    layer = AdaptiveLimitLayer(upstream, _config(**_FIXED))
    await trio.sleep(1.0)
    await layer.generate(_request(), _ignore)
    limiter = layer.limiter("m")
    for first, after in ((0.6, 3.0), (10.0, 0.3)):
        upstream.first, upstream.rest = first, 100.0
        await _abandon_after(layer, after)
        assert limiter._algorithm.statistics().samples == 1
        assert limiter.in_flight == 0
    upstream.first = 10.0
    await trio.sleep(1.0)
    await _abandon_after(layer, 0.7)
    stats = layer.statistics()
    assert stats.window_rtt == pytest.approx(0.7)
    assert (stats.drops, stats.in_flight) == (0, 0)


async def test_a_gradient_limit_switched_to_starts_its_first_window_at_the_reload(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """AIMD switched to gradient at t=10 (window 1 s, one sample a window): a call ending
    at 10.5 s is still in the first window; one ending at 11.5 s closes it."""
    limiter = AdaptiveLimiter(_config(algorithm="aimd", initial_limit=4), "p")
    await trio.sleep(10.0)
    limiter.reconfigure(_config(initial_limit=4, min_samples=1, window=1.0))
    await trio.sleep(0.5)
    limiter.record(0.25, await limiter.acquire(), dropped=False)
    assert limiter.statistics().window_rtt == 0.0
    await trio.sleep(1.0)
    limiter.record(0.5, await limiter.acquire(), dropped=False)
    assert limiter.statistics().window_rtt > 0.0  # the window of both calls closed


async def test_a_refusal_names_the_provider_of_a_model_whose_name_has_slashes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Per model, a refusal for ``org/model`` at provider ``p`` names provider ``p``."""
    layer = AdaptiveLimitLayer(
        Scripted(first=5.0), _config(per_model=True, initial_limit=1, max_waiting=0), provider="p"
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(layer.generate, _request("meta-llama/Llama-3"), _ignore)
        await trio.sleep(1.0)
        with pytest.raises(ConcurrencyLimited) as refused:
            await layer.generate(_request("meta-llama/Llama-3"), _ignore)
    assert refused.value.provider == "p"
    assert str(refused.value).startswith("p/meta-llama/Llama-3 is at its adaptive")


async def test_a_streamed_call_holds_its_slot_until_its_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call whose first token comes at 0.5 s and whose stream ends 3.5 s later is, to the
    limit's count of what the upstream served, a call that started 4 s before its end (not
    0.5 s: a stream holds the upstream's slot until its last token)."""
    layer = AdaptiveLimitLayer(Scripted(first=0.5, rest=3.5), _config())
    await layer.generate(_request(), _ignore)
    algorithm = layer.limiter("m")._algorithm
    assert isinstance(algorithm, GradientLimit)
    start, end, _service = algorithm._recent._answers[-1]
    assert end - start == 4.0
