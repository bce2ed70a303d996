"""The rate limit layer with shared buckets, and the edges of its waiting and reconciling.

Written for the mutation session (scripts/mutation.py): the Redis-backed tests of shared
limits (tests/test_distributed_ratelimit.py) need a server and a real clock, so the layer's
side of the protocol is pinned here against an in-memory fake of the shared buckets.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing
from _scripted import Recorder, ScriptedWorker, Step

from trio_orchestrator.errors import RateLimitExceeded
from trio_orchestrator.events import Done, TextDelta, Usage
from trio_orchestrator.resilience import (
    LimitConfig,
    RateLimitLayer,
    RateLimitsConfig,
    TokenBucket,
    estimate_tokens,
)
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers.base import EventSink

TOKENS = LimitConfig("model", tokens_per_minute=6000.0, burst=1000.0)


@attrs.define(eq=False)
class FakeShared:
    """Shared buckets in memory: plays ``answers`` (then admits), records every call."""

    answers: list[tuple[float, bool] | None] = attrs.field(factory=list)
    acquired: list[tuple[dict[str, str], int, float]] = attrs.field(factory=list)
    reconciled: list[tuple[dict[str, str], int, int]] = attrs.field(factory=list)
    round_trip: float = 0.0  # seconds each ask takes, as Redis's answer would

    async def try_acquire(self, keys: dict[str, str], tokens: int) -> tuple[float, bool] | None:
        await trio.sleep(self.round_trip)
        self.acquired.append((keys, tokens, trio.current_time()))
        return self.answers.pop(0) if self.answers else (0.0, False)

    async def reconcile(self, keys: dict[str, str], estimate: int, actual: int) -> None:
        await trio.lowlevel.checkpoint()  # a cancelled, unshielded caller stops here
        self.reconciled.append((keys, estimate, actual))


def _layer(
    shared: FakeShared | None, *limits: LimitConfig, worker: ScriptedWorker | None = None
) -> RateLimitLayer:
    config = RateLimitsConfig(enabled=True, limits=limits or (TOKENS,))
    return RateLimitLayer(worker or ScriptedWorker([Step()]), config, provider="p", shared=shared)


def _request(model: str = "m", **meta: str) -> PromptRequest:
    params = GenerationParams(model=model, max_tokens=100)
    return PromptRequest(input="x" * 400, params=params, meta=meta)


async def test_shared_buckets_admit_and_are_reconciled_with_real_usage() -> None:
    """With shared buckets answering, the call is charged there (estimate 200 tokens) and
    corrected there to the reported usage (3 + 1); the local buckets are not touched."""
    shared = FakeShared()
    layer = _layer(shared)
    await layer.generate(_request(user="u", api_key_id="k"), Recorder())
    keys = {"provider": "p", "model": "m", "user": "u", "api_key": "k"}
    assert [(k, t) for k, t, _ in shared.acquired] == [(keys, 200)]
    assert shared.reconciled == [(keys, 200, 4)]
    stats = layer.statistics()
    assert stats.admitted == 1
    assert [b.level for b in stats.buckets] == [1000.0]


async def test_unavailable_shared_buckets_leave_the_local_ones_to_decide() -> None:
    """When the shared buckets cannot answer, the local buckets are charged instead."""
    shared = FakeShared([None])
    layer = _layer(shared, LimitConfig("model", requests_per_second=1.0, mode="reject"))
    await layer.generate(_request(), Recorder())
    shared.answers.append(None)
    with pytest.raises(RateLimitExceeded):
        await layer.generate(_request(), Recorder())
    assert len(shared.acquired) == 2
    assert layer.statistics().admitted == 1


async def test_a_shared_wait_is_slept_then_asked_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Told to wait 0.5 s, the call sleeps that long, counts as waiting meanwhile, asks
    again, and is admitted as one that waited 0.5 s."""
    shared = FakeShared([(0.5, False)])
    layer = _layer(shared)
    waiting: list[int] = []

    async def watch() -> None:
        await trio.sleep(0.25)
        waiting.append(layer.statistics().waiting)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await layer.generate(_request(), Recorder())
    assert [t - start for _, _, t in shared.acquired] == [0.0, 0.5]
    stats = layer.statistics()
    assert waiting == [1]
    assert (stats.admitted, stats.waited, stats.waiting, stats.wait_seconds) == (1, 1, 0, 0.5)


