"""The configuration classes. Every option has a default; every value is range-checked."""

from __future__ import annotations

import math
from typing import Any

import attrs

from .service import ServiceConfig

__all__ = ["Config", "PipelineConfig", "non_negative_time", "positive_int", "positive_time"]


def positive_int(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a whole number of at least 1 (``bool`` is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a whole number ≥ 1, got {value!r}")


def positive_time(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: seconds > 0 (``math.inf`` for no limit); NaN rejected."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value <= 0
    ):
        raise ValueError(
            f"{attribute.name} must be a number of seconds > 0 (inf for no limit), got {value!r}"
        )


def non_negative_time(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: seconds ≥ 0; NaN rejected."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value < 0
    ):
        raise ValueError(f"{attribute.name} must be a number of seconds ≥ 0, got {value!r}")


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
    inference_concurrency: int = attrs.field(default=256, validator=positive_int)
    stream_buffer: int = attrs.field(default=64, validator=positive_int)
    request_timeout: float = attrs.field(default=300.0, validator=positive_time)
    grace_period: float = attrs.field(default=10.0, validator=non_negative_time)
    dead_letter_capacity: int = attrs.field(default=1000, validator=positive_int)


@attrs.frozen
class Config:
    """The whole configuration; every section is optional.

    Attributes:
        pipeline: stage capacities, concurrency, timeouts and shutdown.
        service: the HTTP service: address, API keys, body limit, CORS, models.
    """

    pipeline: PipelineConfig = attrs.field(factory=PipelineConfig)
    service: ServiceConfig = attrs.field(factory=ServiceConfig)
