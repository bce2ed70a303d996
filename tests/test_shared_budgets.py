"""Virtual keys' budgets and key changes shared through Redis (``[distributed]`` with
``[storage]``): two services on one database and one Redis, whose storage sync is an hour
apart, still share a key the moment it is made, its budget, and its revocation."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import openai
import pytest
import trio
from redis_fixture import RedisServer, redis_server
from service_helpers import running_service
from test_admin_keys_e2e import ADMIN, ANSWER, COST, MODEL, ask, create, settings

from trio_orchestrator.distributed.budgets import SharedBudgets
from trio_orchestrator.distributed.config import DistributedConfig
from trio_orchestrator.distributed.connection import RedisUnavailable, open_redis
from trio_orchestrator.routing.keys import VirtualKeys
from trio_orchestrator.storage.base import KeyRecord
from trio_orchestrator.testing import FakeBehaviour, FakeProvider, open_fake_provider

__all__ = ["redis_server"]

SYNC = 0.05  # [distributed] spend_sync_interval, seconds
SETTLE = 10.0  # seconds anything shared may take to arrive, on a loaded machine


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with open_fake_provider(FakeBehaviour(body=ANSWER)) as fake:
        yield fake


@asynccontextmanager
async def two_services(
    fake: FakeProvider, redis: RedisServer, database: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two services on one SQLite file and one Redis, each with an admin client; storage
    alone would tell one of the other's keys and spend only after an hour."""
    storage = (
        f'backend = "sqlite"\npath = "{database}"\nsync_interval = 3600\n'
        f'[distributed]\nredis_url = "{redis.url}"\nspend_sync_interval = {SYNC}\n'
    )
    headers = {"authorization": f"Bearer {ADMIN}"}
    async with AsyncExitStack() as stack:
        admins = []
        for _ in range(2):
            url = await stack.enter_async_context(
                running_service(settings(fake.openai_base_url, storage))
            )
            admins.append(
                await stack.enter_async_context(httpx.AsyncClient(base_url=url, headers=headers))
            )
        yield admins[0], admins[1]


async def spent(admin: httpx.AsyncClient, key_id: str) -> float:
    """What the service of ``admin`` holds the key spent in its budget period."""
    response = await admin.get(f"/v1/admin/keys/{key_id}")
    assert response.status_code == 200, response.text
    return float(response.json()["spend"])


async def until_spent(admin: httpx.AsyncClient, key_id: str, dollars: float) -> None:
    """Wait until the service of ``admin`` holds the key spent at least ``dollars``."""
    with trio.fail_after(SETTLE):
        while True:
            if await spent(admin, key_id) >= dollars - 1e-12:
                return
            await trio.sleep(SYNC)


async def until_answered(admin: httpx.AsyncClient, secret: str) -> None:
    """Wait until the service of ``admin`` serves ``secret`` (a 401 costs nothing)."""
    with trio.fail_after(SETTLE):
        while True:
            try:
                await ask(str(admin.base_url), secret)
                return
            except openai.AuthenticationError:
                await trio.sleep(SYNC)


async def until_refused(admin: httpx.AsyncClient, secret: str) -> None:
    """Wait until the service of ``admin`` answers ``secret`` 401."""
    with trio.fail_after(SETTLE):
        while True:
            try:
                await ask(str(admin.base_url), secret)
            except openai.AuthenticationError:
                return
            await trio.sleep(SYNC)


