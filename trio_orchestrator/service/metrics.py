"""``GET /metrics``: the Prometheus exposition.

:func:`render_metrics` is the seam for the observability package: until it provides the
pipeline's own metrics, this renders prometheus_client's default registry (process and
platform metrics).
"""

from __future__ import annotations

from ..pipeline import Pipeline

__all__ = ["render_metrics"]


def render_metrics(pipeline: Pipeline | None) -> tuple[bytes, str]:
    """Return the exposition body and its content type.

    Args:
        pipeline: the service's pipeline, when open (unused until the observability package
            plugs in).
    """
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
