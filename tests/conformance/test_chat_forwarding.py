"""A property: any valid Chat Completions body reaches an OpenAI-compatible upstream exactly as
the client sent it, up to the documented rewrites (``stream``/``stream_options`` say how the
gateway reads its upstream; ``model`` would be an alias's resolution, none is configured
here). Driven over real HTTP through the served gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from .chat_strategies import chat_bodies
from .conftest import Gateway, single_provider, start_gateway


@pytest.fixture(scope="module")
def openai_gateway() -> Iterator[Gateway]:
    """The gateway in front of one OpenAI-compatible (fake) upstream."""
    running = start_gateway("openai", single_provider("openai"))
    try:
        yield running.gateway
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(openai_gateway: Gateway) -> Iterator[httpx.Client]:
    """An HTTP client for the gateway, with the client's key."""
    headers = {"authorization": "Bearer sk-client"}
    with httpx.Client(base_url=openai_gateway.url, headers=headers, timeout=30) as client:
        yield client


def expected(body: dict[str, Any], upstream_streams: bool) -> dict[str, Any]:
    """The client's body with the documented rewrites applied."""
    sent = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    if upstream_streams:
        sent |= {"stream": True, "stream_options": {"include_usage": True}}
    return sent


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=chat_bodies)
def test_any_valid_body_reaches_the_upstream_as_sent(
    openai_gateway: Gateway, client: httpx.Client, body: dict[str, Any]
) -> None:
    """The upstream receives the client's body, member for member, with only the rewrites."""
    openai_gateway.clear()
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    if body.get("stream") is True:
        assert response.text.rstrip().endswith("data: [DONE]")
    (received,) = openai_gateway.received()
    assert received.body == expected(body, upstream_streams="stream" in received.body)
