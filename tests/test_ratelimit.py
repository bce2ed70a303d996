"""Rate limits: token-bucket arithmetic, atomic hierarchical checks, and the layer."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from _scripted import Recorder, ScriptedWorker, Step
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator.errors import RateLimitExceeded
from trio_orchestrator.events import Done, TextDelta, Usage
from trio_orchestrator.resilience import (
    Charge,
    LimitConfig,
    RateLimiter,
    RateLimitLayer,
    RateLimitsConfig,
    TokenBucket,
    estimate_tokens,
)
from trio_orchestrator.types import GenerationParams, PromptRequest

rates = st.floats(0.1, 50.0)
bursts = st.floats(1.0, 20.0)
EPS = 1e-6


def _limiter(rate: float, burst: float) -> tuple[RateLimiter, list[Charge]]:
    limiter = RateLimiter([LimitConfig("model", requests_per_second=rate, burst=burst)])
    return limiter, limiter.charges({"model": "m"}, 0)


# ------------------------------------------------------------------ arithmetic properties


@given(rate=rates, burst=bursts, gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200))
def test_admitted_never_exceeds_rate_times_window_plus_burst(
    rate: float, burst: float, gaps: list[float]
) -> None:
    """Over any window of length t, admitted ≤ rate·t + burst, whatever the arrivals."""
    limiter, charges = _limiter(rate, burst)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if limiter.try_acquire(charges, now)[0] == 0.0:
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= rate * (admitted[j] - start) + burst + EPS


@given(rate=st.floats(0.1, 20.0), burst=bursts, horizon=st.floats(0.5, 10.0))
def test_demand_above_the_rate_is_not_under_admitted(
    rate: float, burst: float, horizon: float
) -> None:
    """A caller always asking gets ≥ rate·t - 1 over any window of length t between admissions."""
    limiter, charges = _limiter(rate, burst)
    now, admitted = 0.0, []
    while now <= horizon:
        wait, _ = limiter.try_acquire(charges, now)
        if wait == 0.0:
            admitted.append(now)
        else:
            now += wait
    assert len(admitted) >= rate * horizon - 1 - EPS
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 >= rate * (admitted[j] - start) - 1 - EPS


@given(
    levels=st.lists(st.floats(0.0, 10.0), min_size=2, max_size=4),
    costs=st.lists(st.floats(0.5, 10.0), min_size=4, max_size=4),
)
def test_charges_are_all_or_nothing(levels: list[float], costs: list[float]) -> None:
    """Either every bucket is charged or none is: a refusing level charges no other level."""
    scopes = ["provider", "model", "user", "api_key"][: len(levels)]
    limits = [LimitConfig(s, requests_per_second=1.0, burst=10.0) for s in scopes]
    limiter = RateLimiter(limits)
    charges = limiter.charges(dict.fromkeys(scopes, "k"), 0)
    for charge, level in zip(charges, levels, strict=True):
        charge.bucket.take(10.0 - level, 0.0)
    charges = [type(c)(c.bucket, cost, c.limit) for c, cost in zip(charges, costs, strict=False)]
    before = [c.bucket.level(0.0) for c in charges]
    wait, _ = limiter.try_acquire(charges, 0.0)
    after = [c.bucket.level(0.0) for c in charges]
    if wait > 0.0:
        assert after == before
        assert any(c.cost > level + 1e-9 for c, level in zip(charges, before, strict=True))
    else:
        assert after == pytest.approx([b - c.cost for b, c in zip(before, charges, strict=True)])


def test_bucket_wait_time_is_the_time_to_refill_the_shortfall() -> None:
    """An empty bucket at 2 units/s needs 0.5 s for one unit."""
    bucket = TokenBucket(rate=2.0, capacity=1.0)
    bucket.take(1.0, 10.0)
    assert bucket.wait_time(1.0, 10.0) == 0.5
    assert bucket.wait_time(1.0, 10.5) == 0.0


def test_token_estimate_is_characters_over_four_plus_max_tokens() -> None:
    """40 characters of chat and max_tokens 10 make an estimate of 20 tokens."""
    request = PromptRequest(input="x" * 40, params=GenerationParams(max_tokens=10))
    assert estimate_tokens(request, default_max_tokens=256) == 20
    assert estimate_tokens(PromptRequest(input="x" * 40), default_max_tokens=256) == 266


# ------------------------------------------------------------------ the layer


def _layer(*limits: LimitConfig, worker: ScriptedWorker | None = None) -> RateLimitLayer:
    config = RateLimitsConfig(enabled=True, limits=limits)
    return RateLimitLayer(worker or ScriptedWorker([Step()]), config, provider="p")


def _request(model: str = "m", **meta: str) -> PromptRequest:
    return PromptRequest(input="hi", params=GenerationParams(model=model), meta=meta)


async def test_reject_mode_refuses_at_once_with_retry_after() -> None:
    """Past the burst, a reject-mode limit raises RateLimitExceeded without calling the worker."""
    worker = ScriptedWorker([Step()])
    layer = _layer(LimitConfig("model", requests_per_second=2.0, mode="reject"), worker=worker)
    for _ in range(2):
        await layer.generate(_request(), Recorder())
    with pytest.raises(RateLimitExceeded) as info:
        await layer.generate(_request(), Recorder())
    assert worker.calls == 2
    assert info.value.retry_after == pytest.approx(0.5, abs=0.01)
    assert layer.statistics().rejected == 1


async def test_wait_mode_delays_until_there_is_room(autojump_clock: trio.testing.MockClock) -> None:
    """At 1 request/s with burst 1, the third request starts two seconds after the first."""
    layer = _layer(LimitConfig("model", requests_per_second=1.0))
    start = trio.current_time()
    for _ in range(3):
        await layer.generate(_request(), Recorder())
    assert trio.current_time() - start == pytest.approx(2.0)
    assert layer.statistics().waited == 2


async def test_wait_that_would_pass_the_deadline_is_refused_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With 10 s to wait and 1 s of deadline left, the request is refused immediately."""
    layer = _layer(LimitConfig("model", requests_per_minute=6.0, burst=1.0))
    await layer.generate(_request(), Recorder())
    start = trio.current_time()
    with trio.move_on_after(1.0), pytest.raises(RateLimitExceeded):
        await layer.generate(_request(), Recorder())
    assert trio.current_time() == start


