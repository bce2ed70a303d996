"""The configuration classes. Every option has a default; every value is range-checked.

Each class documents its options in an "Attributes:" section of its docstring: the loader's
errors, the JSON Schema and ``docs/configuration.md`` all take their descriptions from there.
Options that may change while running carry ``metadata={"reloadable": True}``
(see :meth:`trio_orchestrator.Pipeline.reload`).
"""

from __future__ import annotations

import attrs

from ..catalogue.config import CatalogueConfig
from ..distributed.config import DistributedConfig
from ..observability.config import ObservabilityConfig
from ..resilience.config import PriorityConfig, ResilienceConfig
from ..routing.registry import RoutingConfig
from ..storage.config import StorageConfig
from ..validators import Range, non_negative_time, positive_int, positive_time
from ..workers.config import ProvidersConfig
from .service import ServiceConfig

__all__ = [
    "Config",
    "PipelineConfig",
    "PriorityConfig",
    "Range",
    "non_negative_time",
    "positive_int",
    "positive_time",
]


@attrs.frozen
class PipelineConfig:
    """The pipeline's shape and limits.

    Attributes:
        rag_capacity: buffer of the retrieval stage's input channel (the entry).
        assemble_capacity: buffer of the prompt-assembly stage's input channel.
        inference_capacity: buffer of the inference stage's input channel.
        post_capacity: buffer of the post-processing stage's input channel.
        stream_capacity: buffer of the streaming stage's input channel.
        inference_concurrency: requests in inference at once (a ``trio.CapacityLimiter``).
        stream_buffer: events buffered per streaming caller before the worker waits.
        request_timeout: seconds a request may take when it names no deadline or timeout.
        grace_period: seconds shutdown waits for in-flight requests before cancelling them.
        dead_letter_capacity: entries the dead-letter ring buffer keeps (oldest dropped).
        priority: priority admission to inference when it is saturated.
    """

    rag_capacity: int = attrs.field(default=512, validator=positive_int)
    assemble_capacity: int = attrs.field(default=512, validator=positive_int)
    inference_capacity: int = attrs.field(default=1024, validator=positive_int)
    post_capacity: int = attrs.field(default=512, validator=positive_int)
    stream_capacity: int = attrs.field(default=256, validator=positive_int)
    inference_concurrency: int = attrs.field(
        default=256, validator=positive_int, metadata={"reloadable": True}
    )
    stream_buffer: int = attrs.field(
        default=64, validator=positive_int, metadata={"reloadable": True}
    )
    request_timeout: float = attrs.field(
        default=300.0, validator=positive_time, metadata={"reloadable": True}
    )
    grace_period: float = attrs.field(
        default=10.0, validator=non_negative_time, metadata={"reloadable": True}
    )
    dead_letter_capacity: int = attrs.field(default=1000, validator=positive_int)
    priority: PriorityConfig = attrs.field(factory=PriorityConfig)


@attrs.frozen
class Config:
    """The whole configuration; every section is optional.

    Attributes:
        pipeline: stage capacities, concurrency, timeouts and shutdown.
        providers: the model providers (OpenAI-compatible, Anthropic, echo); none means the
            built-in echo worker (``[service.echo]``), which needs no key (reloadable: API
            keys; other changes are refused and need a restart).
        resilience: rate limits, circuit breakers and retries around the provider
            (reloadable: thresholds, limits and policies; not switching a layer on or off).
        routing: the model registry, routing strategy, fallbacks and budgets (reloadable:
            weights, prices, strategy, aliases, budgets; not the set of deployments).
        service: the HTTP service: address, API keys, body limit, CORS, models.
        observability: metrics, logs and traces.
        distributed: state shared with other processes through Redis (off by default).
        catalogue: model facts (context windows, capabilities, prices) over the bundled
            catalogue; read at start (a change needs a restart).
        storage: where virtual keys and spend are kept (SQLite; off unless a ``path`` or
            ``backend`` is set); read at start.
    """

    pipeline: PipelineConfig = attrs.field(factory=PipelineConfig)
    providers: ProvidersConfig | None = attrs.field(default=None, metadata={"reloadable": True})
    resilience: ResilienceConfig = attrs.field(
        factory=ResilienceConfig, metadata={"reloadable": True}
    )
    routing: RoutingConfig = attrs.field(factory=RoutingConfig, metadata={"reloadable": True})
    service: ServiceConfig = attrs.field(factory=ServiceConfig)
    observability: ObservabilityConfig = attrs.field(factory=ObservabilityConfig)
    distributed: DistributedConfig = attrs.field(factory=DistributedConfig)
    catalogue: CatalogueConfig = attrs.field(factory=CatalogueConfig)
    storage: StorageConfig = attrs.field(factory=StorageConfig)
