"""The observability configuration: documented defaults, and mistakes refused."""

from __future__ import annotations

from typing import Any

import pytest

from trio_orchestrator import Config
from trio_orchestrator.observability import (
    LoggingConfig,
    MetricsConfig,
    ModelPrice,
    ObservabilityConfig,
    TracingConfig,
)


def test_defaults_export_metrics_and_keep_prompts_and_traces_off() -> None:
    """By default metrics are on, prompts are never logged and tracing is off."""
    observability = Config().observability
    assert observability == ObservabilityConfig()
    assert observability.metrics.enabled
    assert not observability.logging.log_prompts
    assert not observability.tracing.enabled


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (MetricsConfig, {"latency_buckets": ()}, "latency_buckets"),
        (MetricsConfig, {"latency_buckets": (1.0, 0.5)}, "increasing"),
        (MetricsConfig, {"stage_buckets": (0.0, 1.0)}, "positive"),
        (MetricsConfig, {"first_token_buckets": (1.0, float("inf"))}, "finite"),
        (MetricsConfig, {"max_models": 0}, "max_models"),
        (MetricsConfig, {"provider": "user 42!"}, "provider"),
        (LoggingConfig, {"level": "VERBOSE"}, "level"),
        (TracingConfig, {"otlp_endpoint": "collector:4318"}, "otlp_endpoint"),
        (TracingConfig, {"sample_ratio": 1.5}, "sample_ratio"),
        (ModelPrice, {"input_per_million": -1.0}, "input_per_million"),
    ],
)
def test_bad_values_are_refused_with_the_key_name(
    cls: type[Any], kwargs: dict[str, Any], match: str
) -> None:
    """A bad value is refused, naming the key and what was expected."""
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_bucket_lists_become_tuples() -> None:
    """Buckets written as a TOML array are accepted and kept as a tuple."""
    assert MetricsConfig(latency_buckets=[0.1, 1.0]).latency_buckets == (0.1, 1.0)


def test_price_estimates_cost_per_million_tokens() -> None:
    """A price per million tokens gives the cost of a request's token counts."""
    price = ModelPrice(input_per_million=3.0, output_per_million=15.0)
    assert price.cost(1_000_000, 2_000_000) == pytest.approx(33.0)


def test_log_level_maps_to_logging_numbers() -> None:
    """The configured level name maps to the logging module's number."""
    assert LoggingConfig(level="WARNING").level_number == 30


def test_config_with_prices_stays_hashable() -> None:
    """A configuration with prices can still be hashed, and equal ones hash equal."""
    prices = {"gpt-test": ModelPrice(1.0, 2.0)}
    first = Config(observability=ObservabilityConfig(metrics=MetricsConfig(prices=prices)))
    second = Config(observability=ObservabilityConfig(metrics=MetricsConfig(prices=dict(prices))))
    assert first == second
    assert hash(first) == hash(second)