async def test_a_shared_admission_at_once_is_not_a_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Admitted by the shared buckets at the first ask, the call counts as admitted only."""
    layer = _layer(FakeShared())
    await layer.generate(_request(), Recorder())
    stats = layer.statistics()
    assert (stats.admitted, stats.waited, stats.wait_seconds) == (1, 0, 0.0)


async def test_a_round_trip_to_the_shared_buckets_is_not_a_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Admitted at the first ask, the call is no wait however long Redis took to say so
    (every shared admission counted as a wait before)."""
    layer = _layer(FakeShared(round_trip=0.002))
    await layer.generate(_request(), Recorder())
    stats = layer.statistics()
    assert (stats.admitted, stats.waited, stats.wait_seconds) == (1, 0, 0.0)


async def test_a_shared_reject_verdict_refuses_at_once() -> None:
    """A reject-mode shared limit without room refuses with RateLimitExceeded, its
    retry_after the shared wait, without calling the worker."""
    worker = ScriptedWorker([Step()])
    layer = _layer(FakeShared([(2.0, True)]), worker=worker)
    with pytest.raises(RateLimitExceeded) as info:
        await layer.generate(_request(), Recorder())
    assert str(info.value) == (
        "rate limited locally: a rate limit in reject mode has no room; retry in 2 s"
    )
    assert info.value.retry_after == 2.0
    assert (worker.calls, layer.statistics().rejected) == (0, 1)


@pytest.mark.parametrize(("wait", "refused"), [(1.0, True), (0.75, False)])
async def test_a_shared_wait_reaching_the_deadline_is_refused_at_once(
    autojump_clock: trio.testing.MockClock, wait: float, refused: bool
) -> None:
    """A shared wait that would reach the request's deadline (1 s away) is refused at once
    with the reason; a shorter one is waited."""
    shared = FakeShared([(wait, False)])
    layer = _layer(shared)
    with trio.move_on_after(1.0):
        if refused:
            with pytest.raises(RateLimitExceeded, match="would pass the request's deadline"):
                await layer.generate(_request(), Recorder())
        else:
            await layer.generate(_request(), Recorder())
    assert len(shared.acquired) == (1 if refused else 2)


