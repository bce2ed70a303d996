"""Virtual keys' budgets held globally: every process's spend summed in Redis, and key
changes made anywhere seen everywhere at once.

Without Redis, each process charges its own in-memory budgets and learns what the others
spent from storage every ``[storage] sync_interval`` (seconds): a key's budget can be
overshot by that long of the other processes' spend. With ``[distributed]`` on, each process
also adds its spend to one Redis counter per key and budget period, every
``spend_sync_interval`` (a fraction of a second), and reads back the sum of all processes'
in the same round trip -- one Lua script, whatever the number of keys. A budget is then
overshot by at most that interval of the others' spend, and by nothing after a restart.

The same script reads a version number the admin API bumps on every key change
(:meth:`SharedBudgets.keys_changed`); a process that sees it move reloads the keys from
storage at once, so a revoked key stops working on every process within an interval rather
than a ``sync_interval``.

A counter starts from what storage knows the key spent this period (the first process to
touch it seeds it), expires a day after its period ends, and is never the only record:
storage keeps every request's spend. While Redis is unreachable, spend waits here (and is
added once it answers) and budgets fall back to each process's own count and storage.

A round trip that times out may still have run in Redis, so the spend it carried is sent
again as the same numbered batch, which the script adds only if it has not added it yet (it
keeps the last batch number it added for each process): spend is added exactly once, never
twice because an answer came late. A key change whose announcement fails is announced by
the next round trip that gets through.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar

import attrs
import trio

from ..routing.keys import VirtualKeys
from ..storage.base import period_bounds
from .connection import RedisConnection, RedisUnavailable

if TYPE_CHECKING:
    from coredis.commands.script import Script

__all__ = ["SharedBudgets", "SharedBudgetsStatistics"]

logger = logging.getLogger("trio_orchestrator.distributed")

# KEYS[1]: the keys' version. KEYS[2]: the number of the last batch of spend added for this
# process. KEYS[3..]: one spend counter per key and period. ARGV[1]: this batch's number (0:
# none, only read); ARGV[2]: '1' to bump the keys' version first. Then three per counter:
# what this process knew was spent before its news (the seed of a counter not yet in
# Redis), its news (dollars to add, unless this batch was added already), the counter's
# lifetime in seconds (0: none). Returns {the keys' version, each counter's sum} (strings:
# Lua numbers become integers).
SYNC = """
if ARGV[2] == '1' then redis.call('INCR', KEYS[1]) end
local sums = {redis.call('GET', KEYS[1]) or '0'}
local batch = tonumber(ARGV[1])
local fresh = batch > tonumber(redis.call('GET', KEYS[2]) or '0')
if fresh then redis.call('SET', KEYS[2], ARGV[1], 'EX', 86400) end
for i = 3, #KEYS do
  local key, known, news, ttl = KEYS[i], ARGV[3*i-6], ARGV[3*i-5], tonumber(ARGV[3*i-4])
  if redis.call('EXISTS', key) == 0 then redis.call('SET', key, known) end
  local sum
  if fresh then sum = redis.call('INCRBYFLOAT', key, news) else sum = redis.call('GET', key) end
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  sums[i - 1] = sum
end
return sums
"""

# (key id, budget period, the period's first day): where a charge is counted.
_Slot = tuple[str, str, str]

# A counter outlives its period by this long (seconds), so that a late process's spend for
# a period just ended still lands in it rather than starting a new one.
_GRACE = 86_400.0


@attrs.frozen
class SharedBudgetsStatistics:
    """What the shared budgets have done since start."""

    syncs: int
    """Round trips to Redis that added this process's spend and read the sums."""
    failures: int
    """Round trips that failed (the spend stayed here, to be added on the next)."""
    pending: int
    """Keys whose spend waits to be added now."""
    reloads: int
    """Times another process's key change made this one reload the keys."""


