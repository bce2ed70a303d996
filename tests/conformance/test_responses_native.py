"""``POST /v1/responses`` forwarded natively (a provider with ``responses_api = true``),
driven by the official ``openai`` SDK: the upstream receives the client's body as sent, the
client gets the upstream's response object and events back verbatim, errors before the
first event keep their status, the pipeline counts the request with its usage, and routing
over a native and a translating provider serves the same request either way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.routing import ModelDeployment, RoutingConfig
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig

from .conftest import Gateway, single_provider, start_gateway

FIXTURES = Path(__file__).parent / "fixtures"
RESPONSE: dict[str, Any] = json.loads((FIXTURES / "openai_response_reasoning.json").read_text())
EVENTS: list[dict[str, Any]] = json.loads(
    (FIXTURES / "openai_response_stream_reasoning.json").read_text()
)


@pytest.fixture(scope="module")
def native_gateway() -> Iterator[Gateway]:
    """The gateway in front of one OpenAI-compatible provider with ``responses_api = true``."""
    make = single_provider("openai", responses_api=True, max_connections=16)
    running = start_gateway("openai", make)
    try:
        yield running.gateway
    finally:
        running.stop()


@pytest.fixture
def gw(native_gateway: Gateway) -> Iterator[Gateway]:
    """The native gateway, its upstream's record cleared for this test."""
    native_gateway.clear()
    yield native_gateway
    native_gateway.close_clients()


def sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """The ``(event name, data)`` pairs of a server-sent event stream, in order."""
    pairs = []
    for block in response.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            pairs.append((fields.get("event", "message"), json.loads(fields["data"])))
    return pairs


# ----------------------------------------------------------------- the request


def test_the_upstream_receives_the_clients_body_verbatim(gw: Gateway) -> None:
    """The body the SDK sent reaches {base_url}/responses unchanged: input items a chat
    translation cannot carry (a reasoning item), include, reasoning.summary, store and
    unknown members alike."""
    client = gw.openai()
    arguments: dict[str, Any] = {
        "model": "fake-model",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Capital of France?"}]},
            {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "gAAA"},
            {"role": "developer", "content": "Cite a source."},
        ],
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "low", "summary": "auto"},
        "store": False,
        "text": {"verbosity": "low"},
        "metadata": {"ticket": "42"},
    }
    unknown = {"top_k": 5, "vendor_options": {"priority": "high"}}
    client.responses.create(**arguments, extra_body=unknown)
    received = gw.last()
    assert received.path == "/v1/responses"
    assert received.body == arguments | unknown


def test_previous_response_id_is_forwarded_when_every_provider_is_native(gw: Gateway) -> None:
    """With only native providers, previous_response_id (state the upstream keeps) is
    forwarded rather than refused."""
    sent: dict[str, Any] = {"model": "fake-model", "previous_response_id": "resp_1"}
    sent["input"] = "And?"
    gw.openai().responses.create(**sent)
    assert gw.last().body == sent


# ----------------------------------------------------------------- the answer


def test_the_client_gets_the_upstreams_response_object_verbatim(gw: Gateway) -> None:
    """The upstream's response (its id, reasoning item, annotations, usage details) is the
    answer, byte for byte as JSON, and parses in the SDK's models."""
    gw.script(Behaviour(body=RESPONSE))
    client = gw.openai()
    raw = client.responses.with_raw_response.create(model="fake-model", input="Capital?")
    assert json.loads(raw.text) == RESPONSE
    response = raw.parse()
    assert response.id == RESPONSE["id"]
    assert response.output[0].type == "reasoning"
    assert response.output[0].summary[0].text.startswith("**Answering")
    assert response.output_text == "The capital of France is Paris."
    message = response.output[1]
    assert message.type == "message"
    assert message.content[0].type == "output_text"
    assert message.content[0].annotations[0].type == "url_citation"
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 832
    assert response.usage.input_tokens_details.cached_tokens == 64
    assert "stream" not in gw.last().body