async def test_waiters_are_admitted_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests queued on the same buckets start in the order they arrived."""
    worker = ScriptedWorker([Step()])
    layer = _layer(LimitConfig("model", requests_per_second=1.0), worker=worker)
    order: list[str] = []

    async def call(name: str) -> None:
        await layer.generate(_request(model="m"), Recorder())
        order.append(name)

    async with trio.open_nursery() as nursery:
        for name in "abcde":
            nursery.start_soon(call, name)
            await trio.sleep(0.01)
    assert order == list("abcde")


async def test_each_user_has_its_own_bucket() -> None:
    """User a's exhausted bucket does not refuse user b; no user key means no user limit."""
    layer = _layer(LimitConfig("user", requests_per_second=1.0, mode="reject"))
    await layer.generate(_request(user="a"), Recorder())
    with pytest.raises(RateLimitExceeded):
        await layer.generate(_request(user="a"), Recorder())
    await layer.generate(_request(user="b"), Recorder())
    for _ in range(3):
        await layer.generate(_request(), Recorder())


async def test_refusal_at_one_level_charges_no_other_level() -> None:
    """A model bucket refusing leaves the user's bucket untouched."""
    layer = _layer(
        LimitConfig("user", requests_per_second=1.0, burst=5.0, mode="reject"),
        LimitConfig("model", requests_per_second=1.0, mode="reject"),
    )
    await layer.generate(_request(user="a"), Recorder())
    with pytest.raises(RateLimitExceeded):
        await layer.generate(_request(user="a"), Recorder())
    user_bucket = next(b for b in layer.statistics().buckets if b.scope == "user")
    assert user_bucket.level == pytest.approx(4.0, abs=0.01)


