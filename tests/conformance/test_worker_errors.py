"""The Gemini, Vertex AI, Bedrock and Azure workers' error paths through the served gateway
with the official ``openai`` SDK: answers of the wrong shape, prompts the upstream blocked,
guardrails, and Vertex AI key files that cannot be used, each reaching the client (or the
operator starting ``serve``) as its typed error."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest
import trio
from hypercorn.utils import LifespanFailureError

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.service import serve
from trio_orchestrator.testing.fake_gemini import GoogleAuth, service_account_file
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig
from trio_orchestrator.workers.vertex import vertex_base_url

from .conftest import ConfigFactory, Gateway, running, start_gateway

HELLO: Any = [{"role": "user", "content": "Hi"}]
COHERE = "cohere.embed-english-v3"


@pytest.fixture(scope="module")
def gemini_json() -> Iterator[Gateway]:
    """The gateway in front of Gemini, asked with generateContent (one JSON answer)."""
    yield from running("gemini", stream=False)


@pytest.fixture(scope="module")
def bedrock_json() -> Iterator[Gateway]:
    """The gateway in front of Bedrock, asked with Converse (one JSON answer)."""
    yield from running("bedrock", stream=False)


@pytest.fixture
def gem(gemini_json: Gateway) -> Iterator[Gateway]:
    """The Gemini gateway, its record and script cleared."""
    gemini_json.clear()
    yield gemini_json
    gemini_json.close_clients()


@pytest.fixture
def bed(bedrock_json: Gateway) -> Iterator[Gateway]:
    """The Bedrock gateway, its record and script cleared."""
    bedrock_json.clear()
    yield bedrock_json
    bedrock_json.close_clients()


def test_a_prompt_gemini_blocked_is_a_400_content_filter(gem: Gateway) -> None:
    """An answer with no candidates and promptFeedback.blockReason is the client's 400
    naming the reason (retrying will not help)."""
    gem.script(Behaviour(body={"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}))
    with pytest.raises(openai.BadRequestError) as caught:
        gem.openai().chat.completions.create(model="gemini-2.5-flash", messages=HELLO)
    assert caught.value.code == "content_filter"
    assert "PROHIBITED_CONTENT" in caught.value.message


def test_gemini_embeddings_short_of_a_vector_are_a_502(gem: Gateway) -> None:
    """batchEmbedContents answering one vector for two inputs is a malformed answer."""
    gem.script(Behaviour(body={"embeddings": [{"values": [0.1, 0.2]}]}))
    with pytest.raises(openai.APIStatusError) as caught:
        gem.openai().embeddings.create(
            model="gemini-embedding-001", input=["a", "b"], encoding_format="float"
        )
    assert caught.value.status_code == 502
    assert "one vector per input" in caught.value.message


@pytest.mark.parametrize(("status", "error"), [(418, openai.BadRequestError), (599, None)])
def test_a_google_error_of_an_unknown_status_is_typed_by_its_code(
    gem: Gateway, status: int, error: type[openai.APIStatusError] | None
) -> None:
    """An error whose status Google's table does not name (nor its HTTP code) is a client
    error below 500, else a server error (a 502 for the client)."""
    gem.script(Behaviour(status=status, error_type="A_STATUS_GOOGLE_ADDED_LATER"))
    with pytest.raises(openai.APIStatusError) as caught:
        gem.openai().chat.completions.create(model="gemini-2.5-flash", messages=HELLO)
    if error is not None:
        assert isinstance(caught.value, error)
    else:
        assert caught.value.status_code >= 500


def test_a_converse_answer_without_its_message_is_a_502(bed: Gateway) -> None:
    """A Converse answer with no output.message.content is a malformed answer."""
    bed.script(Behaviour(body={"output": {}, "stopReason": "end_turn"}))
    with pytest.raises(openai.APIStatusError) as caught:
        bed.openai().chat.completions.create(model="amazon.nova-lite-v1:0", messages=HELLO)
    assert caught.value.status_code == 502
    assert "output.message.content" in caught.value.message


def test_converse_reasoning_travels_beside_the_answer(bed: Gateway) -> None:
    """A Converse answer's reasoningContent block reaches the client as reasoning_content."""
    content = [
        {"reasoningContent": {"reasoningText": {"text": "Think first."}}},
        {"text": "Hello."},
    ]
    usage = {"inputTokens": 3, "outputTokens": 5, "totalTokens": 8}
    body = {"output": {"message": {"role": "assistant", "content": content}}, "usage": usage}
    bed.script(Behaviour(body=body | {"stopReason": "end_turn"}))
    answer = bed.openai().chat.completions.create(model="amazon.nova-lite-v1:0", messages=HELLO)
    message = answer.choices[0].message
    assert message.content == "Hello."
    assert (message.model_extra or {})["reasoning_content"] == "Think first."


def test_a_guardrail_refusal_is_a_400_content_filter(bed: Gateway) -> None:
    """A Bedrock ValidationException saying a guardrail blocked the input is content_filter."""
    bed.script(Behaviour(status=400, error_message="The guardrail blocked this input"))
    with pytest.raises(openai.BadRequestError) as caught:
        bed.openai().chat.completions.create(model="amazon.nova-lite-v1:0", messages=HELLO)
    assert caught.value.code == "content_filter"


def test_bedrock_embeddings_short_of_a_vector_are_a_502(bed: Gateway) -> None:
    """Cohere Embed answering no vector for two inputs is a malformed answer."""
    bed.script(Behaviour(body={"embeddings": [], "id": "x", "response_type": "floats"}))
    with pytest.raises(openai.APIStatusError) as caught:
        bed.openai().embeddings.create(model=COHERE, input=["a", "b"], encoding_format="float")
    assert caught.value.status_code == 502
    assert "one vector per input" in caught.value.message


