"""The conformance harness itself: both official SDKs reach an upstream through the gateway."""

from __future__ import annotations

from trio_orchestrator.testing.fake_provider import Behaviour
from trio_orchestrator.workers.kinds import FEATURES

from .conftest import UPSTREAM_KEY, Gateway


def test_the_openai_sdk_gets_an_answer_from_either_upstream(gw: Gateway) -> None:
    """A chat completion through the gateway reaches the upstream and parses in the SDK."""
    gw.script(Behaviour(text="Hello there"))
    answer = gw.openai().chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.choices[0].message.content == "Hello there"
    received = gw.last()
    if gw.kind == "vertex":  # a service account's access token, exchanged at the fake
        assert received.headers["authorization"].startswith("Bearer ya29.")
        return
    headers = received.headers
    key = (
        headers.get("x-api-key")
        or headers.get("x-goog-api-key")
        or headers.get("api-key")
        or headers["authorization"]
    )
    assert UPSTREAM_KEY in key


def test_models_list_is_the_upstreams_own_where_its_kind_lists_them(gw: Gateway) -> None:
    """With no models configured, /v1/models asks the upstream at its own API root where the
    kind table says it lists its models (every preset, local servers among them); for a kind
    that does not, the list is empty."""
    listed = [m.id for m in gw.openai().models.list().data]
    if FEATURES[gw.upstream].lists_models:
        assert listed == ["fake-model"]
        assert gw.last().path == gw.api_root + "/models"
    else:
        assert listed == []
        assert gw.received() == []
