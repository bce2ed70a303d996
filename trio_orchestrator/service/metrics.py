"""``GET /metrics``: the Prometheus exposition of the service's pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..observability.metrics import metrics_content_type
from ..observability.metrics import render_metrics as _render

if TYPE_CHECKING:
    from .state import ServiceState

__all__ = ["render_metrics"]


def render_metrics(state: ServiceState) -> tuple[bytes, str]:
    """Return the exposition body and its content type: the pipeline's requests, stages,
    latencies and tokens, and every resilience layer's statistics, read now."""
    observed = state.observed
    if observed is None or observed.registry is None:
        return b"", metrics_content_type()
    return _render(observed.registry), metrics_content_type()
