"""What the service's handlers share: the configuration, the worker, the open pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from starlette.requests import HTTPConnection

from ..config import Config
from ..pipeline import Pipeline
from ..workers import ModelWorker
from .errors import ApiError

__all__ = ["ServiceState", "service_of", "worker_models"]


def served_models(config: Config, worker: ModelWorker) -> tuple[str, ...]:
    """The model names clients may ask for; empty means any (the upstream decides).

    ``service.models`` when set; else every name the router resolves (models, groups,
    aliases); else the models the providers declare — a provider declaring none passes
    any name through; else the worker's own.
    """
    if config.service.models:
        return tuple(config.service.models)
    registry = getattr(worker, "registry", None)
    if registry is not None:
        return tuple(registry.names())
    if config.providers is not None:
        providers = config.providers.providers
        if not all(p.models for p in providers):
            return ()  # a provider listing no model serves any: the upstream decides
        return tuple(dict.fromkeys(m for p in providers for m in p.models))
    return worker_models(worker)


def worker_models(worker: ModelWorker) -> tuple[str, ...]:
    """The models a worker serves: its ``models`` attribute, else its ``model``, else echo."""
    models = getattr(worker, "models", None)
    if models:
        return tuple(str(m) for m in models)
    model = getattr(worker, "model", None)
    return (str(model),) if model else ("echo",)


if TYPE_CHECKING:
    from ..observability import Instrumentation
    from .guard import KeyRing


@attrs.define(eq=False)
class ServiceState:
    """The service's state, one per process.

    Attributes:
        config: the configuration in force.
        upstreams_ready: the readiness hook: false when every upstream is broken (for
            example, every circuit breaker open). Always true for the echo worker.
        worker: the worker, once the lifespan has opened it.
        pipeline: the pipeline, while the lifespan holds it open.
        models: the models served (``service.models``, else the worker's).
        draining: shutdown has begun; new requests are refused with 503.
        observed: the pipeline's metrics, traces and logs, while it is open.
        keyring: the accepted API keys (replaced in place by a reload).
    """

    config: Config
    upstreams_ready: Callable[[], bool] = lambda: True
    worker: ModelWorker | None = None
    pipeline: Pipeline | None = None
    models: tuple[str, ...] = ()
    draining: bool = False
    observed: Instrumentation | None = None
    keyring: KeyRing | None = attrs.field(default=None, kw_only=True)

    def open_pipeline(self) -> Pipeline:
        """The pipeline, if it admits requests.

        Raises:
            ApiError: 503 when the service is starting, draining or stopped.
        """
        pipeline = self.pipeline
        if pipeline is None or self.draining or pipeline.closing:
            message = "the service is shutting down (or not started); retry elsewhere"
            raise ApiError(503, message, "service_unavailable", "draining", retry_after=1)
        return pipeline

    def ready(self) -> bool:
        """True when the pipeline is open, not draining, some upstream works, and — with
        ``[distributed] rate_limit_policy = "fail_closed"`` — Redis answers."""
        return (
            self.pipeline is not None
            and not self.draining
            and not self.pipeline.closing
            and self.upstreams_ready()
            and not (self.redis_state() == "down" and self._fails_closed())
        )

    def redis_state(self) -> str | None:
        """``up`` or ``down`` with ``[distributed] redis_url`` set, else None."""
        redis = None if self.pipeline is None else self.pipeline.redis
        if redis is None:
            return None
        return "up" if redis.up else "down"

    def _fails_closed(self) -> bool:
        return self.config.distributed.rate_limit_policy == "fail_closed"


def service_of(connection: HTTPConnection | Any) -> ServiceState:
    """The service state of the application serving ``connection``."""
    state: ServiceState = connection.app.state.service
    return state
