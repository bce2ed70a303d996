"""The adaptive limiter and its layer on Trio's mock clock: it tracks a queueing upstream's
capacity down and back up, cuts on 429s, queues a few calls and sheds the rest at once,
frees the slot of a call its client abandoned, and takes reloads."""

from __future__ import annotations

import contextlib
import math
import statistics
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from test_contract import contract

from trio_orchestrator.errors import BadRequest, RateLimited
from trio_orchestrator.events import Done, StreamEvent, TextDelta
from trio_orchestrator.resilience import AdaptiveConfig, AdaptiveLimitLayer, ConcurrencyLimited
from trio_orchestrator.resilience.adaptive import LimitAlgorithm
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import EchoWorker, EventSink
from trio_orchestrator.workers.config import ProviderConfig


@attrs.define(eq=False)
class QueueingUpstream:
    """Serves ``capacity`` calls at once in ``service`` seconds each and queues the rest,
    as a saturated inference server does; or answers 429 beyond capacity when ``refuse``."""

    capacity: int
    service: float = 0.5
    refuse: bool = False
    name: str = "upstream"
    _slots: trio.CapacityLimiter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = trio.CapacityLimiter(self.capacity)

    def set_capacity(self, capacity: int) -> None:
        self._slots.total_tokens = capacity

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        if request.input == "invalid":
            raise BadRequest("the client's fault", status=400)
        if self.refuse:
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                raise RateLimited("over capacity", status=429) from None
            try:
                await self._answer(emit)
            finally:
                self._slots.release()
            return
        async with self._slots:
            await self._answer(emit)

    async def _answer(self, emit: EventSink) -> None:
        await trio.sleep(self.service)
        await emit(TextDelta("ok"))
        await emit(Done("stop", "ok"))


def _request(prompt: str = "hi", model: str = "m") -> PromptRequest:
    return PromptRequest(input=prompt, params=GenerationParams(model=model))


async def _ignore(_event: StreamEvent) -> None:
    pass