async def test_a_cancelled_call_still_reconciles_the_usage_it_saw(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call cancelled after its usage arrived still corrects the shared buckets."""

    class UsageThenHang:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await emit(Usage(3, 1))
            await trio.sleep_forever()

    shared = FakeShared()
    layer = RateLimitLayer(
        UsageThenHang(), RateLimitsConfig(enabled=True, limits=(TOKENS,)), shared=shared
    )
    with trio.move_on_after(1.0):
        await layer.generate(_request(), Recorder())
    assert [(e, a) for _, e, a in shared.reconciled] == [(200, 4)]


async def test_usage_carried_only_by_done_is_reconciled() -> None:
    """A worker that reports usage only on its Done still has its charge corrected."""

    class DoneOnly:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await emit(TextDelta("ok"))
            await emit(Done("stop", "ok", Usage(3, 7), (), "m"))

    shared = FakeShared()
    layer = RateLimitLayer(
        DoneOnly(), RateLimitsConfig(enabled=True, limits=(TOKENS,)), shared=shared
    )
    await layer.generate(_request(), Recorder())
    assert [(e, a) for _, e, a in shared.reconciled] == [(200, 10)]


async def test_request_limits_alone_meter_no_tokens() -> None:
    """With only request limits, nothing is estimated and nothing reconciled."""
    shared = FakeShared()
    layer = _layer(shared, LimitConfig("model", requests_per_second=5.0))
    await layer.generate(_request(), Recorder())
    assert [t for _, t, _ in shared.acquired] == [0]
    assert shared.reconciled == []


async def test_keys_name_user_and_api_key_only_when_known() -> None:
    """The shared buckets are asked with provider and model, plus user and API key when the
    request carries them."""
    shared = FakeShared()
    layer = _layer(shared)
    await layer.generate(_request(), Recorder())
    await layer.generate(_request(user="u"), Recorder())
    await layer.generate(_request(api_key_id="k"), Recorder())
    assert [keys for keys, _, _ in shared.acquired] == [
        {"provider": "p", "model": "m"},
        {"provider": "p", "model": "m", "user": "u"},
        {"provider": "p", "model": "m", "api_key": "k"},
    ]


# ------------------------------------------------------------------ local buckets


async def test_usage_above_the_estimate_is_taken_from_the_bucket(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A call that used more tokens (500) than estimated (200) is charged the difference
    (on a clock that stands still: the bucket refills by the clock)."""
    worker = ScriptedWorker([Step(tokens=("x",) * 497)])  # usage 3 + 497
    layer = _layer(None, worker=worker)
    await layer.generate(_request(), Recorder())
    assert [b.level for b in layer.statistics().buckets] == [pytest.approx(500.0, abs=0.5)]


async def test_an_estimate_above_the_burst_is_charged_and_reconciled_at_the_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a burst of 100 tokens, a 200-token estimate is charged as 100, and a usage of 4
    gives back 96 of them (not 196, which the full bucket could not hold anyway)."""
    small = LimitConfig("model", tokens_per_minute=60.0, burst=100.0)
    layer = _layer(None, small)
    await layer.generate(_request(), Recorder())
    assert [b.level for b in layer.statistics().buckets] == [96.0]


async def test_reconfigure_starts_fresh_buckets_only_when_the_limits_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reloading the same limits keeps the buckets' levels; other limits start full buckets;
    switching rate limiting off is refused and changes nothing."""
    limit = LimitConfig("model", requests_per_minute=1.0, burst=2.0)
    layer = _layer(None, limit)
    await layer.generate(_request(), Recorder())
    assert layer.reconfigure(RateLimitsConfig(enabled=True, limits=(limit,))) == []
    assert [b.level for b in layer.statistics().buckets] == [1.0]
    wider = LimitConfig("model", requests_per_minute=1.0, burst=3.0)
    assert layer.reconfigure(RateLimitsConfig(enabled=True, limits=(wider,))) == []
    assert layer.statistics().buckets == ()
    await layer.generate(_request(), Recorder())
    assert [b.level for b in layer.statistics().buckets] == [2.0]
    assert layer.reconfigure(RateLimitsConfig(enabled=False, limits=(limit,))) == [
        "resilience.rate_limits.enabled: adding or removing a layer needs a restart True → False"
    ]
    assert layer.config.limits == (wider,)
    for _ in range(3):  # the third finds the reloaded bucket empty and queues for it
        await layer.generate(_request(), Recorder())
    assert layer.statistics().waited == 1


async def test_a_local_wait_reaching_the_deadline_exactly_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A wait that would end exactly at the deadline is refused at once (it could not
    finish in time), with the wait as retry_after."""
    layer = _layer(None, LimitConfig("model", requests_per_second=1.0))
    await layer.generate(_request(), Recorder())
    with trio.move_on_after(1.0), pytest.raises(RateLimitExceeded) as info:
        await layer.generate(_request(), Recorder())
    assert str(info.value) == (
        "rate limited locally: waiting for room would pass the request's deadline; retry in 1 s"
    )
    assert info.value.retry_after == 1.0


async def test_waiting_is_counted_while_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two callers queued behind an empty bucket count as waiting, are admitted one second
    apart (after 1 s and 2 s), and leave the counters at rest: no one waiting, 3 s waited."""
    await trio.sleep(1.0)  # the clock does not start at zero
    layer = _layer(None, LimitConfig("model", requests_per_second=1.0))
    await layer.generate(_request(), Recorder())
    seen: list[int] = []

    async def watch() -> None:
        await trio.sleep(0.5)
        seen.append(layer.statistics().waiting)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(layer.generate, _request(), Recorder())
        nursery.start_soon(layer.generate, _request(), Recorder())
        nursery.start_soon(watch)
    stats = layer.statistics()
    assert seen == [2]
    assert (stats.admitted, stats.waited, stats.waiting, stats.wait_seconds) == (3, 2, 0, 3.0)


def test_an_embedding_request_is_estimated_from_its_inputs() -> None:
    """Texts count a token per four characters (rounded up), token arrays their length, and
    nothing is charged for output."""
    request = PromptRequest(embed=("abcdefghi", (1, 2, 3), "abcd"))
    assert estimate_tokens(request, 1000) == 4 + 3


@attrs.define(eq=False)
class Admissions:
    """A worker that records when each call (by its input) was admitted; reports no usage."""

    times: list[tuple[str, float]] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.times.append((str(request.input), trio.current_time()))
        await emit(Done("stop", "", None, (), request.params.model))


def _costing(name: str, tokens: int) -> PromptRequest:
    """A request named ``name`` whose estimate is ``tokens`` (one for the input, the rest
    output)."""
    return PromptRequest(input=name, params=GenerationParams(model="m", max_tokens=tokens - 1))


async def test_a_small_request_does_not_overtake_a_large_one_queued_before_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At 100 tokens/s with a 1000-token burst: after a 1000-token call empties the bucket,
    a queued 1000-token call is admitted at 10 s, and 100-token (at 1 s) and 50-token (at
    10.5 s) calls behind it wait their turn (11 s, 11.5 s) although the bucket held enough
    for each when it arrived."""
    worker = Admissions()
    layer = RateLimitLayer(
        worker,
        RateLimitsConfig(enabled=True, limits=(TOKENS,)),
    )

    async def arrive(at: float, name: str, tokens: int) -> None:
        await trio.sleep(at)
        await layer.generate(_costing(name, tokens), Recorder())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrive, 0.0, "a", 1000)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(arrive, 0.0, "b", 1000)
        nursery.start_soon(arrive, 1.0, "c", 100)
        nursery.start_soon(arrive, 10.5, "d", 50)
    assert worker.times == [("a", 0.0), ("b", 10.0), ("c", 11.0), ("d", 11.5)]
    stats = layer.statistics()
    assert (stats.admitted, stats.waited, stats.waiting) == (4, 3, 0)


async def test_full_buckets_are_kept_below_max_buckets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Below max_buckets nothing is swept: a refilled bucket still shows in the statistics,
    with its unit and capacity."""
    layer = _layer(None, LimitConfig("user", requests_per_second=1.0, burst=2.0))
    await layer.generate(_request(user="a"), Recorder())
    await trio.sleep(5.0)
    await layer.generate(_request(user="b"), Recorder())
    buckets = layer.statistics().buckets
    assert [(b.key, b.unit, b.capacity) for b in buckets] == [
        ("a", "requests", 2.0),
        ("b", "requests", 2.0),
    ]


async def test_shared_waits_and_admissions_accumulate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two calls each told once to wait 0.5 s, side by side, both count as waiting then, and
    add up: 2 admitted, 2 waited, 1 s waited in all."""
    await trio.sleep(1.0)  # the clock does not start at zero
    shared = FakeShared([(0.5, False), (0.5, False)])
    layer = _layer(shared)
    seen: list[int] = []

    async def watch() -> None:
        await trio.sleep(0.25)
        seen.append(layer.statistics().waiting)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(layer.generate, _request(), Recorder())
        nursery.start_soon(layer.generate, _request(), Recorder())
        nursery.start_soon(watch)
    stats = layer.statistics()
    assert seen == [2]
    assert (stats.admitted, stats.waited, stats.wait_seconds) == (2, 2, 1.0)


async def test_local_admissions_accumulate() -> None:
    """Each call admitted at once counts."""
    layer = _layer(None, LimitConfig("model", requests_per_second=5.0, burst=5.0))
    for _ in range(3):
        await layer.generate(_request(), Recorder())
    assert layer.statistics().admitted == 3


def test_a_bucket_with_room_to_spare_has_no_wait() -> None:
    """A full bucket asked for less than it holds says 0 s, never a negative wait."""
    bucket = TokenBucket(rate=2.0, capacity=5.0)
    assert bucket.wait_time(1.0, 0.0) == 0.0


async def test_a_limit_that_does_not_apply_leaves_the_ones_after_it() -> None:
    """A user limit skipped for a request without a user still lets the model limit after
    it count the request."""
    user = LimitConfig("user", requests_per_second=1.0, burst=1.0)
    model = LimitConfig("model", requests_per_second=1.0, burst=1.0, mode="reject")
    layer = _layer(None, user, model)
    await layer.generate(_request(), Recorder())
    with pytest.raises(RateLimitExceeded):
        await layer.generate(_request(), Recorder())
    assert [(b.scope, b.key) for b in layer.statistics().buckets] == [("model", "m")]


async def test_no_reconcile_when_no_token_limit_applies() -> None:
    """A token limit for another model meters nothing for this one: the shared buckets are
    not asked to reconcile."""
    shared = FakeShared()
    other = LimitConfig("model", tokens_per_minute=6000.0, match="other")
    layer = _layer(shared, other)
    await layer.generate(_request(), Recorder())
    assert shared.reconciled == []


async def test_tokens_are_reconciled_behind_a_request_limit() -> None:
    """With a request limit listed before the token limit, the token charge is still
    corrected to the usage."""
    requests = LimitConfig("model", requests_per_second=5.0)
    layer = _layer(None, requests, TOKENS)
    await layer.generate(_request(), Recorder())
    levels = {b.unit: b.level for b in layer.statistics().buckets}
    assert levels["tokens"] == pytest.approx(996.0, abs=0.5)


async def test_a_queued_request_meeting_a_full_reject_limit_is_refused_on_its_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request queued behind another on the same buckets, whose reject-mode limit has no
    room when its turn comes, is refused then (at 1 s), not left to wait for the refill; two
    refusals count two."""
    model = LimitConfig("model", requests_per_second=1.0, burst=1.0)
    user = LimitConfig("user", requests_per_minute=1.0, burst=2.0, mode="reject")
    layer = _layer(None, model, user)
    await layer.generate(_request(user="a"), Recorder())
    refused_at: list[float] = []

    async def queued() -> None:
        await trio.sleep(0.1)
        with pytest.raises(RateLimitExceeded, match="reject mode"):
            await layer.generate(_request(user="a"), Recorder())
        refused_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(layer.generate, _request(user="a"), Recorder())  # waits for model
        nursery.start_soon(queued)
    assert refused_at == [1.0]
    with pytest.raises(RateLimitExceeded):
        await layer.generate(_request(user="a"), Recorder())
    assert layer.statistics().rejected == 2


async def test_after_a_sweep_the_next_waits_for_twice_the_buckets_it_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past max_buckets (1), a sweep that keeps two busy buckets puts the next one off until
    more than four are held; that one forgets the five refilled buckets."""
    config = RateLimitsConfig(
        enabled=True,
        limits=(LimitConfig("user", requests_per_second=1.0, burst=1.0),),
        max_buckets=1,
    )
    layer = RateLimitLayer(ScriptedWorker([Step()]), config, provider="p")
    for user in ("a", "b", "c"):  # c's call sweeps: a and b are empty, so both are kept
        await layer.generate(_request(user=user), Recorder())
    await layer.generate(_request(user="d"), Recorder())
    await layer.generate(_request(user="e"), Recorder())
    await trio.sleep(10.0)  # every bucket refills
    await layer.generate(_request(user="f"), Recorder())
    assert [b.key for b in layer.statistics().buckets] == ["f"]
