"""A 429 rests the upstream key for the model it was for, through the served gateway, for
the kinds whose model is in the URL rather than the body (Gemini's
``models/{model}:generateContent``, Vertex AI's, Bedrock's ``/model/{modelId}/converse``):
the same key goes on serving the provider's other models."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import Gateway, running

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]

#: Two models each kind serves: a 429 for the first must not rest the key for the second.
MODELS = {
    "gemini": ("gemini-2.5-flash", "gemini-2.5-pro"),
    "bedrock": ("amazon.nova-lite-v1:0", "amazon.nova-pro-v1:0"),
}


@pytest.fixture(params=sorted(MODELS))
def one_key(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """A gateway of its own (a rest outlives the test) in front of a provider of each kind
    with one key."""
    yield from running(request.param)


@pytest.mark.parametrize("stream", [False, True])
def test_a_429_for_one_model_leaves_the_key_serving_another(one_key: Gateway, stream: bool) -> None:
    """After a 429 for model A (a 30 s Retry-After), model B is answered with the same key,
    and model A is refused by the gateway without calling the upstream again."""
    resting, other = MODELS[one_key.upstream]
    one_key.clear()
    one_key.script(Behaviour(status=429, retry_after=30))
    client = one_key.openai()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=resting, messages=HELLO, stream=stream)
    answer = client.chat.completions.create(model=other, messages=HELLO)
    assert answer.choices[0].message.content
    assert len(one_key.received()) == 2
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=resting, messages=HELLO)
    assert len(one_key.received()) == 2  # model A's rest holds: no third call