@attrs.define(eq=False)
class SharedBudgets:
    """Adds this process's key spend to Redis and reads every process's sum back.

    Args:
        redis: the shared connection.
        keys: this process's virtual keys; their budgets are raised to the global sums.
        interval: seconds between two round trips (``[distributed] spend_sync_interval``).
        reload_keys: reloads the keys from storage (called when another process changed
            one).
    """

    redis: RedisConnection
    keys: VirtualKeys
    interval: float
    reload_keys: Callable[[], Awaitable[None]]
    # (key id, budget period, the period's first day) -> dollars not yet sent to Redis.
    _pending: dict[_Slot, float] = attrs.field(factory=dict, init=False)
    # The batch sent whose round trip failed: it may or may not have been added, so it is
    # sent again, under its number, before anything else.
    _unacked: tuple[int, dict[_Slot, float]] | None = attrs.field(default=None, init=False)
    _batches: int = attrs.field(default=0, init=False)
    _process: str = attrs.field(factory=lambda: secrets.token_hex(8), init=False)
    _announce: bool = attrs.field(default=False, init=False)
    _version: str | None = attrs.field(default=None, init=False)
    _script: Script[str] = attrs.field(init=False)
    _syncs: int = attrs.field(default=0, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _reloads: int = attrs.field(default=0, init=False)

    metric_kind: ClassVar[str] = "shared_budgets"
    metric_counters: ClassVar[tuple[str, ...]] = ("syncs", "failures", "reloads")

    def __attrs_post_init__(self) -> None:
        self._script = self.redis.script(SYNC)
        self.keys.on_charge = self._charged

    def _charged(self, key_id: str, period: str, dollars: float) -> None:
        # The period the spend fell in travels with it: a period ending between the charge
        # and the round trip must not move this spend into the next one.
        slot = (key_id, period, _first_day(period, self.keys.clock()))
        self._pending[slot] = self._pending.get(slot, 0.0) + dollars

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sync every ``interval`` seconds until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.sync()

    async def sync(self) -> None:
        """Add the spend waiting here (a batch a failed round trip may have added already
        first, under its own number), read the sums and the keys' version; reload the keys
        when another process changed one. Stops at the first round trip that fails."""
        while True:
            if self._unacked is None and self._pending:
                self._batches += 1
                self._unacked, self._pending = (self._batches, self._pending), {}
            batch, news = self._unacked or (0, {})
            if not await self._round_trip(batch, news):
                return
            if self._unacked is None:
                return
            self._unacked = None
            if not self._pending:
                return

    async def _round_trip(self, batch: int, news: dict[_Slot, float]) -> bool:
        """Send ``news`` as batch number ``batch`` (0: nothing to add); take the sums and the
        version. Whether Redis answered."""
        now = self.keys.clock()
        budgeted = [
            (record.id, record.budget_period, _first_day(record.budget_period, now))
            for record in self.keys
            if record.budget is not None
        ]
        slots = sorted({*news, *budgeted})
        counters = [self.redis.key("keys", "version"), self.redis.key("spend", self._process)]
        announce = self._announce
        args = [str(batch), "1" if announce else "0"]
        for slot in slots:
            key_id, period, first_day = slot
            current, end = period_bounds(period, now)
            # What storage and earlier round trips said, to seed a counter Redis lacks (a
            # past period's is not known here any more: what this process adds is counted):
            # without what this process charged and Redis has not confirmed.
            known = (
                self.keys.budgets.spent(key_id, period) - self._unconfirmed(slot)
                if first_day == (current or _TOTAL)
                else 0.0
            )
            counters.append(self.redis.key("spend", key_id, first_day))
            ttl = 0 if end is None else int(end - now + _GRACE)
            args += [_decimal(known), _decimal(news.get(slot, 0.0)), str(ttl)]
        script = self._script
        try:
            answer: list[str] = await self.redis.call(lambda _: script(keys=counters, args=args))
        except RedisUnavailable as exc:
            self._failures += 1
            logger.debug("key spend not shared this time: %s", exc)
            return False
        self._syncs += 1
        self._announce = self._announce and not announce
        version, *sums = answer
        for (key_id, period, first_day), total in zip(slots, sums, strict=True):
            if first_day == _first_day(period, now):  # a past period's sum limits nothing
                self.keys.budgets.raise_to(key_id, period, float(total))
        if version != self._version:
            # The first answer reloads too: the keys were loaded before this process knew
            # the version, and a change made in between would otherwise never be seen.
            self._reloads += self._version is not None
            self._version = version
            await self.reload_keys()
        return True

    def _unconfirmed(self, slot: _Slot) -> float:
        """Dollars charged here for ``slot`` that Redis has not confirmed adding."""
        unacked = 0.0 if self._unacked is None else self._unacked[1].get(slot, 0.0)
        return unacked + self._pending.get(slot, 0.0)

    async def keys_changed(self) -> None:
        """Tell every process that a key was created, changed or revoked: at once, or, when
        Redis does not answer, by the next round trip that gets through (meanwhile the
        others learn it at their next ``[storage] sync_interval``)."""
        key = self.redis.key("keys", "version")
        try:
            await self.redis.call(lambda client: client.incr(key))
        except RedisUnavailable as exc:
            # It may have been bumped all the same: bumping it twice only reloads twice.
            self._announce = True
            logger.debug("key change not announced yet: %s", exc)

    def statistics(self) -> SharedBudgetsStatistics:
        """The counters now."""
        return SharedBudgetsStatistics(
            syncs=self._syncs,
            failures=self._failures,
            pending=len({*self._pending, *(self._unacked or (0, {}))[1]}),
            reloads=self._reloads,
        )


_TOTAL = "total"  # the "first day" of a budget that never restarts


def _first_day(period: str, when: float) -> str:
    """The first UTC day of the budget ``period`` holding Unix time ``when``."""
    return period_bounds(period, when)[0] or _TOTAL


def _decimal(dollars: float) -> str:
    # repr keeps every digit a float has; Redis's INCRBYFLOAT reads it exactly.
    return repr(dollars)
