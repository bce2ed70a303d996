"""Azure OpenAI through the served gateway, with the official ``openai`` SDK in front: the
deployment URLs and ``api-version``, the v1 surface, ``api-key`` and Entra ID auth, the
model -> deployment mapping, embeddings, and Azure's content filter answers and errors
(recorded from Azure's documentation: ``fixtures/azure_*.json``, see its README).

The rest of the conformance suite runs against ``azure`` too (``UPSTREAM_KINDS``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import UPSTREAM_KEY, Gateway, running

FIXTURES = Path(__file__).parent / "fixtures"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]
DEPLOYMENTS = {"gpt-4o": "my-gpt4o-deploy", "text-embedding-3-small": "embed-deploy"}


def recorded(name: str) -> Any:
    """A recorded answer from ``fixtures/``."""
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def azure_sse() -> Iterator[Gateway]:
    """The gateway in front of an Azure resource with two deployments, streaming from it."""
    yield from running("azure", deployments=DEPLOYMENTS)


@pytest.fixture(scope="module")
def azure_json() -> Iterator[Gateway]:
    """The same, asking Azure for JSON answers."""
    yield from running("azure", deployments=DEPLOYMENTS, stream=False)


@pytest.fixture
def sse(azure_sse: Gateway) -> Iterator[Gateway]:
    """The streaming gateway, its upstream's record cleared."""
    azure_sse.clear()
    yield azure_sse
    azure_sse.close_clients()


@pytest.fixture
def json_gw(azure_json: Gateway) -> Iterator[Gateway]:
    """The JSON gateway, its upstream's record cleared."""
    azure_json.clear()
    yield azure_json
    azure_json.close_clients()


# ----------------------------------------------------------------- URLs and auth


def test_a_chat_goes_to_the_models_deployment_with_the_api_version(sse: Gateway) -> None:
    """A model with a deployment is posted to that deployment's URL, GA api-version, api-key."""
    answer = sse.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert answer.choices[0].message.content
    received = sse.last()
    assert received.path == "/openai/deployments/my-gpt4o-deploy/chat/completions"
    assert received.query == "api-version=2024-10-21"
    assert received.headers["api-key"] == UPSTREAM_KEY
    assert "authorization" not in received.headers
    assert received.body["messages"] == HELLO


def test_a_model_without_a_deployment_is_its_own_deployment_name(sse: Gateway) -> None:
    """A model not in ``deployments`` goes to the deployment of the same name."""
    sse.openai().chat.completions.create(model="fake-model", messages=HELLO)
    assert sse.last().path == "/openai/deployments/fake-model/chat/completions"


def test_embeddings_go_to_the_embedding_deployment(sse: Gateway) -> None:
    """``/v1/embeddings`` reaches ``/openai/deployments/{d}/embeddings`` and its vectors return."""
    answer = sse.openai().embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in answer.data] == [0, 1]
    received = sse.last()
    assert received.path == "/openai/deployments/embed-deploy/embeddings"
    assert received.query == "api-version=2024-10-21"
    assert received.body["input"] == ["a", "b"]


def test_the_v1_surface_names_the_deployment_as_model() -> None:
    """With ``api_version = "v1"`` the call goes to /openai/v1, the deployment in ``model``."""
    for gw in running("azure", api_version="v1", deployments=DEPLOYMENTS):
        answer = gw.openai().chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
        received = gw.last()
        assert (received.path, received.query) == ("/openai/v1/chat/completions", "")
        assert received.body["model"] == "my-gpt4o-deploy"
        gw.openai().embeddings.create(model="text-embedding-3-small", input="a")
        assert (gw.last().path, gw.last().body["model"]) == (
            "/openai/v1/embeddings",
            "embed-deploy",
        )


def test_an_entra_id_token_is_sent_as_a_bearer_token() -> None:
    """With ``azure_auth = "entra"`` the key is an access token in ``Authorization: Bearer``."""
    for gw in running("azure", azure_auth="entra", api_version="2025-04-01-preview"):
        gw.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
        received = gw.last()
        assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert "api-key" not in received.headers
        assert received.query == "api-version=2025-04-01-preview"


# ----------------------------------------------------------------- content filter


def test_a_filtered_completion_carries_azures_verdicts(json_gw: Gateway) -> None:
    """Azure's filtered answer reaches the SDK whole: finish_reason and both verdicts."""
    answer_body = recorded("azure_chat_content_filter.json")
    json_gw.script(Behaviour(body=answer_body))
    answer = json_gw.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    choice = answer.choices[0]
    assert choice.finish_reason == "content_filter"
    extra = answer.model_extra or {}
    assert extra["prompt_filter_results"] == answer_body["prompt_filter_results"]
    choice_extra = choice.model_extra or {}
    expected = answer_body["choices"][0]["content_filter_results"]
    assert choice_extra["content_filter_results"] == expected
    assert answer.usage is not None
    assert answer.usage.total_tokens == 51


def test_a_filtered_stream_ends_with_content_filter(sse: Gateway) -> None:
    """Azure's stream (a prompt verdict frame with no choices first) streams its text and
    ends with finish_reason content_filter; the verdicts travel on the chunks."""
    sse.script(Behaviour(events=tuple(recorded("azure_chat_stream_filtered.json"))))
    with sse.openai().chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True
    ) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Once upon a time"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "content_filter"
    extras = [c.model_extra or {} for c in chunks]
    assert any("prompt_filter_results" in e for e in extras)


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_the_filter_refused_is_a_400_content_filter(
    sse: Gateway, json_gw: Gateway, stream: bool
) -> None:
    """Azure's content filter 400 reaches the SDK as a 400 ``content_filter`` naming the
    category it filtered."""
    gw = sse if stream else json_gw
    gw.script(Behaviour(status=400, body=recorded("azure_error_content_filter.json")))
    with pytest.raises(openai.BadRequestError) as caught:
        gw.openai().chat.completions.create(model="gpt-4o", messages=HELLO, stream=stream)
    assert caught.value.code == "content_filter"
    assert "violence (medium)" in caught.value.message


def test_a_missing_deployment_is_a_404(sse: Gateway) -> None:
    """Azure's ``DeploymentNotFound`` reaches the SDK as NotFoundError."""
    sse.script(Behaviour(status=404))
    with pytest.raises(openai.NotFoundError) as caught:
        sse.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert "deployment" in caught.value.message


def test_a_429_waits_for_retry_after_ms() -> None:
    """Azure's 429 says its wait in ``retry-after-ms``: the client is told that wait."""
    for gw in running("azure", deployments=DEPLOYMENTS):
        gw.script(Behaviour(status=429, retry_after=30, headers={"retry-after-ms": "2500"}))
        with pytest.raises(openai.RateLimitError) as caught:
            gw.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
        assert caught.value.response.headers["retry-after"] == "3"