async def test_api_key_limit_reads_meta_api_key_id() -> None:
    """An api_key limit counts per request.meta["api_key_id"]."""
    layer = _layer(LimitConfig("api_key", requests_per_second=1.0, mode="reject"))
    await layer.generate(_request(api_key_id="k1"), Recorder())
    with pytest.raises(RateLimitExceeded):
        await layer.generate(_request(api_key_id="k1"), Recorder())
    assert [b.key for b in layer.statistics().buckets] == ["k1"]


async def test_match_limits_only_the_named_model() -> None:
    """A limit with match applies to that model only."""
    layer = _layer(LimitConfig("model", requests_per_second=1.0, mode="reject", match="big"))
    await layer.generate(_request(model="big"), Recorder())
    with pytest.raises(RateLimitExceeded):
        await layer.generate(_request(model="big"), Recorder())
    for _ in range(3):
        await layer.generate(_request(model="small"), Recorder())


async def test_token_charge_is_reconciled_with_real_usage() -> None:
    """The estimate is charged before the call and corrected to the reported usage after."""
    layer = _layer(LimitConfig("model", tokens_per_minute=6000.0, burst=1000.0))
    request = PromptRequest(input="x" * 400, params=GenerationParams(model="m", max_tokens=100))
    await layer.generate(request, Recorder())  # estimate 200; ScriptedWorker reports 3 + 1
    bucket = layer.statistics().buckets[0]
    assert bucket.unit == "tokens"
    assert bucket.level == pytest.approx(1000.0 - 4.0, abs=1.0)


async def test_layer_passes_events_through_unchanged() -> None:
    """Events reach the caller exactly as emitted, with the token meter in the path."""
    layer = _layer(LimitConfig("model", tokens_per_minute=6000.0))
    recorder = Recorder()
    await layer.generate(_request(), recorder)
    usage = Usage(3, 1)
    assert recorder.events == [TextDelta("ok"), usage, Done("stop", "ok", usage, (), "m")]


async def test_users_share_the_model_bucket() -> None:
    """A model limit counts every user's requests together."""
    layer = _layer(
        LimitConfig("user", requests_per_second=10.0),
        LimitConfig("model", requests_per_second=1.0, mode="reject"),
    )
    await layer.generate(_request(user="a"), Recorder())
    with pytest.raises(RateLimitExceeded):
        await layer.generate(_request(user="b"), Recorder())


async def test_full_buckets_are_forgotten_past_max_buckets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past max_buckets, refilled buckets are dropped; a busy one is kept with its level."""
    limits = (LimitConfig("user", requests_per_minute=60.0, burst=2.0),)
    config = RateLimitsConfig(enabled=True, limits=limits, max_buckets=3)
    layer = RateLimitLayer(ScriptedWorker([Step()]), config)
    for user in "abcd":
        await layer.generate(_request(user=user), Recorder())
    await trio.sleep(5.0)  # every bucket refills
    await layer.generate(_request(user="e"), Recorder())
    await layer.generate(_request(user="e"), Recorder())
    assert [b.key for b in layer.statistics().buckets] == ["e"]
    with pytest.raises(RateLimitExceeded), trio.fail_after(0.5):
        await layer.generate(_request(user="e"), Recorder())  # e's bucket is still empty


async def test_reject_limit_refuses_at_once_even_behind_waiters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reject-mode limit without room refuses at once, even while others queue on a model."""
    layer = _layer(
        LimitConfig("model", requests_per_second=1.0),
        LimitConfig("user", requests_per_second=1.0, burst=1.0, mode="reject"),
    )
    await layer.generate(_request(user="a"), Recorder())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(layer.generate, _request(user="b"), Recorder())  # waits on model
        await trio.sleep(0.1)
        start = trio.current_time()
        with pytest.raises(RateLimitExceeded):
            await layer.generate(_request(user="a"), Recorder())
        assert trio.current_time() == start
