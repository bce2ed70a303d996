"""The adaptive concurrency limit as the official ``openai`` SDK meets it through the served
gateway, the upstream over real HTTP: a call beyond the limit is refused at once with 503
``upstream_overloaded`` and a ``Retry-After`` the SDK honours, and its retry is answered;
the refusal does not count against the provider (the next call is answered)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from trio_orchestrator.resilience import AdaptiveConfig
from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import Gateway, running

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]
# One call at a time, no queue: a second call while one runs is shed at once.
ONE_AT_A_TIME = AdaptiveConfig(
    enabled=True, initial_limit=1, min_limit=1, max_limit=1, max_waiting=0
)


@pytest.fixture
def gw() -> Iterator[Gateway]:
    yield from running("openai", api_keys=[], adaptive=ONE_AT_A_TIME)


def _in_flight(gw: Gateway, slow: Behaviour) -> tuple[threading.Thread, list[Any]]:
    """Start a call the upstream answers slowly, in a thread; return once it is upstream."""
    gw.script(slow)
    answers: list[Any] = []
    client = gw.openai()

    def call() -> None:
        answers.append(client.chat.completions.create(model="m", messages=HELLO))

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 10
    while not gw.received():
        assert time.monotonic() < deadline, "the first call never reached the upstream"
        time.sleep(0.01)
    return thread, answers


def test_a_call_beyond_the_limit_is_shed_with_retry_after(gw: Gateway) -> None:
    thread, answers = _in_flight(gw, Behaviour(text="first", first_token_delay=1.0))
    with pytest.raises(openai.InternalServerError) as caught:
        gw.openai().chat.completions.create(model="m", messages=HELLO)
    thread.join(timeout=30)
    assert caught.value.status_code == 503
    assert caught.value.code == "upstream_overloaded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert len(gw.received()) == 1  # the shed call never reached the upstream
    assert answers[0].choices[0].message.content == "first"
    # No evidence against the provider: the next call is answered.
    gw.script(Behaviour(text="next"))
    answer = gw.openai().chat.completions.create(model="m", messages=HELLO)
    assert answer.choices[0].message.content == "next"


def test_the_sdk_retries_a_shed_call_after_retry_after(gw: Gateway) -> None:
    thread, _ = _in_flight(gw, Behaviour(text="first", first_token_delay=0.5))
    gw.script(Behaviour(text="retried"))
    statuses: list[int] = []
    seen = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    client = gw.openai(http_client=seen).with_options(max_retries=2)
    answer = client.chat.completions.create(model="m", messages=HELLO)
    thread.join(timeout=30)
    assert statuses == [503, 200]  # shed, then answered after its Retry-After
    assert answer.choices[0].message.content == "retried"
    assert len(gw.received()) == 2  # the first call, then the retry; the shed one never
