"""A worker that spreads requests over several equivalent workers.

Strategies:

- ``round_robin``: each worker in turn.
- ``least_loaded``: the worker with the fewest requests in flight (ties in turn).
- ``weighted``: in proportion to ``weights``, smoothly interleaved (nginx's smooth weighted
  round-robin: deterministic, and no worker gets a burst).
- ``session``: a request's ``session`` always goes to the same worker
  (:func:`~trio_orchestrator.sharding.shard_session`); requests without one go in turn.

Each worker may declare the models it serves (``models``, one list per worker, empty for
any model): a request goes only to the workers that list its model or list none, and a model
none of them serves is :class:`~trio_orchestrator.errors.ModelNotFound` at once.

Balancing is not failover: a failed call raises its error; retries and fallbacks are layers of
their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from ..errors import ModelNotFound
from ..sharding import shard_session
from ..types import PromptRequest
from ..validators import one_of
from .base import EventSink, ModelWorker
from .config import STRATEGIES, ProvidersConfig, Strategy

__all__ = ["STRATEGIES", "BalanceStatistics", "LoadBalancedWorker", "Strategy", "WorkerLoad"]


@attrs.frozen
class WorkerLoad:
    """One worker's share.

    Attributes:
        name: the worker's name (its ``name`` attribute, else its position).
        in_flight: requests it is answering now.
        requests: requests sent to it.
        failures: requests that raised.
    """

    name: str
    in_flight: int
    requests: int
    failures: int


@attrs.frozen
class BalanceStatistics:
    """A snapshot of a load-balanced worker.

    Attributes:
        strategy: the strategy in use.
        workers: each worker's load, in configuration order.
    """

    strategy: str
    workers: tuple[WorkerLoad, ...]


@attrs.define(eq=False)
class _Slot:
    worker: ModelWorker
    name: str
    weight: float
    models: frozenset[str] = frozenset()  # empty: any model
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    current: float = 0.0  # smooth weighted round-robin's running score


def _to_tuple(workers: Iterable[ModelWorker]) -> tuple[ModelWorker, ...]:
    return tuple(workers)


@attrs.define(eq=False)
class LoadBalancedWorker:
    """Sends each request to one of ``workers``, chosen by ``strategy``.

    Args:
        workers: the workers (at least one).
        strategy: ``round_robin``, ``least_loaded``, ``weighted`` or ``session``.
        weights: one positive weight per worker, for ``weighted`` (default: all 1).
        models: one list per worker of the models it serves, empty for any (default: every
            worker serves any model). A request goes only to the workers serving its model.

    Raises:
        ValueError: no workers, an unknown strategy, or weights or models that do not fit.
    """

    workers: Sequence[ModelWorker] = attrs.field(converter=_to_tuple)
    strategy: Strategy = attrs.field(default="round_robin", validator=one_of(*STRATEGIES))
    weights: Sequence[float] | None = None
    models: Sequence[Sequence[str]] | None = None
    _slots: list[_Slot] = attrs.field(init=False)
    _any_model: bool = attrs.field(default=True, init=False)
    # The next turn per set of eligible workers, so that each model's requests go in turn
    # over the workers serving it whatever the other models' requests do.
    _turns: dict[tuple[int, ...], int] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        if not self.workers:
            raise ValueError("a LoadBalancedWorker needs at least one worker")
        weights = list(self.weights) if self.weights is not None else [1.0] * len(self.workers)
        if len(weights) != len(self.workers) or any(not w > 0 for w in weights):
            raise ValueError(
                f"weights must be {len(self.workers)} positive numbers, one per worker, "
                f"got {weights!r}"
            )
        models = list(self.models) if self.models is not None else [()] * len(self.workers)
        if len(models) != len(self.workers):
            raise ValueError(
                f"models must be {len(self.workers)} lists, one per worker, got {models!r}"
            )
        self._slots = [
            _Slot(w, str(getattr(w, "name", i)), weight, frozenset(served))
            for i, (w, weight, served) in enumerate(zip(self.workers, weights, models, strict=True))
        ]
        self._any_model = not any(slot.models for slot in self._slots)

    def reconfigure(self, section: ProvidersConfig, /) -> list[str]:
        """Take a reloaded ``[[providers]]`` table: the strategy, and each provider's weight
        and models, for the next choice (the providers themselves must stay the same, in the
        same order: the gateway refuses adding, removing or reordering them)."""
        entries = section.providers
        if len(entries) != len(self._slots):
            return []  # refused by the gateway, which owns the set of providers
        self.strategy = section.strategy
        for slot, entry in zip(self._slots, entries, strict=True):
            slot.weight, slot.models = entry.weight, frozenset(entry.models)
        self._any_model = not any(slot.models for slot in self._slots)
        self._turns.clear()
        return []

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Generate with the chosen worker; see :class:`~trio_orchestrator.workers.ModelWorker`.

        Raises:
            WorkerError: whatever the chosen worker raised.
        """
        slot = self._choose(request)
        slot.in_flight += 1
        slot.requests += 1
        try:
            await slot.worker.generate(request, emit)
        except Exception:
            slot.failures += 1
            raise
        finally:
            slot.in_flight -= 1

    def statistics(self) -> BalanceStatistics:
        """Each worker's in-flight, request and failure counts."""
        loads = tuple(WorkerLoad(s.name, s.in_flight, s.requests, s.failures) for s in self._slots)
        return BalanceStatistics(self.strategy, loads)

    def _choose(self, request: PromptRequest) -> _Slot:
        slots = self._eligible(request.params.model)
        if self.strategy == "session" and request.session is not None:
            return slots[shard_session(request.session, len(slots))]
        if self.strategy == "weighted":
            return self._weighted(slots)
        if self.strategy == "least_loaded":
            return self._least_loaded(slots)
        return self._in_turn(slots)

    def _eligible(self, model: str) -> list[_Slot]:
        """The workers that serve ``model`` (list it, or list no model).

        Raises:
            ModelNotFound: none does.
        """
        if self._any_model:
            return self._slots
        slots = [slot for slot in self._slots if not slot.models or model in slot.models]
        if not slots:
            served = sorted({m for slot in self._slots for m in slot.models})
            raise ModelNotFound(
                f"no provider serves the model {model!r}; ask for one of: {', '.join(served)}",
                provider="balancer",
                status=404,
            )
        return slots

    def _turn(self, slots: list[_Slot]) -> int:
        """Take the next turn among ``slots``."""
        key = tuple(id(slot) for slot in slots) if slots is not self._slots else ()
        turn = self._turns.get(key, 0)
        self._turns[key] = turn + 1
        return turn

    def _in_turn(self, slots: list[_Slot]) -> _Slot:
        return slots[self._turn(slots) % len(slots)]

    def _least_loaded(self, slots: list[_Slot]) -> _Slot:
        n = len(slots)
        start = self._turn(slots)
        order = [slots[(start + i) % n] for i in range(n)]
        return min(order, key=lambda s: s.in_flight)

    def _weighted(self, slots: list[_Slot]) -> _Slot:
        total = 0.0
        for slot in slots:
            slot.current += slot.weight
            total += slot.weight
        best = max(slots, key=lambda s: s.current)
        best.current -= total
        return best