def test_streaming_relays_the_upstreams_events_in_order(gw: Gateway) -> None:
    """Every upstream event reaches the client with its name and data unchanged (sequence
    numbers, reasoning summary deltas, annotation events, obfuscation), and the SDK parses
    the stream into typed events ending with the upstream's response."""
    gw.script(Behaviour(events=tuple(EVENTS)))
    body = {"model": "fake-model", "input": "Capital?", "stream": True}
    headers = {"authorization": "Bearer sk-client"}
    answer = httpx.post(gw.url + "/v1/responses", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200
    assert sse(answer) == [(event["type"], event) for event in EVENTS]
    assert gw.last().body == body
    gw.script(Behaviour(events=tuple(EVENTS)))
    events = list(gw.openai().responses.create(model="fake-model", input="Hi", stream=True))
    assert [e.type for e in events] == [e["type"] for e in EVENTS]
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.output[0].type == "reasoning"


def test_the_fakes_default_answer_streams_and_parses(gw: Gateway) -> None:
    """The fake upstream's own /v1/responses answer (no recording scripted) streams through
    the SDK's accumulating helper, which checks the events' order and indices."""
    gw.script(Behaviour(text="one two three"))
    with gw.openai().responses.stream(model="fake-model", input="Hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "one two three"
    assert gw.last().path == "/v1/responses"


@pytest.mark.parametrize("stream", [False, True])
def test_function_calls_come_back_from_a_native_upstream(gw: Gateway, stream: bool) -> None:
    """The upstream's function_call items reach the client as it sent them, streamed or not
    (the gateway folds them into tool-call events on the way, which must hold the grammar)."""
    arguments = '{"city": "Paris"}'
    gw.script(Behaviour(text="", tool_calls=(("get_weather", arguments),)))
    tool: Any = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    answer: Any = gw.openai().responses.create(
        model="fake-model", input="Weather?", tools=[tool], stream=stream
    )
    response = list(answer)[-1].response if stream else answer
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_0", "get_weather", arguments)
    ]
    assert calls[0].id == "fc_0"  # the upstream's item id: nothing rebuilt
    assert gw.last().path == "/v1/responses"
    assert gw.last().body["tools"] == [tool]


# ----------------------------------------------------------------- accounting


def test_the_pipeline_counts_the_request_with_its_usage(gw: Gateway) -> None:
    """A native response is a pipeline request: counted completed, its upstream usage in
    the token metrics, streamed or not."""
    before = httpx.get(gw.url + "/v1/stats").json()["pipeline"]
    gw.script(Behaviour(body=RESPONSE | {"model": "counted-native"}))
    gw.openai().responses.create(model="counted-native", input="Capital?")
    streamed = [dict(e) for e in EVENTS]
    streamed[-1] = streamed[-1] | {"response": RESPONSE | {"model": "counted-native"}}
    gw.script(Behaviour(events=tuple(streamed)))
    list(gw.openai().responses.create(model="counted-native", input="Again?", stream=True))
    after = httpx.get(gw.url + "/v1/stats").json()["pipeline"]
    assert after["completed"] - before["completed"] == 2
    metrics = httpx.get(gw.url + "/metrics").text
    tokens = {
        line.rsplit(" ", 1)[0].split('type="')[1].rstrip('"}'): float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("trio_orchestrator_tokens_total") and "counted-native" in line
    }
    assert tokens == {"input": 2 * 81, "output": 2 * 1035}


# ----------------------------------------------------------------- errors


def test_an_upstream_400_is_a_bad_request_error(gw: Gateway) -> None:
    """An upstream 400 is the SDK's BadRequestError, streamed or not, with the upstream's
    message."""
    client = gw.openai()
    for stream in (False, True):
        gw.script(Behaviour(status=400, error_message="Unsupported parameter: 'foo'"))
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="fake-model", input="Hi", stream=stream)
        assert "Unsupported parameter" in caught.value.message
        assert gw.last().path == "/v1/responses"


def test_a_failure_after_response_created_is_an_http_status(gw: Gateway) -> None:
    """An upstream stream that fails right after response.created (an ``error`` event) has
    sent no token: the client gets the error's HTTP status, not a 200."""
    error = {"type": "error", "sequence_number": 1, "code": "server_error"}
    error |= {"message": "The server had an error", "param": None}
    gw.script(Behaviour(events=(EVENTS[0], error)))
    with pytest.raises(openai.InternalServerError) as caught:
        gw.openai().responses.create(model="fake-model", input="Hi", stream=True)
    assert "The server had an error" in caught.value.message


