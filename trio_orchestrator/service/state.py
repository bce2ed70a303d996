"""What the service's handlers share: the configuration, the gateway, its pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from starlette.requests import HTTPConnection

from ..config import Config
from ..pipeline import Pipeline
from .errors import ApiError
from .stalls import SendWatch

__all__ = ["ServedModels", "ServiceState", "service_of"]


if TYPE_CHECKING:
    from ..gateway import Gateway
    from ..observability import Instrumentation
    from ..observability.metrics import OverheadTimes
    from .guard import KeyRing


@attrs.define(eq=False)
class ServiceState:
    """The service's state, one per process.

    Attributes:
        config: the configuration the service started with.
        gateway: the gateway, while the lifespan holds it open.
        pipeline: the gateway's pipeline, while the lifespan holds it open.
        models: the models served (``service.models``, else the gateway's).
        draining: shutdown has begun; new requests are refused with 503.
        observed: the pipeline's metrics, traces and logs, while it is open.
        keyring: the accepted API keys (replaced in place by a reload).
        overhead: the histogram of the gateway's own time per request, while the gateway
            is open with metrics and ``observability.gateway_overhead`` on.
        sends: the sends under way and the limits for clients that stop reading
            (reloaded in place).
    """

    config: Config
    gateway: Gateway | None = None
    pipeline: Pipeline | None = None
    models: tuple[str, ...] = ()
    draining: bool = False
    observed: Instrumentation | None = None
    keyring: KeyRing | None = attrs.field(default=None, kw_only=True)
    overhead: OverheadTimes | None = attrs.field(default=None, kw_only=True)
    sends: SendWatch = attrs.field(init=False)

    @sends.default
    def _sends(self) -> SendWatch:
        return SendWatch.from_config(self.config.service)

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

    def refresh_models(self) -> None:
        """Serve ``service.models``, else the gateway's models (as the configuration in force
        says them)."""
        served = () if self.gateway is None else self.gateway.models
        self.models = tuple(self.config.service.models) or served

    def unready(self) -> list[str]:
        """Why requests would not be served now; empty when they would (see
        :meth:`trio_orchestrator.Gateway.unready`)."""
        if self.draining:
            return ["the service is draining"]
        if self.gateway is None:
            return ["the service has not started"]
        return self.gateway.unready()

    def ready(self) -> bool:
        """True when requests would be served now."""
        return not self.unready()

    def redis_state(self) -> str | None:
        """``up`` or ``down`` with ``[distributed] redis_url`` set, else None."""
        redis = None if self.gateway is None else self.gateway.redis
        if redis is None:
            return None
        return "up" if redis.up else "down"


@attrs.define(eq=False)
class ServedModels:
    """A reload part: after ``[[providers]]`` or ``[routing]`` change, the models served
    follow (``/v1/models``, and which model names requests may use)."""

    state: ServiceState

    def reconfigure(self, _section: object, /) -> list[str]:
        """Recompute the models served; refuses nothing."""
        self.state.refresh_models()
        return []


def service_of(connection: HTTPConnection | Any) -> ServiceState:
    """The service state of the application serving ``connection``."""
    state: ServiceState = connection.app.state.service
    return state