async def test_a_key_its_budget_and_its_revocation_are_shared_at_once(
    fake: FakeProvider, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A key made on one service is served by the other; spend on either counts against
    one budget, which both then refuse; a revocation on one is a 401 on the other; the
    round trips and reloads are in /metrics."""
    async with two_services(fake, redis_server, tmp_path / "gw.sqlite") as (one, two):
        key = await create(one, models=[MODEL], budget=2.5 * COST)
        await until_answered(two, key["key"])  # spent: 1 request
        await ask(str(one.base_url), key["key"])  # 2
        await until_spent(two, key["id"], 2 * COST)
        await ask(str(two.base_url), key["key"])  # 3: past the budget, as both now know
        await until_spent(one, key["id"], 3 * COST)
        for admin in (one, two):
            with pytest.raises(openai.RateLimitError) as refused:
                await ask(str(admin.base_url), key["key"])
            assert refused.value.code == "insufficient_quota"
        other = await create(two, models=[MODEL])
        await until_answered(one, other["key"])
        response = await two.delete(f"/v1/admin/keys/{other['id']}")
        assert response.status_code == 200, response.text
        await until_refused(one, other["key"])
        metrics = (await one.get("/metrics")).text
    assert re.search(r"^trio_orchestrator_shared_budgets_syncs_total [1-9]", metrics, re.M)
    assert re.search(r"^trio_orchestrator_shared_budgets_reloads_total [1-9]", metrics, re.M)


def _key(key_id: str, budget: float) -> KeyRecord:
    return KeyRecord(id=key_id, digest=key_id.encode(), budget=budget, budget_period="day")


async def test_spend_waits_while_redis_is_down_and_is_added_once_it_is_back(
    redis_server: RedisServer,
) -> None:
    """A round trip that finds Redis gone keeps this process's spend (counted as a
    failure); the next one after Redis answers adds it, and another process reads it."""
    config = DistributedConfig(redis_url=redis_server.url, operation_timeout=0.5)
    reloads: list[int] = []

    async def reload() -> None:
        reloads.append(1)

    async with open_redis(config) as redis:
        here, there = VirtualKeys(), VirtualKeys()
        for keys in (here, there):
            keys.put(_key("key_a", budget=1.0))
        mine = SharedBudgets(redis, here, SYNC, reload)
        theirs = SharedBudgets(redis, there, SYNC, reload)
        here.charge("key_a", 0.25)
        redis_server.pause()
        await mine.sync()
        assert mine.statistics().failures >= 1
        assert mine.statistics().pending == 1
        redis_server.resume()
        with trio.fail_after(SETTLE):
            while True:
                if await redis.check():
                    break
                await trio.sleep(SYNC)
        here.charge("key_a", 0.5)
        await mine.sync()
        assert mine.statistics().pending == 0
        await theirs.sync()
    assert there.budgets.spent("key_a", "day") == pytest.approx(0.75)
    assert here.budgets.spent("key_a", "day") == pytest.approx(0.75)
    assert len(reloads) == 2  # each one's first answer only: no key changed


async def test_a_counter_starts_from_what_storage_knew(redis_server: RedisServer) -> None:
    """The first process to share a key's spend seeds Redis with what it read from storage
    (here $2 before this process spent $0.5), so a fresh Redis forgets nothing spent."""
    config = DistributedConfig(redis_url=redis_server.url)

    async def reload() -> None:
        pass

    async with open_redis(config) as redis:
        here, there = VirtualKeys(), VirtualKeys()
        for keys in (here, there):
            keys.put(_key("key_b", budget=10.0))
        here.budgets.seed("key_b", "day", 2.0)  # as _load_keys does from storage
        here.charge("key_b", 0.5)
        await SharedBudgets(redis, here, SYNC, reload).sync()
        await SharedBudgets(redis, there, SYNC, reload).sync()
    assert there.budgets.spent("key_b", "day") == pytest.approx(2.5)


async def test_a_key_change_before_the_first_round_trip_is_not_missed(
    redis_server: RedisServer,
) -> None:
    """A process whose keys were loaded before another changed one, and which had not yet
    read the keys' version, reloads on its first round trip (and on a later change)."""
    config = DistributedConfig(redis_url=redis_server.url)
    reloads: list[str] = []

    async def reload() -> None:
        reloads.append("reloaded")

    async with open_redis(config) as redis:
        late = SharedBudgets(redis, VirtualKeys(), SYNC, reload)
        other = SharedBudgets(redis, VirtualKeys(), SYNC, reload)
        await other.keys_changed()  # a key made elsewhere, before this process's first sync
        await late.sync()
        assert reloads == ["reloaded"]
        await late.sync()  # nothing changed since
        assert reloads == ["reloaded"]
        await other.keys_changed()
        await late.sync()
    assert reloads == ["reloaded", "reloaded"]
    assert late.statistics().reloads == 1  # the change seen between two round trips


