"""The configuration classes. Every option has a default; every value is range-checked.

Each class documents its options in an "Attributes:" section of its docstring: the loader's
errors, the JSON Schema and ``docs/configuration.md`` all take their descriptions from there.
Options that may change while running carry ``metadata={"reloadable": True}``
(see :meth:`trio_orchestrator.Pipeline.reload`).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from ..distributed.config import DistributedConfig
from ..observability.config import ObservabilityConfig
from ..resilience.config import ResilienceConfig

__all__ = [
    "Config",
    "PipelineConfig",
    "Range",
    "non_negative_time",
    "positive_int",
    "positive_time",
]


@attrs.frozen
class Range:
    """An attrs validator for a number within bounds, readable by the schema and the docs.

    Attributes:
        expected: what a valid value is, in words (``"a whole number ≥ 1"``).
        integer: only whole numbers (``int``, never ``bool``) are accepted.
        minimum: the smallest value accepted, when there is one.
        exclusive_minimum: values must be greater than this, when set.
    """

    expected: str
    integer: bool = False
    minimum: float | None = None
    exclusive_minimum: float | None = None

    def accepts(self, value: object) -> bool:
        """Whether ``value`` is within the range (``bool`` is never a number here)."""
        if isinstance(value, bool):
            return False
        if self.integer:
            if not isinstance(value, int):
                return False
        elif not isinstance(value, int | float) or math.isnan(value):
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        return self.exclusive_minimum is None or value > self.exclusive_minimum

    def __call__(self, _instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not self.accepts(value):
            raise ValueError(f"{attribute.name} must be {self.expected}, got {value!r}")


positive_int = Range("a whole number ≥ 1", integer=True, minimum=1)
"""attrs validator: a whole number of at least 1 (``bool`` is not a number here)."""

positive_time = Range("a number of seconds > 0 (inf for no limit)", exclusive_minimum=0)
"""attrs validator: seconds > 0 (``math.inf`` for no limit); NaN rejected."""

non_negative_time = Range("a number of seconds ≥ 0", minimum=0)
"""attrs validator: seconds ≥ 0; NaN rejected."""


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


@attrs.frozen
class Config:
    """The whole configuration; every section is optional.

    Attributes:
        pipeline: stage capacities, concurrency, timeouts and shutdown.
        resilience: rate limits, circuit breakers and retries around the provider.
        observability: metrics, logs and traces.
        distributed: state shared with other processes through Redis (off by default).
    """

    pipeline: PipelineConfig = attrs.field(factory=PipelineConfig)
    resilience: ResilienceConfig = attrs.field(factory=ResilienceConfig)
    observability: ObservabilityConfig = attrs.field(factory=ObservabilityConfig)
    distributed: DistributedConfig = attrs.field(factory=DistributedConfig)
