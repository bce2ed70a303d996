"""The typed seams between the parts of the gateway: what a component may offer.

The composition root (:func:`trio_orchestrator.open_gateway`) builds every component and
registers each for the seams it offers; nothing is found by probing attributes:

- :class:`Layer`: a worker that wraps another (``inner``); walk a chain with
  :func:`iter_layers`.
- :class:`ModelCatalog`: knows the model names it serves (a router, a balancer, a provider).
- :class:`ModelLister`: a provider whose upstream lists the models it serves (``/v1/models``
  asks it, see ``workers.kinds.lists_models``).
- :class:`Embedder`: turns texts into vectors (a provider that embeds, or any worker through
  :class:`~trio_orchestrator.workers.WorkerEmbedder`); what a dense retriever asks for.
- :class:`HasStatistics`: keeps counters, and says how they are exported as metrics
  (``trio_orchestrator_<metric_kind>_<field>``, :attr:`metric_counters` as counters, the
  other numeric fields as gauges).
- :class:`Reloadable`: takes its own configuration section while running.
- :class:`Readiness`: says why it cannot take a request now (an open breaker, resting keys,
  Redis down), or None.
- :class:`Revivable`: is told of every reload, whatever changed (a key pool enables the keys
  the provider rejected).

A new layer or provider that implements these plugs into metrics, reload and readiness
without an edit anywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from .workers.base import ModelWorker

__all__ = [
    "Embedder",
    "HasStatistics",
    "Layer",
    "ModelCatalog",
    "ModelLister",
    "Readiness",
    "Reloadable",
    "Revivable",
    "iter_layers",
    "provider_name",
]

S_contra = TypeVar("S_contra", contravariant=True)


@runtime_checkable
class Layer(Protocol):
    """A worker that wraps another worker (a resilience layer, a router's deployment)."""

    @property
    def inner(self) -> ModelWorker:
        """The worker this one wraps."""
        ...

    async def generate(self, request: Any, emit: Any) -> None:
        """Generate, as :class:`~trio_orchestrator.workers.ModelWorker` does."""


@runtime_checkable
class ModelCatalog(Protocol):
    """Knows the model names it serves."""

    def model_names(self) -> tuple[str, ...]:
        """The model names clients may ask for; empty means any (the upstream decides)."""
        ...


@runtime_checkable
class ModelLister(Protocol):
    """A provider whose upstream says which models it serves (``GET /models``)."""

    async def list_models(self) -> list[str]:
        """The ids of the models the upstream serves.

        Raises:
            ProviderError: a typed failure.
        """
        ...


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors."""

    async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
        """One vector per input, in input order, from the embedding model ``model``.

        Raises:
            WorkerError: a typed failure (the model cannot embed, the upstream failed).
        """
        ...


@runtime_checkable
class HasStatistics(Protocol):
    """Keeps counters, read with ``statistics()`` (a frozen attrs object, or a tuple of them
    with a ``target`` field each), and says how they become metrics.

    Attributes:
        metric_kind: the metric name's middle: ``trio_orchestrator_<kind>_<field>``.
        metric_counters: the fields exported as counters; other numeric fields are gauges.
    """

    metric_kind: ClassVar[str]
    metric_counters: ClassVar[tuple[str, ...]]

    def statistics(self) -> Any:
        """The counters now."""
        ...


@runtime_checkable
class Reloadable(Protocol[S_contra]):
    """Takes its own configuration section while running.

    The composition root records which key path each component reloads from (its layer's
    section, its provider's entry) and hands it that section on a reload: a change under a
    path no component takes is refused, never silently ignored.
    """

    def reconfigure(self, section: S_contra, /) -> list[str]:
        """Apply the reloadable parts of ``section``; return what could not be applied.

        Must not block (it runs without a checkpoint, so requests see the old settings or the
        new ones, never a mixture), and must not drop requests in flight.

        Returns:
            One line per refused change, starting with its key path and a colon
            (``"providers.openai.base_url: cannot change while requests use it"``).
        """
        ...


@runtime_checkable
class Readiness(Protocol):
    """Says whether it can take a request now."""

    def unready(self) -> str | None:
        """None when it can take a request; else why not, in a few words."""
        ...


@runtime_checkable
class Revivable(Protocol):
    """Is told of every reload, whether or not its section changed: a reload is the operator
    saying "fixed", so what was switched off for a fault outside the gateway comes back (a
    key pool enables the keys the provider rejected with a 401)."""

    def revive(self) -> None:
        """Undo what was switched off for an outside fault; must not block."""
        ...


def iter_layers(worker: ModelWorker) -> Iterator[ModelWorker]:
    """Yield ``worker`` and every worker it wraps (through :class:`Layer`'s ``inner``),
    outermost first.

    Use it to find a layer and read its ``statistics()``::

        breakers = next(w for w in iter_layers(pipeline.worker)
                        if isinstance(w, CircuitBreakerLayer))
    """
    current: ModelWorker | None = worker
    while current is not None:
        yield current
        current = current.inner if isinstance(current, Layer) else None


def provider_name(worker: object) -> str:
    """The provider's label for ``worker``, the same in metrics, logs and layer keys: its
    ``name`` when it is a non-empty string, else its class name without ``Worker``,
    lower-cased (``EchoWorker`` → ``echo``), reduced to characters safe in a label."""
    name = getattr(worker, "name", None)
    if not (isinstance(name, str) and name):
        name = type(worker).__name__.removesuffix("Worker").lower() or "worker"
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", name)[:64]


def model_names(components: Iterable[object]) -> tuple[str, ...]:
    """Every model the catalogs among ``components`` serve, in order, once each."""
    names = (n for c in components if isinstance(c, ModelCatalog) for n in c.model_names())
    return tuple(dict.fromkeys(names))