def _vertex(key_file: str, **provider: Any) -> ConfigFactory:
    """A configuration factory: one Vertex AI provider with ``key_file``."""

    def make(fake: FakeProvider) -> Config:
        upstream = ProviderConfig(
            "vertex", "vx", fake.base_url, api_keys=[], credentials_file=key_file, **provider
        )
        return Config(providers=ProvidersConfig([upstream]), service=ServiceConfig(port=0))

    return make


def _serve_refuses(key_file: str, match: str, **provider: Any) -> None:
    """``serve`` with one Vertex AI provider using ``key_file`` fails to start, saying the
    ConfigError matching ``match`` (hypercorn reports a failed startup as its
    LifespanFailureError quoting it: what an operator starting it reads)."""
    upstream = ProviderConfig(
        "vertex", "vx", "http://127.0.0.1:9", api_keys=[], credentials_file=key_file, **provider
    )
    config = Config(providers=ProvidersConfig([upstream]), service=ServiceConfig(port=0))
    expected = pytest.RaisesGroup(
        pytest.RaisesExc(LifespanFailureError, match=match),
        allow_unwrapped=True,
        flatten_subgroups=True,
    )
    with expected:
        trio.run(partial(serve, config, shutdown_trigger=trio.sleep_forever))


def test_an_unreadable_vertex_key_file_stops_serve_naming_it() -> None:
    """A key file that is not a service-account key is a ConfigError naming the file."""
    bad = Path(tempfile.mkdtemp(prefix="vertex-")) / "key.json"
    bad.write_text(json.dumps({"type": "service_account"}))
    _serve_refuses(str(bad), "key.json.*cannot be used")


def test_a_vertex_key_file_without_a_project_needs_one_configured() -> None:
    """With neither ``project`` nor the key file's project_id, serve refuses to start."""
    folder = tempfile.mkdtemp(prefix="vertex-")
    path = Path(service_account_file(GoogleAuth(), folder, "http://127.0.0.1:9/token"))
    key = json.loads(path.read_text())
    del key["project_id"]
    path.write_text(json.dumps(key))
    _serve_refuses(str(path), "name the Google Cloud project")


def test_a_vertex_token_exchange_that_cannot_connect_is_a_typed_error() -> None:
    """A key file whose token_uri nobody answers fails the call as the upstream rejecting
    the gateway's credentials: a 502 telling the client to tell the operator, not a hang."""

    def make(fake: FakeProvider) -> Config:
        folder = tempfile.mkdtemp(prefix="vertex-")
        key = service_account_file(fake.google, folder, "http://127.0.0.1:9/token")
        return _vertex(key, project="p")(fake)

    started = start_gateway("vertex", make)
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            started.gateway.openai().chat.completions.create(
                model="gemini-2.5-flash", messages=HELLO
            )
        assert caught.value.status_code == 502
        assert "credentials" in caught.value.message
    finally:
        started.stop()


def test_vertex_global_location_has_no_regional_host() -> None:
    """``location = "global"`` is Vertex AI's global endpoint; others are regional."""
    assert vertex_base_url("global") == "https://aiplatform.googleapis.com"
    assert vertex_base_url("europe-west4") == "https://europe-west4-aiplatform.googleapis.com"


@pytest.fixture(scope="module")
def bedrock_sse() -> Iterator[Gateway]:
    """The gateway in front of Bedrock, asked with ConverseStream."""
    yield from running("bedrock", stream=True)


def _stream_events(*events: Any) -> Behaviour:
    """A ConverseStream answer of these recorded events (as boto3 yields them)."""
    usage = {"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}, "metrics": {}}
    return Behaviour(
        events=(
            {"messageStart": {"role": "assistant"}},
            *events,
            {"messageStop": {"stopReason": "end_turn"}},
            {"metadata": usage},
        )
    )


def test_streamed_converse_reasoning_reaches_the_client_beside_the_text(
    bedrock_sse: Gateway,
) -> None:
    """reasoningContent deltas in ConverseStream arrive as the chunks' reasoning_content."""
    bedrock_sse.clear()
    bedrock_sse.script(
        _stream_events(
            {
                "contentBlockDelta": {
                    "delta": {"reasoningContent": {"text": "Hm."}},
                    "contentBlockIndex": 0,
                }
            },
            {"contentBlockDelta": {"delta": {"text": "Hello."}, "contentBlockIndex": 1}},
        )
    )
    stream = bedrock_sse.openai().chat.completions.create(
        model="amazon.nova-lite-v1:0", messages=HELLO, stream=True
    )
    deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
    assert "".join(d.content or "" for d in deltas) == "Hello."
    assert "".join((d.model_extra or {}).get("reasoning_content", "") for d in deltas) == "Hm."


def test_a_tool_delta_no_tool_start_opened_is_a_502(bedrock_sse: Gateway) -> None:
    """A toolUse delta for a content block no toolUse start opened is a malformed stream:
    before any token, the client's 502."""
    bedrock_sse.clear()
    delta = {"delta": {"toolUse": {"input": "{}"}}, "contentBlockIndex": 0}
    bedrock_sse.script(_stream_events({"contentBlockDelta": delta}))
    with pytest.raises(openai.APIStatusError) as caught:
        list(
            bedrock_sse.openai().chat.completions.create(
                model="amazon.nova-lite-v1:0", messages=HELLO, stream=True
            )
        )
    assert caught.value.status_code == 502
    assert "no toolUse start opened" in caught.value.message
