"""Virtual keys in memory: the table the guard reads, each key's budget over its calendar
period, and the policy layer (aliases, allowed models, budget, its own rpm/tpm)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from trio_orchestrator.config import Config
from trio_orchestrator.errors import ModelNotFound, RateLimitExceeded
from trio_orchestrator.events import Done, TextDelta, Usage
from trio_orchestrator.gateway import open_gateway
from trio_orchestrator.routing.budget import BudgetExceeded, KeyBudgets
from trio_orchestrator.routing.keys import KeyPolicyWorker, VirtualKeys
from trio_orchestrator.service.guard import KeyRing
from trio_orchestrator.storage import KeyRecord, SpendRecord, SqliteStore, StorageConfig, day_of
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import EventSink

SECRET = "sk-to-secret"
DIGEST = hashlib.sha256(SECRET.encode()).digest()
DAY = 86_400.0
MONDAY = 1_773_619_200.0  # 2026-03-16 00:00 UTC


class Clock:
    """A settable Unix clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A worker that records the model it was asked for and reports 100 tokens."""

    def __init__(self) -> None:
        self.models: list[str] = []

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.models.append(request.params.model)
        await emit(TextDelta("ok"))
        await emit(Done(usage=Usage(input_tokens=60, output_tokens=40)))


def request(model: str = "m", key_id: str | None = "key_1") -> PromptRequest:
    """A request from ``key_id`` for ``model``."""
    meta = {} if key_id is None else {"api_key_id": key_id}
    return PromptRequest(input="hi", params=GenerationParams(model=model), meta=meta)


async def call(worker: KeyPolicyWorker, sent: PromptRequest) -> None:
    """Run one request through ``worker``, dropping its events."""

    async def emit(_event: object) -> None:
        await trio.lowlevel.checkpoint()

    await worker.generate(sent, emit)


def test_a_budget_restarts_with_its_calendar_period() -> None:
    """Spend counts toward the current UTC day/week/month; the next period starts at zero,
    and the refusal says when it restarts."""
    clock = Clock(MONDAY + 10)
    budgets = KeyBudgets(clock)
    budgets.charge("k", "day", 2.0)
    error = budgets.exceeded("k", 2.0, "day")
    assert isinstance(error, BudgetExceeded)
    assert error.retry_after == pytest.approx(DAY - 10)
    clock.now += DAY
    assert budgets.exceeded("k", 2.0, "day") is None
    budgets.charge("w", "week", 1.0)
    clock.now += 6 * DAY  # the next Monday
    assert budgets.spent("w", "week") == 0.0
    budgets.seed("t", "total", 5.0)
    clock.now += 400 * DAY
    assert budgets.spent("t", "total") == 5.0
    assert budgets.exceeded("t", 5.0, "total") is not None
    assert budgets.refused == 2


def test_only_live_keys_are_identified() -> None:
    """The guard's key ring finds a virtual key by its secret's digest, not once it is
    revoked or expired, and requires keys once one exists."""
    clock = Clock(1000.0)
    keys = VirtualKeys(clock)
    ring = KeyRing.from_config(())
    ring.attach(keys)
    assert not ring.enabled
    keys.put(KeyRecord("key_1", DIGEST, priority="low", expires_at=2000.0))
    caller = ring.identify(SECRET)
    assert caller is not None
    assert (caller.key_id, caller.admin, caller.priority_cap is not None) == ("key_1", False, True)
    assert ring.enabled
    clock.now = 2000.0
    assert ring.identify(SECRET) is None  # expired
    clock.now = 1000.0
    keys.put(KeyRecord("key_1", DIGEST, revoked_at=1500.0))
    assert ring.identify(SECRET) is None
    assert keys.get("key_1") is None


async def test_aliases_and_allowed_models() -> None:
    """An alias is mapped before the allowed-model check; another model is ModelNotFound
    (404) naming it; a request of no virtual key passes untouched."""
    keys, inner = VirtualKeys(), Recorder()
    keys.put(KeyRecord("key_1", DIGEST, models=("big",), aliases={"fast": "big"}))
    worker = KeyPolicyWorker(inner, keys)
    await call(worker, request("fast"))
    with pytest.raises(ModelNotFound, match="`small`"):
        await call(worker, request("small"))
    await call(worker, request("small", key_id=None))
    await call(worker, request("small", key_id="sha256:0123abcd"))
    assert inner.models == ["big", "small", "small"]


async def test_a_spent_budget_refuses_before_the_call() -> None:
    """Once a key's spend reaches its budget its next request is BudgetExceeded, with no
    call made."""
    keys, inner = VirtualKeys(), Recorder()
    keys.put(KeyRecord("key_1", DIGEST, budget=1.0, budget_period="total"))
    worker = KeyPolicyWorker(inner, keys)
    await call(worker, request())
    keys.charge("key_1", 1.0)
    with pytest.raises(BudgetExceeded):
        await call(worker, request())
    assert len(inner.models) == 1


async def test_a_keys_own_rpm_and_tpm(autojump_clock: trio.testing.MockClock) -> None:
    """A key's rpm refuses the request past it (429 with a retry time) and refills; its tpm
    is charged the real usage after the call."""
    keys, inner = VirtualKeys(), Recorder()
    keys.put(KeyRecord("key_1", DIGEST, rpm=2))
    keys.put(KeyRecord("key_2", b"x" * 32, tpm=150))
    worker = KeyPolicyWorker(inner, keys)
    await call(worker, request())
    await call(worker, request())
    with pytest.raises(RateLimitExceeded) as refused:
        await call(worker, request())
    assert refused.value.retry_after == pytest.approx(30.0)
    await trio.sleep(30)
    await call(worker, request())
    await call(worker, request(key_id="key_2"))  # estimate 257, clamped to 150; used 100
    limits = keys.limits("key_2")
    assert limits is not None
    assert limits.tokens is not None
    assert limits.tokens.level(trio.current_time()) == pytest.approx(50.0)


async def _eventually(holds: Callable[[], bool]) -> None:
    """Wait until ``holds()``, in steps of one sync interval of the mock clock.

    The store answers from a worker thread, during which the autojump clock runs ahead:
    a fixed sleep may end before a sync's read has come back, so the test waits for what
    it checks, bounded in real time (never asserting a duration).
    """
    give_up = time.monotonic() + 30
    while not holds():
        assert time.monotonic() < give_up, "the gateway never saw the other process's change"
        await trio.sleep(5)


async def test_keys_and_spend_of_other_processes_are_seen(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A gateway reads the keys and spend again every sync_interval: a key another process
    created, then its spend there, then its revocation there, all reach this gateway."""
    path = str(tmp_path / "shared.sqlite")
    config = Config(storage=StorageConfig(path=path, sync_interval=5.0))
    other = SqliteStore(path)
    async with open_gateway(config, worker=Recorder()) as gateway:
        record = KeyRecord("key_9", DIGEST, budget=1.0, budget_period="total")
        await other.create_key(record)
        assert gateway.keys.get("key_9") is None
        await _eventually(lambda: gateway.keys.get("key_9") is not None)
        await other.add_spend([SpendRecord(day_of(time.time()), "key_9", "m", "up", cost=1.0)])
        budgets = gateway.keys.budgets
        await _eventually(lambda: budgets.exceeded("key_9", 1.0, "total") is not None)
        await other.update_key(attrs.evolve(record, revoked_at=1.0))
        await _eventually(lambda: gateway.keys.get("key_9") is None)
    await other.aclose()