def test_a_failure_mid_stream_ends_with_response_failed(gw: Gateway) -> None:
    """An upstream stream cut after its first tokens ends, for the client, with a
    response.failed event after the relayed ones, numbered in sequence."""
    gw.script(Behaviour(events=tuple(EVENTS[:12])))  # no terminal event: cut short
    events = list(gw.openai().responses.create(model="fake-model", input="Hi", stream=True))
    assert [e.type for e in events[:-1]] == [e["type"] for e in EVENTS[:12]]
    assert events[-1].type == "response.failed"
    assert events[-1].sequence_number == 12
    assert events[-1].response.id == RESPONSE["id"]
    assert events[-1].response.error is not None


def test_an_upstream_429_before_the_first_event_is_a_rate_limit_error(gw: Gateway) -> None:
    """An upstream 429 is the SDK's RateLimitError with its Retry-After (last in the
    module: the gateway then rests its key)."""
    gw.script(Behaviour(status=429, retry_after=3))
    with pytest.raises(openai.RateLimitError) as caught:
        gw.openai().responses.create(model="fake-model", input="Hi", stream=True)
    assert caught.value.response.headers.get("retry-after") is not None
    assert gw.last().path == "/v1/responses"


# ----------------------------------------------------------------- routing


def mixed(fake: FakeProvider) -> Config:
    """Routing over a native provider and a translating one, both serving "both-model"
    (and each one model of its own), in front of the same fake upstream."""
    url = fake.openai_base_url
    native = ProviderConfig(
        "openai", "native", url, api_keys=["sk-native"], responses_api=True, max_connections=16
    )
    chat = ProviderConfig("openai", "chat", url, api_keys=["sk-chat"], max_connections=16)
    deployments = [
        ModelDeployment("native-model@native", "native-model", "native"),
        ModelDeployment("chat-model@chat", "chat-model", "chat"),
        ModelDeployment("both-model@native", "both-model", "native"),
        ModelDeployment("both-model@chat", "both-model", "chat"),
    ]
    return Config(
        providers=ProvidersConfig([native, chat]),
        routing=RoutingConfig(deployments=deployments),
        service=ServiceConfig(port=0),
    )


@pytest.fixture(scope="module")
def mixed_gateway() -> Iterator[Gateway]:
    """The gateway routing over :func:`mixed`'s providers."""
    running = start_gateway("openai", mixed)
    try:
        yield running.gateway
    finally:
        running.stop()


@pytest.fixture
def mgw(mixed_gateway: Gateway) -> Iterator[Gateway]:
    """The mixed gateway, its upstream's record cleared for this test."""
    mixed_gateway.clear()
    yield mixed_gateway
    mixed_gateway.close_clients()


@pytest.mark.parametrize("stream", [False, True])
def test_a_native_and_a_translating_provider_serve_the_same_request(
    mgw: Gateway, stream: bool
) -> None:
    """The same request goes natively to the native provider's model and translated to
    Chat Completions for the other's; both answers parse."""
    client = mgw.openai()
    for model, path in (("native-model", "/v1/responses"), ("chat-model", "/v1/chat/completions")):
        mgw.script(Behaviour(text="Paris."))
        answer: Any = client.responses.create(model=model, input="Capital?", stream=stream)
        if stream:
            events = list(answer)
            assert events[-1].type == "response.completed"
            text = events[-1].response.output_text
        else:
            text = answer.output_text
        assert text == "Paris."
        assert mgw.last().path == path
    assert "input" in mgw.received()[0].body
    assert "messages" in mgw.received()[1].body


def test_a_fallback_crosses_between_native_and_translating(mgw: Gateway) -> None:
    """When the first provider of a model fails with a 503, the other answers the same
    request in its own format, whichever of the two came first."""
    client = mgw.openai()
    for _ in range(2):  # the router may pick either first; each gets one failure
        mgw.clear()
        mgw.script(Behaviour(status=503), Behaviour(text="Paris."))
        response = client.responses.create(model="both-model", input="Capital?")
        assert response.output_text == "Paris."
        paths = [r.path for r in mgw.received()]
        assert sorted(paths) == ["/v1/chat/completions", "/v1/responses"]


def test_a_mixed_configuration_still_refuses_stored_state(mgw: Gateway) -> None:
    """With a translating provider configured, previous_response_id stays a 400 naming it
    (a fallback could not honour it), and nothing is sent (a guard: as before the change)."""
    with pytest.raises(openai.BadRequestError) as caught:
        mgw.openai().responses.create(
            model="native-model", input="And?", previous_response_id="resp_1"
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "previous_response_id"
    assert mgw.received() == []
