"""The conformance harness itself: both official SDKs reach an upstream through the gateway."""

from __future__ import annotations

from trio_orchestrator.testing.fake_provider import Behaviour

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
