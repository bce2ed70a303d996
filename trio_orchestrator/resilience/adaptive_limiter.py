"""The adaptive concurrency limit in the request path: a Trio limiter and the layer that puts
one in front of a provider.

:class:`AdaptiveLimiter` admits calls while fewer than the current limit are in flight (the
limit is decided by :mod:`.adaptive`, from what each call it admitted showed). When the
limit is reached a call waits, first come first served, for a slot -- at most
``max_waiting`` calls, each at most ``max_wait`` seconds and never past what its own
deadline leaves for the call -- or is refused at once with :class:`ConcurrencyLimited`, an
:class:`~trio_orchestrator.errors.Overloaded` the service answers with 503
``upstream_overloaded`` and ``Retry-After``.

:class:`AdaptiveLimitLayer` is the worker the gateway puts directly around a provider whose
entry has ``[providers.providers.adaptive] enabled = true`` (below the router's or the
balancer's choice, below retries: each attempt is one call the upstream sees). Each call's
time to its first event is its latency sample; a 429, an ``Overloaded``, a 5xx, a
connection failure, a malformed answer or a timeout (its deadline passing) is a drop; a
request the upstream refused as invalid says nothing and only frees its slot. A call its
client abandoned says nothing either, unless it had waited for its first event longer than
the baseline latency: then that wait is its sample (a lower bound of its latency) -- else
the callers who give up on a queueing upstream would hide its latency from the limit. It is
no drop, however long it waited: a caller near its own deadline (after a Retry-After, say)
gives up on calls no slower than the others.

Each sample also tells the algorithm whether more calls are wanted than the limit admits (a
call waits for a slot, or one was shed within the last ``window``): the gradient limit then
grows per answer and judges its window by ``waiting_tolerance`` (see :mod:`.adaptive`).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, ClassVar

import attrs
import trio

from ..errors import Overloaded, RateLimited, WorkerError
from ..events import StreamEvent
from ..types import PromptRequest
from ..workers.base import EventSink, ModelWorker
from .adaptive import LimitAlgorithm, limit_for
from .config import AdaptiveConfig

if TYPE_CHECKING:
    from ..workers.config import ProviderConfig

__all__ = [
    "AdaptiveLimitLayer",
    "AdaptiveLimiter",
    "AdaptiveStatistics",
    "ConcurrencyLimited",
]

# Per-model limiters kept at most; idle ones are forgotten past this (a client may name any
# model, and a provider that lists none serves them all).
_MAX_TARGETS = 256


class ConcurrencyLimited(Overloaded):
    """The provider's adaptive concurrency limit is reached and its queue is full (or the
    call waited as long as it may): the gateway shed the call without sending it.

    Not retryable and no evidence against the upstream's health: a retry at once would be
    shed again, and an open circuit would stop the calls the limit admits.
    """

    retryable = False
    trips_breaker = False


@attrs.frozen
class AdaptiveStatistics:
    """One adaptive limit (a provider's, or one model's at it).

    Attributes:
        target: ``provider`` or ``provider/model``.
        limit: calls allowed in flight now.
        in_flight: calls in flight now.
        waiting: calls waiting for a slot now.
        baseline_rtt: the latency the gradient compares against, in seconds.
        window_rtt: the last window's latency, in seconds.
        admitted: calls admitted.
        shed: calls refused (queue full, or waited too long).
        drops: admitted calls the upstream refused or failed (429, 5xx, timeouts).
        cuts: times the limit went down.
        raises: times the limit went up.
    """

    target: str
    limit: int
    in_flight: int
    waiting: int
    baseline_rtt: float
    window_rtt: float
    admitted: int
    shed: int
    drops: int
    cuts: int
    raises: int


@attrs.define(eq=False)
class AdaptiveLimiter:
    """Admits calls up to an adaptive limit; see the module docstring.

    Args:
        config: the provider's ``[adaptive]`` section.
        name: ``provider`` or ``provider/model``, in errors and statistics.
    """

    config: AdaptiveConfig
    name: str
    _algorithm: LimitAlgorithm = attrs.field(init=False)
    _in_flight: int = attrs.field(default=0, init=False)
    _waiters: deque[trio.Event] = attrs.field(factory=deque, init=False)
    _admitted: int = attrs.field(default=0, init=False)
    _shed: int = attrs.field(default=0, init=False)
    _last_shed: float = attrs.field(default=-math.inf, init=False)

    def __attrs_post_init__(self) -> None:
        self._algorithm = limit_for(self.config, trio.current_time())

    @property
    def limit(self) -> int:
        """Calls allowed in flight now."""
        return self._algorithm.limit

    @property
    def in_flight(self) -> int:
        """Calls in flight now."""
        return self._in_flight

    @property
    def idle(self) -> bool:
        """No call in flight or waiting."""
        return not (self._in_flight or self._waiters)

    async def acquire(self) -> int:
        """Take a slot, waiting for one if the queue has room.

        Returns:
            The calls in flight with this one (its sample's ``in_flight``).

        Raises:
            ConcurrencyLimited: no slot, and no room or no time to wait for one.
        """
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            self._admitted += 1
            return self._in_flight
        await trio.lowlevel.checkpoint_if_cancelled()  # a caller already gone is no shed
        if len(self._waiters) >= self.config.max_waiting:
            raise self._refuse("its queue is full")
        budget = self._wait_budget()
        if budget <= 0:
            raise self._refuse("the call's deadline leaves no time to wait for a slot")
        event = trio.Event()
        self._waiters.append(event)
        try:
            with trio.move_on_after(budget):
                await event.wait()
        except BaseException:
            if event.is_set():  # handed a slot, then cancelled: give it back
                self.release()
            else:
                self._waiters.remove(event)
            raise
        if not event.is_set():
            self._waiters.remove(event)
            raise self._refuse(f"no slot freed within {budget:.3g} s")
        self._admitted += 1
        return self._in_flight

    def release(self) -> None:
        """Free a slot without a sample (a call that showed nothing)."""
        self._in_flight -= 1
        self._hand_over()

    def record(
        self, rtt: float, in_flight: int, *, dropped: bool, held: float | None = None
    ) -> None:
        """Free a slot and give the algorithm the call's sample.

        Args:
            rtt: seconds from admission to the first event.
            in_flight: what :meth:`acquire` returned for it.
            dropped: the upstream refused or failed it, or it timed out.
            held: seconds from admission to the end, if later than the first event.
        """
        now = trio.current_time()
        wanted = bool(self._waiters) or now - self._last_shed < self.config.window
        self._algorithm.observe(now, rtt, in_flight, dropped, held, wanted=wanted)
        self.release()

    def slower_than_baseline(self, rtt: float) -> bool:
        """Whether ``rtt`` exceeds the latency the limit is judged against (False before
        there is one)."""
        baseline = self._algorithm.statistics().baseline_rtt
        return 0.0 < baseline < rtt

    def reconfigure(self, config: AdaptiveConfig) -> None:
        """Take reloaded settings; the limit stays (within the new bounds). A new algorithm
        starts from the current limit."""
        if config.algorithm != self.config.algorithm:
            start = min(max(self.limit, config.min_limit), config.max_limit)
            seeded = attrs.evolve(config, initial_limit=start)
            self._algorithm = limit_for(seeded, trio.current_time())
        self._algorithm.reconfigure(config)
        self.config = config
        self._hand_over()

    def statistics(self) -> AdaptiveStatistics:
        """The limit, the load and the counters now."""
        decided = self._algorithm.statistics()
        return AdaptiveStatistics(
            target=self.name,
            limit=decided.limit,
            in_flight=self._in_flight,
            waiting=len(self._waiters),
            baseline_rtt=decided.baseline_rtt,
            window_rtt=decided.window_rtt,
            admitted=self._admitted,
            shed=self._shed,
            drops=decided.drops,
            cuts=decided.cuts,
            raises=decided.raises,
        )

    def _wait_budget(self) -> float:
        """How long a call may wait: ``max_wait``, less than its deadline leaves for the
        call itself (one baseline latency)."""
        left = trio.current_effective_deadline() - trio.current_time()
        expected = self._algorithm.statistics().baseline_rtt
        return min(self.config.max_wait, left - expected)

    def _hand_over(self) -> None:
        """Give free slots to the calls waiting longest (a slot is never taken by a newcomer
        while someone waits)."""
        while self._waiters and self._in_flight < self.limit:
            self._in_flight += 1
            self._waiters.popleft().set()

    def _refuse(self, why: str) -> ConcurrencyLimited:
        self._shed += 1
        self._last_shed = trio.current_time()
        retry_after = max(self._algorithm.statistics().baseline_rtt, 1.0)
        return ConcurrencyLimited(
            f"{self.name} is at its adaptive concurrency limit of {self.limit} calls and "
            f"{why}; retry after Retry-After",
            provider=self.name.split("/", 1)[0],
            retry_after=retry_after,
        )


@attrs.define(eq=False)
class AdaptiveLimitLayer:
    """The worker that admits calls to ``inner`` through an :class:`AdaptiveLimiter` (one
    per model with ``per_model``); see the module docstring.

    Args:
        inner: the provider's worker.
        config: its entry's ``[adaptive]`` section.
        provider: its label.
    """

    inner: ModelWorker
    config: AdaptiveConfig
    provider: str = attrs.field(default="default", kw_only=True)
    _limiters: dict[str, AdaptiveLimiter] = attrs.field(factory=dict, init=False)

    metric_kind: ClassVar[str] = "adaptive"
    metric_counters: ClassVar[tuple[str, ...]] = ("admitted", "shed", "drops", "cuts", "raises")

    @property
    def name(self) -> str:
        """The provider's label (what :func:`~trio_orchestrator.seams.provider_name` reads)."""
        return self.provider

    def limiter(self, model: str) -> AdaptiveLimiter:
        """The limiter for calls to ``model`` (the provider's only one without ``per_model``)."""
        key = model if self.config.per_model else ""
        limiter = self._limiters.get(key)
        if limiter is None:
            if len(self._limiters) >= _MAX_TARGETS:
                self._forget_idle()
            name = f"{self.provider}/{model}" if key else self.provider
            limiter = self._limiters[key] = AdaptiveLimiter(self.config, name)
        return limiter

    def targets(self) -> tuple[AdaptiveStatistics, ...]:
        """One snapshot per limiter (per model with ``per_model``), in order of first use."""
        return tuple(limiter.statistics() for limiter in self._limiters.values())

    def statistics(self) -> AdaptiveStatistics:
        """The provider's limit: with ``per_model``, its models' limits and counts summed
        (one series per provider keeps the metrics bounded; :meth:`targets` has each)."""
        parts = self.targets()
        if not parts:
            return AdaptiveStatistics(
                self.provider, self.config.initial_limit, 0, 0, 0.0, 0.0, 0, 0, 0, 0, 0
            )
        if len(parts) == 1:
            return parts[0]
        return AdaptiveStatistics(
            target=self.provider,
            limit=sum(p.limit for p in parts),
            in_flight=sum(p.in_flight for p in parts),
            waiting=sum(p.waiting for p in parts),
            baseline_rtt=min(p.baseline_rtt for p in parts),
            window_rtt=max(p.window_rtt for p in parts),
            admitted=sum(p.admitted for p in parts),
            shed=sum(p.shed for p in parts),
            drops=sum(p.drops for p in parts),
            cuts=sum(p.cuts for p in parts),
            raises=sum(p.raises for p in parts),
        )

    def reconfigure(self, entry: ProviderConfig | None, /) -> list[str]:
        """Apply this provider's reloaded ``[adaptive]`` settings to every limiter.

        Returns:
            Refusals: switching the limit on or off, or ``per_model``, needs a restart.
        """
        if entry is None:
            return []  # the provider's own worker reports its removal
        section = entry.adaptive
        path = f"providers.{self.provider}.adaptive"
        refused = [
            f"{path}.{name}: changes only on a restart {getattr(self.config, name)!r} → "
            f"{getattr(section, name)!r}"
            for name in ("enabled", "per_model")
            if getattr(section, name) != getattr(self.config, name)
        ]
        if refused:
            return refused
        self.config = section
        for limiter in self._limiters.values():
            limiter.reconfigure(section)
        return []

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Call ``inner`` once the limiter admits it, and report what the call showed.

        Raises:
            ConcurrencyLimited: the limit is reached and the call could not wait.
        """
        limiter = self.limiter(request.params.model)
        in_flight = await limiter.acquire()
        start = trio.current_time()
        # Read before the call: once a surrounding scope is cancelled it reads -inf.
        deadline = trio.current_effective_deadline()
        first_event_at: float | None = None

        async def timed_emit(event: StreamEvent) -> None:
            nonlocal first_event_at
            if first_event_at is None:
                first_event_at = trio.current_time()
            await emit(event)

        try:
            # Streamed even for a caller that takes the answer whole: the limit's signal is
            # the time to the first event, which an unstreamed answer shows only at its end.
            await self.inner.generate(request.streamed(True), timed_emit)
        except BaseException as exc:
            now = trio.current_time()
            dropped = _dropped(exc, deadline)
            rtt = (first_event_at or now) - start
            if dropped is None and first_event_at is None and limiter.slower_than_baseline(rtt):
                # Abandoned while still waiting for its first event, and already slower
                # than the baseline: a latency of at least ``rtt``. Left out, the callers
                # who give up on a queueing upstream would hide its latency from the limit.
                # Not a drop: a caller whose deadline was near (after a Retry-After, say)
                # gives up on a call no slower than the others.
                dropped = False
            if dropped is None:
                limiter.release()
            else:
                limiter.record(rtt, in_flight, dropped=dropped)
            raise
        end = trio.current_time()
        limiter.record((first_event_at or end) - start, in_flight, dropped=False, held=end - start)

    def _forget_idle(self) -> None:
        for key in [k for k, limiter in self._limiters.items() if limiter.idle]:
            del self._limiters[key]


def _dropped(exc: BaseException, deadline: float) -> bool | None:
    """True for a failure that says the upstream is overloaded or failing, None for one that
    says nothing of it (the client left, the request was invalid)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a worker's nursery wraps its error
    if isinstance(exc, trio.Cancelled):
        # Cancelled by its own deadline: a timeout; by its client leaving: nothing. A scope
        # cancelled before the call began (its client left as it was handed a slot) reads
        # a deadline of -inf: the upstream saw nothing of it.
        return True if -math.inf < deadline <= trio.current_time() else None
    if isinstance(exc, WorkerError):
        return True if isinstance(exc, RateLimited) or exc.trips_breaker else None
    return None
