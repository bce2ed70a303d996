"""Every response carries ``x-request-id``, which the official SDK exposes; where a pipeline
request answered, it is that request's id."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import Gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


def test_a_completion_exposes_its_request_id(gw: Gateway) -> None:
    """completion._request_id is the pipeline request's id (the completion id's suffix)."""
    gw.script(Behaviour(text="Hello"))
    with gw.openai() as client:
        completion = client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert completion._request_id is not None
    assert completion.id == "chatcmpl-" + completion._request_id


def test_a_stream_carries_its_request_id(gw: Gateway) -> None:
    """A streamed answer's headers carry the id its chunks are named after."""
    gw.script(Behaviour(text="Hello"))
    with (
        gw.openai() as client,
        client.chat.completions.with_streaming_response.create(
            model="fake-model",
            messages=MESSAGES,
            stream=True,
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert {chunk.id for chunk in chunks} == {"chatcmpl-" + request_id}


def test_an_error_carries_a_request_id(gw: Gateway) -> None:
    """An error answer carries an id too (the SDK's APIStatusError.request_id)."""
    gw.script(Behaviour(status=400))
    with gw.openai() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
    assert (caught.value.request_id or "").startswith("req_")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/models", None),
        ("GET", "/healthz", None),
        ("GET", "/v1/nothing-here", None),
        ("POST", "/v1/chat/completions", b"{not json"),
        ("POST", "/v1/prompt", {"input": "Hi", "model": "fake-model"}),
    ],
)
def test_every_response_has_a_request_id(gw: Gateway, method: str, path: str, body: object) -> None:
    """Other endpoints, refusals and errors carry x-request-id as well."""
    content = body if isinstance(body, bytes) else None
    payload = None if isinstance(body, bytes) else body
    response = httpx.request(method, gw.url + path, content=content, json=payload)
    assert response.headers["x-request-id"].startswith("req_")


def test_the_native_answer_names_its_request_id(gw: Gateway) -> None:
    """/v1/prompt's x-request-id is the request_id the client chose and the answer names."""
    body = {"input": "Hi", "model": "fake-model", "request_id": "mine-42"}
    response = httpx.post(gw.url + "/v1/prompt", json=body)
    assert response.headers["x-request-id"] == response.json()["request_id"] == "mine-42"