def _config(**changes: object) -> AdaptiveConfig:
    base = AdaptiveConfig(
        enabled=True,
        initial_limit=8,
        max_limit=200,
        window=1.0,
        min_samples=5,
        max_waiting=0,
        probe_interval=30.0,
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


async def _drive(
    layer: AdaptiveLimitLayer, clients: int, seconds: float, limits: list[int] | None = None
) -> tuple[int, int]:
    """``clients`` callers, each calling again as soon as it is answered or shed (after a
    50 ms pause), for ``seconds``; returns (answered, shed). The limit is appended to
    ``limits`` every 0.5 s of the second half."""
    counts = [0, 0]

    async def client() -> None:
        while True:
            try:
                await layer.generate(_request(), _ignore)
                counts[0] += 1
            except ConcurrencyLimited:
                counts[1] += 1
                await trio.sleep(0.05)

    async def watch(into: list[int]) -> None:
        await trio.sleep(seconds / 2)
        while True:
            into.append(layer.statistics().limit)
            await trio.sleep(0.5)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(client)
            if limits is not None:
                nursery.start_soon(watch, limits)
    return counts[0], counts[1]


async def test_the_limit_tracks_a_capacity_that_drops_and_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """32 callers on an upstream of capacity 16, then 4, then 16: over the second half of
    each phase the limit averages near the capacity (the estimate swings around it, a
    window at a time), and calls beyond it are shed rather than queued upstream."""
    upstream = QueueingUpstream(16)
    # p90: this upstream's calls finish in lockstep rounds, so while fewer than half
    # queue, the median does not see them (a real server's waits spread out).
    layer = AdaptiveLimitLayer(upstream, _config(percentile=0.9), provider="p")
    high: list[int] = []
    await _drive(layer, 32, 40.0, high)
    assert 10 <= statistics.fmean(high) <= 32
    upstream.set_capacity(4)
    low: list[int] = []
    _, shed = await _drive(layer, 32, 40.0, low)
    assert 2 <= statistics.fmean(low) <= 8
    assert shed > 0
    upstream.set_capacity(16)
    recovered: list[int] = []
    await _drive(layer, 32, 40.0, recovered)
    assert 10 <= statistics.fmean(recovered) <= 32
    stats = layer.statistics()
    assert stats.cuts > 0
    assert stats.raises > 0
    assert stats.in_flight == stats.waiting == 0


async def test_429s_cut_the_limit(autojump_clock: trio.testing.MockClock) -> None:
    """An upstream answering 429 beyond capacity 5 has its limit cut to about 5."""
    upstream = QueueingUpstream(5, refuse=True)
    layer = AdaptiveLimitLayer(upstream, _config(initial_limit=20), provider="p")
    answered, _ = await _drive_tolerating_429(layer, 20, 20.0)
    stats = layer.statistics()
    assert stats.limit <= 8
    assert stats.drops > 0
    assert answered > 0


async def _drive_tolerating_429(
    layer: AdaptiveLimitLayer, clients: int, seconds: float
) -> tuple[int, int]:
    counts = [0, 0]

    async def client() -> None:
        while True:
            try:
                await layer.generate(_request(), _ignore)
                counts[0] += 1
            except (ConcurrencyLimited, RateLimited):
                counts[1] += 1
                await trio.sleep(0.05)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(client)
    return counts[0], counts[1]


async def test_a_full_limit_queues_a_few_and_sheds_the_rest_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Limit 2 and a queue of 2: two calls run, two wait (and then run), the fifth is shed
    at once with an Overloaded naming the limit."""
    layer = AdaptiveLimitLayer(
        QueueingUpstream(100), _config(initial_limit=2, max_waiting=2, max_wait=10.0)
    )
    outcomes: list[str] = []
    errors: list[ConcurrencyLimited] = []

    async def call() -> None:
        try:
            await layer.generate(_request(), _ignore)
            outcomes.append(f"done at {trio.current_time():.1f}")
        except ConcurrencyLimited as exc:
            errors.append(exc)
            outcomes.append(f"shed at {trio.current_time():.1f}")

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(call)
            await trio.lowlevel.checkpoint()
    assert sorted(outcomes) == ["done at 0.5"] * 2 + ["done at 1.0"] * 2 + ["shed at 0.0"]
    (error,) = errors
    assert "adaptive concurrency limit of 2" in str(error)
    assert error.retry_after is not None


async def test_the_algorithm_hears_when_callers_wait_or_were_shed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each sample tells the algorithm whether more calls are wanted than the limit admits:
    a caller waits for a slot, or one was shed within the last window. Alone, it is not."""
    config = _config(initial_limit=1, max_limit=1, max_waiting=1, window=2.0)
    layer = AdaptiveLimitLayer(QueueingUpstream(100), config)
    limiter = layer.limiter("m")
    spy = _Heard(limiter._algorithm)
    limiter._algorithm = spy  # type: ignore[assignment]
    await layer.generate(_request(), _ignore)  # alone: 0 to 0.5 s
    async with trio.open_nursery() as nursery:
        for _ in range(3):  # at 0.5 s one runs, one waits (to 1.5 s), one is shed
            nursery.start_soon(_call, layer)
            await trio.lowlevel.checkpoint()
    assert layer.statistics().shed == 1
    await layer.generate(_request(), _ignore)  # ends 1.5 s after the shed: in its window
    await trio.sleep(1.0)
    await layer.generate(_request(), _ignore)  # alone again, the shed 3 s ago
    assert spy.heard == [False, True, True, True, False]


@attrs.define
class _Heard:
    """An algorithm that records what each sample said of waiting callers."""

    inner: LimitAlgorithm
    heard: list[bool] = attrs.Factory(list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def observe(self, *args: Any, wanted: bool = False) -> None:
        self.heard.append(wanted)
        self.inner.observe(*args, wanted=wanted)


async def _call(layer: AdaptiveLimitLayer) -> None:
    with contextlib.suppress(ConcurrencyLimited):
        await layer.generate(_request(), _ignore)


async def test_a_waiting_call_gives_up_after_max_wait_and_before_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A queued call waits at most max_wait; one whose deadline leaves no time is shed
    without waiting."""
    config = _config(initial_limit=1, max_limit=1, max_waiting=5, max_wait=1.0, min_samples=1)
    layer = AdaptiveLimitLayer(QueueingUpstream(100, service=5.0), config)
    await layer.generate(_request(), _ignore)  # a first window: the baseline is 5 s
    async with trio.open_nursery() as nursery:
        nursery.start_soon(layer.generate, _request(), _ignore)
        await trio.sleep(0.1)
        with pytest.raises(ConcurrencyLimited, match="no slot freed within 1 s"):
            await layer.generate(_request(), _ignore)
        assert trio.current_time() == pytest.approx(6.1)
        with trio.fail_after(4.0), pytest.raises(ConcurrencyLimited, match="leaves no time"):
            await layer.generate(_request(), _ignore)  # 4 s left, 5 s expected
        assert trio.current_time() == pytest.approx(6.1)
    assert layer.statistics().shed == 2


async def test_an_abandoned_or_invalid_call_frees_its_slot_without_a_sample(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call its client cancelled, or one refused as invalid, frees its slot and is no
    latency sample and no drop."""
    layer = AdaptiveLimitLayer(QueueingUpstream(100, service=5.0), _config(initial_limit=1))
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as client:  # the client leaves; the call had no deadline
            nursery.start_soon(_cancel_after, client, 1.0)
            await layer.generate(_request(), _ignore)
    with pytest.raises(BadRequest):
        await layer.generate(_request("invalid"), _ignore)
    stats = layer.statistics()
    assert (stats.in_flight, stats.drops, stats.admitted) == (0, 0, 2)
    assert layer.limiter("m")._algorithm.statistics().samples == 0


async def _cancel_after(scope: trio.CancelScope, seconds: float) -> None:
    await trio.sleep(seconds)
    scope.cancel()


async def test_a_call_whose_client_left_before_it_began_is_no_drop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller cancelled as it is handed a slot (its client gave up while it waited) never
    reached the upstream: no drop, no cut, and its slot is free again. (Its scope, already
    cancelled, reads a deadline of -inf: that once counted as a timeout.)"""
    layer = AdaptiveLimitLayer(QueueingUpstream(100), _config(initial_limit=10))
    with trio.CancelScope() as scope:
        scope.cancel()
        await layer.generate(_request(), _ignore)
    stats = layer.statistics()
    assert (stats.drops, stats.cuts, stats.limit, stats.in_flight) == (0, 0, 10, 0)


async def test_a_call_cancelled_by_its_deadline_is_a_drop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call that runs out its own deadline counts as a timeout: a drop that cuts."""
    layer = AdaptiveLimitLayer(QueueingUpstream(100, service=5.0), _config(initial_limit=10))
    with trio.fail_after(10), trio.move_on_after(1.0) as scope:
        scope.deadline = trio.current_time() + 1.0
        await layer.generate(_request(), _ignore)
    stats = layer.statistics()
    assert (stats.drops, stats.cuts, stats.limit) == (1, 1, 7)


async def test_per_model_limits_are_apart(autojump_clock: trio.testing.MockClock) -> None:
    """With per_model, each model has its own limiter; the statistics sum them."""
    layer = AdaptiveLimitLayer(QueueingUpstream(100), _config(per_model=True), provider="p")
    await layer.generate(_request(model="a"), _ignore)
    await layer.generate(_request(model="b"), _ignore)
    assert [t.target for t in layer.targets()] == ["p/a", "p/b"]
    assert layer.statistics().limit == 16
    assert layer.statistics().admitted == 2


async def test_a_reload_moves_the_bounds_and_refuses_switching(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reloaded max_limit applies at once; switching the limit off or per_model needs a
    restart; a new algorithm starts from the current limit."""
    layer = AdaptiveLimitLayer(QueueingUpstream(100), _config(initial_limit=20), provider="p")
    await layer.generate(_request(), _ignore)
    entry = ProviderConfig(kind="echo", name="p", adaptive=_config(initial_limit=5, max_limit=10))
    assert layer.reconfigure(entry) == []
    assert layer.statistics().limit == 10
    aimd = ProviderConfig(kind="echo", name="p", adaptive=_config(algorithm="aimd", max_limit=10))
    assert layer.reconfigure(aimd) == []
    assert layer.statistics().limit == 10
    off = ProviderConfig(kind="echo", name="p", adaptive=_config(enabled=False, per_model=True))
    refused = layer.reconfigure(off)
    assert [line.split(":")[0] for line in refused] == [
        "providers.p.adaptive.enabled",
        "providers.p.adaptive.per_model",
    ]
    assert math.isfinite(layer.statistics().baseline_rtt)


TestAdaptiveLimitLayerContract = contract(
    lambda: AdaptiveLimitLayer(EchoWorker(), AdaptiveConfig(enabled=True)), deterministic=True
)
"""The layer keeps the worker contract (event grammar, typed errors, cancellation)."""


async def _abandon_after(layer: AdaptiveLimitLayer, upstream: QueueingUpstream, wait: float) -> int:
    """A first call sets the baseline (0.5 s); the next is abandoned by its client after
    ``wait`` seconds without an answer. Returns the samples before it."""
    await layer.generate(_request(), _ignore)  # the first window: baseline 0.5 s
    samples = layer.limiter("m")._algorithm.statistics().samples
    upstream.service = 10.0
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as client:
            nursery.start_soon(_cancel_after, client, wait)
            await layer.generate(_request(), _ignore)
    return samples


async def test_a_call_abandoned_after_waiting_longer_than_the_baseline_is_a_sample(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that gives up after 0.7 s on an upstream whose baseline is 0.5 s (within
    ``tolerance``, 1.5, of it) leaves a 0.7 s latency sample (callers giving up must not
    hide a queueing upstream's latency)."""
    upstream = QueueingUpstream(100, service=0.5)
    layer = AdaptiveLimitLayer(upstream, _config(initial_limit=4, min_samples=1, window=0.1))
    samples = await _abandon_after(layer, upstream, 0.7)
    assert layer.limiter("m")._algorithm.statistics().samples == samples + 1
    assert layer.statistics().drops == 0


async def test_a_call_abandoned_after_waiting_past_the_tolerance_is_a_sample_not_a_drop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that gives up after 3 s on an upstream whose baseline is 0.5 s (past
    ``tolerance`` times it) leaves a latency sample, not a drop: a caller whose deadline was
    near (after a Retry-After, say) gives up on calls no slower than the others, and drops
    for those cut a limit that was right."""
    upstream = QueueingUpstream(100, service=0.5)
    layer = AdaptiveLimitLayer(upstream, _config(initial_limit=4, min_samples=1, window=0.1))
    samples = await _abandon_after(layer, upstream, 3.0)
    assert layer.limiter("m")._algorithm.statistics().samples == samples + 1
    assert layer.statistics().drops == 0