async def test_spend_from_before_midnight_stays_in_its_day(redis_server: RedisServer) -> None:
    """Spend charged at 23:59:59 and shared after midnight is added to the day it was spent
    in, not to the new day's budget."""
    config = DistributedConfig(redis_url=redis_server.url)
    midnight = 1_780_000_000 - 1_780_000_000 % 86_400  # a UTC midnight
    now = [midnight - 1.0]

    async def reload() -> None:
        pass

    async with open_redis(config) as redis:
        here, there = VirtualKeys(clock=lambda: now[0]), VirtualKeys(clock=lambda: now[0])
        for keys in (here, there):
            keys.put(_key("key_d", budget=10.0))
        mine = SharedBudgets(redis, here, SYNC, reload)
        here.charge("key_d", 0.5)
        now[0] = midnight + 1.0
        await mine.sync()
        await SharedBudgets(redis, there, SYNC, reload).sync()
        day_before = await redis.call(
            lambda client: client.get(redis.key("spend", "key_d", "2026-05-27"))
        )
    assert there.budgets.spent("key_d", "day") == 0.0
    assert float(day_before or 0) == pytest.approx(0.5)


class _LateAnswers:
    """Wraps a Redis connection: the next ``failures`` operations fail, after running in
    Redis (as if their answer had come after ``operation_timeout``) or, with ``run`` false,
    without reaching it."""

    def __init__(self, redis: Any, failures: int, run: bool = True) -> None:
        self.redis, self.failures, self.run = redis, failures, run

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redis, name)

    async def call(self, operation: Any) -> Any:
        if self.failures and not self.run:
            self.failures -= 1
            raise RedisUnavailable("Redis did not answer")
        answer = await self.redis.call(operation)
        if self.failures:
            self.failures -= 1
            raise RedisUnavailable("the answer came too late")
        return answer


async def test_spend_whose_answer_came_too_late_is_added_once(redis_server: RedisServer) -> None:
    """A round trip that ran in Redis but whose answer came too late is sent again, and the
    spend it carried is added once, not twice (twice would refuse a key under its budget)."""
    config = DistributedConfig(redis_url=redis_server.url)

    async def reload() -> None:
        pass

    async with open_redis(config) as redis:
        here, there = VirtualKeys(), VirtualKeys()
        for keys in (here, there):
            keys.put(_key("key_c", budget=10.0))
        late = _LateAnswers(redis, failures=2)
        mine = SharedBudgets(late, here, SYNC, reload)  # type: ignore[arg-type]
        here.charge("key_c", 0.25)
        await mine.sync()  # ran, but failed as far as this process knows
        here.charge("key_c", 0.5)
        await mine.sync()  # the same batch again: ran, failed again
        assert mine.statistics() == attrs.evolve(mine.statistics(), failures=2, pending=1)
        await mine.sync()  # the batch once more (added already), then the $0.5
        assert mine.statistics().pending == 0
        await SharedBudgets(redis, there, SYNC, reload).sync()
    assert there.budgets.spent("key_c", "day") == pytest.approx(0.75)


async def test_a_key_change_announced_too_late_is_announced_by_the_next_round_trip(
    redis_server: RedisServer,
) -> None:
    """A key change whose announcement fails is announced by the next round trip that gets
    through: the other processes reload without waiting for storage."""
    config = DistributedConfig(redis_url=redis_server.url)
    reloads: list[str] = []

    async def reload() -> None:
        reloads.append("reloaded")

    async with open_redis(config) as redis:
        other = SharedBudgets(redis, VirtualKeys(), SYNC, reload)
        await other.sync()  # reads the version: its first reload
        down = _LateAnswers(redis, failures=1, run=False)
        changer = SharedBudgets(down, VirtualKeys(), SYNC, reload)  # type: ignore[arg-type]
        await changer.keys_changed()  # Redis did not answer: not announced
        await changer.sync()
        await other.sync()
    assert reloads.count("reloaded") == 3  # other's first, changer's first, other's second
