"""The gemini and vertex kinds: the generateContent translation, the worker against the fake's
Google wire format over real HTTP, Vertex AI's service-account tokens, and the served path."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from service_helpers import running_service

from trio_orchestrator.config import Config, load_config
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.errors import (
    AuthenticationError,
    ConfigError,
    ContentFiltered,
    ContextLengthExceeded,
    ProviderConnectionError,
    RateLimited,
    ServerError,
    UnsupportedParameter,
)
from trio_orchestrator.testing.fake_gemini import GoogleAuth, service_account_file
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider, open_fake_provider
from trio_orchestrator.types import GenerationParams, Message, PromptRequest, Tool, ToolCall
from trio_orchestrator.workers import (
    KeyPool,
    LoadBalancedWorker,
    ProviderConfig,
    ProvidersConfig,
    build_worker,
    collect,
)
from trio_orchestrator.workers.factory import worker_for
from trio_orchestrator.workers.gemini import GeminiWorker, gemini_error
from trio_orchestrator.workers.gemini_request import generate_body
from trio_orchestrator.workers.vertex import vertex_models_path

FIXTURES = Path(__file__).parent / "conformance" / "fixtures"
MODEL = "gemini-2.5-flash"
WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def recorded(name: str) -> Any:
    """A recorded answer from ``tests/conformance/fixtures/``."""
    return json.loads((FIXTURES / name).read_text())


def request(*messages: Message, **params: Any) -> PromptRequest:
    """A chat request for the Gemini model."""
    extra = params.pop("extra", {})
    return PromptRequest(messages=messages, params=GenerationParams(MODEL, extra=extra, **params))


HI = Message("user", "Hi")


# ------------------------------------------------------------------ translation


def test_system_turns_and_tool_results_take_googles_shape() -> None:
    """System text is systemInstruction, assistant turns are model turns with functionCall
    parts, and a tool result is a functionResponse named by the call its id points at."""
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    body = generate_body(
        request(
            Message("system", "Be brief."),
            Message("user", "Weather?"),
            Message("assistant", "", tool_calls=(call,)),
            Message("tool", '{"temp": 18}', tool_call_id="call_1"),
            Message("tool", "sunny", tool_call_id="call_1"),
        )
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    paris = {"city": "Paris"}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": paris}}]},
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}},
            ],
        },
    ]  # fmt: skip


def test_a_tool_result_for_an_unknown_call_is_refused() -> None:
    """A tool message whose id names no earlier call cannot be matched to a function."""
    with pytest.raises(UnsupportedParameter) as caught:
        generate_body(request(HI, Message("tool", "x", tool_call_id="nope")))
    assert caught.value.param == "messages[1].tool_call_id"


def test_a_data_url_image_is_inline_data_and_a_link_is_refused() -> None:
    """A base64 data: URL becomes inlineData; an http(s) link is a 400 (no fetching)."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    text = {"type": "text", "text": "What is this?"}
    body = generate_body(request(Message("user", "What is this?", parts=(text, image))))
    inline = {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}
    assert body["contents"][0]["parts"] == [{"text": "What is this?"}, inline]
    link = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(UnsupportedParameter, match="data:"):
        generate_body(request(Message("user", "", parts=(link,))))


def test_schemas_beyond_the_openapi_subset_go_as_json_schema() -> None:
    """Parameters within Gemini's Schema subset go as `parameters`; $defs/$ref or
    additionalProperties go whole as `parametersJsonSchema`; a non-object schema is refused."""
    refs = {
        "type": "object",
        "properties": {"where": {"$ref": "#/$defs/place"}},
        "$defs": {"place": {"type": "string"}},
        "additionalProperties": False,
    }
    body = generate_body(request(HI, tools=(WEATHER, Tool("locate", "", refs))))
    simple, rich = body["tools"][0]["functionDeclarations"]
    assert simple["parameters"] == WEATHER.parameters
    assert rich["parametersJsonSchema"] == refs
    assert "parameters" not in rich
    with pytest.raises(UnsupportedParameter, match="object schema"):
        generate_body(request(HI, tools=(Tool("bad", "", {"type": "string"}),)))


def test_tool_choice_is_the_function_calling_config() -> None:
    """auto/none/required are AUTO/NONE/ANY; a named function is ANY limited to it."""
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    for choice, mode in modes.items():
        body = generate_body(request(HI, tools=(WEATHER,), tool_choice=choice))
        assert body["toolConfig"] == {"functionCallingConfig": {"mode": mode}}
    named = {"type": "function", "function": {"name": "get_weather"}}
    body = generate_body(request(HI, tools=(WEATHER,), tool_choice=named))
    config = {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_structured_output_is_the_response_mime_type_and_schema() -> None:
    """json_schema sets responseMimeType and responseSchema (or responseJsonSchema beyond the
    subset); json_object sets the MIME type alone."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    config = generate_body(request(HI, extra={"response_format": fmt}))["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseSchema": schema}
    strict = {**schema, "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": strict}}
    config = generate_body(request(HI, extra={"response_format": fmt}))["generationConfig"]
    assert config["responseJsonSchema"] == strict
    config = generate_body(request(HI, extra={"response_format": {"type": "json_object"}}))
    assert config["generationConfig"] == {"responseMimeType": "application/json"}


def test_sampling_members_are_the_generation_config() -> None:
    """temperature, top_p, max_tokens, stop, seed, penalties and reasoning_effort take their
    generationConfig names."""
    extra = {"presence_penalty": 0.5, "frequency_penalty": 0.25, "reasoning_effort": "low"}
    body = generate_body(
        request(HI, temperature=1.5, top_p=0.9, max_tokens=64, stop=("END",), seed=7, extra=extra)
    )
    assert body["generationConfig"] == {
        "temperature": 1.5,
        "topP": 0.9,
        "maxOutputTokens": 64,
        "stopSequences": ["END"],
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": 0.25,
        "thinkingConfig": {"thinkingBudget": 1024},
    }


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"stop": ("a", "b", "c", "d", "e", "f")}, "stop"),
        ({"extra": {"logprobs": True}}, "logprobs"),
        ({"extra": {"user": "u-1"}}, "user"),
        ({"extra": {"n": 2}}, "n"),
        ({"extra": {"parallel_tool_calls": False}}, "parallel_tool_calls"),
        ({"extra": {"top_logprobs": 3}}, "top_logprobs"),
        ({"extra": {"something_else": 1}}, "something_else"),
    ],
)
def test_what_gemini_cannot_carry_is_refused_by_name(params: dict[str, Any], param: str) -> None:
    """Each member Gemini has no equivalent for is a 400 naming it, never dropped."""
    with pytest.raises(UnsupportedParameter) as caught:
        generate_body(request(HI, **params))
    assert caught.value.param == param


def test_googles_error_bodies_are_typed() -> None:
    """RESOURCE_EXHAUSTED with RetryInfo is rate limited with its delay; API_KEY_INVALID (a
    400) is an authentication error; an over-long prompt is a context-length error."""
    limited = gemini_error(recorded("gemini_error_429.json"), provider="g", http_status=429)
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 28.0
    invalid = recorded("gemini_error_api_key_invalid.json")
    assert isinstance(gemini_error(invalid, provider="g", http_status=400), AuthenticationError)
    message = (
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    )
    body = {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    assert isinstance(gemini_error(body, provider="g", http_status=400), ContextLengthExceeded)
    assert isinstance(gemini_error({"error": {"status": "INTERNAL"}}, provider="g"), ServerError)


# ------------------------------------------------------------ worker over HTTP


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with open_fake_provider(Behaviour(text="Hello from Gemini")) as fake:
        yield fake


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def gemini(
    fake: FakeProvider, client: httpx.AsyncClient, *keys: str, stream: bool = True
) -> GeminiWorker:
    """A gemini worker pointed at the fake."""
    pool = KeyPool([Secret(k) for k in keys or ("key-a",)], "g")
    return GeminiWorker(client, fake.base_url, pool, "g", stream=stream)


@pytest.mark.parametrize("stream", [True, False])
async def test_text_usage_and_the_key_reach_the_fake(
    fake: FakeProvider, client: httpx.AsyncClient, stream: bool
) -> None:
    """The answer's text, usage and finish come back, the call went to the model's
    (stream)GenerateContent path with the key in x-goog-api-key."""
    completion = await collect(gemini(fake, client, stream=stream), request(HI))
    assert (completion.text, completion.finish_reason) == ("Hello from Gemini", "stop")
    assert completion.usage is not None
    assert completion.usage.output_tokens == 3
    sent = fake.requests[-1]
    method = "streamGenerateContent" if stream else "generateContent"
    assert sent.path == f"/v1beta/models/{MODEL}:{method}"
    assert sent.headers["x-goog-api-key"] == "key-a"


async def test_cached_and_thought_tokens_are_counted_as_openai_counts_them(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """cachedContentTokenCount is cached input, thoughtsTokenCount is reasoning within the
    output, and a thought part is reasoning_content, not text (a recorded answer)."""
    fake.script(Behaviour(body=recorded("gemini_generate_content_thinking.json")))
    completion = await collect(gemini(fake, client, stream=False), request(HI))
    assert completion.text == "The capital of France is Paris."
    usage = completion.usage
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens) == (2006, 1920)
    assert (usage.output_tokens, usage.reasoning_tokens) == (208, 200)
    assert completion.passthrough is not None
    assert "Weighing the options" in completion.passthrough.message["reasoning_content"]


async def test_streamed_parallel_calls_get_stable_ids(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """Two whole functionCall parts (no ids) are two tool calls with invented ids, the same
    each time the same answer comes, and finish tool_calls (a recorded stream)."""
    events = tuple(recorded("gemini_stream_function_call.json"))
    fake.script(Behaviour(events=events), Behaviour(events=events))
    first = await collect(gemini(fake, client), request(HI, tools=(WEATHER,)))
    again = await collect(gemini(fake, client), request(HI, tools=(WEATHER,)))
    assert first.finish_reason == "tool_calls"
    assert [json.loads(c.arguments) for c in first.tool_calls] == [
        {"city": "Paris"},
        {"city": "London"},
    ]
    ids = [c.id for c in first.tool_calls]
    assert len(set(ids)) == 2
    assert ids == [c.id for c in again.tool_calls]


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("SAFETY", "content_filter"), ("MAX_TOKENS", "length"), ("RECITATION", "content_filter")],
)
async def test_finish_reasons_are_in_openais_words(
    fake: FakeProvider, client: httpx.AsyncClient, reason: str, finish: str
) -> None:
    """Gemini's finish reasons come back as OpenAI's."""
    fake.script(Behaviour(finish_reason=reason))
    assert (await collect(gemini(fake, client), request(HI))).finish_reason == finish


async def test_a_blocked_prompt_is_content_filtered(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """An answer with no candidates and a promptFeedback.blockReason is ContentFiltered."""
    fake.script(Behaviour(body={"promptFeedback": {"blockReason": "SAFETY"}}))
    with pytest.raises(ContentFiltered, match="SAFETY"):
        await collect(gemini(fake, client, stream=False), request(HI))


async def test_a_stream_without_its_finish_is_a_connection_error(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """A stream that ends with no finishReason was cut: retryable, not an answer."""
    fake.script(Behaviour(omit_done=True))
    with pytest.raises(ProviderConnectionError, match="finishReason"):
        await collect(gemini(fake, client), request(HI))


async def test_an_error_mid_stream_is_typed(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    """Google's error object as a stream chunk is a typed error (INTERNAL: server error)."""
    fake.script(Behaviour(tokens=5, error_after=2))
    with pytest.raises(ServerError, match="mid-stream failure"):
        await collect(gemini(fake, client), request(HI))


async def test_a_429_waits_its_retry_info_and_a_bad_key_is_skipped(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """RESOURCE_EXHAUSTED's retryDelay is the wait; API_KEY_INVALID disables that key and the
    pool's next key answers."""
    fake.script(Behaviour(status=429, retry_after=3))
    with pytest.raises(RateLimited) as caught:
        await collect(gemini(fake, client), request(HI))
    assert caught.value.retry_after == 3.0
    fake.script(
        Behaviour(status=400, error_type="API_KEY_INVALID", error_message="API key not valid.")
    )
    completion = await collect(gemini(fake, client, "bad", "good"), request(HI))
    assert completion.text == "Hello from Gemini"
    assert [r.headers["x-goog-api-key"] for r in fake.requests[-2:]] == ["bad", "good"]


async def test_embeddings_are_one_batch_call(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    """An embedding request is one batchEmbedContents call, one vector per input, with
    dimensions as outputDimensionality."""
    embed = PromptRequest(
        embed=("one", "two"),
        params=GenerationParams("text-embedding-004", extra={"dimensions": 4}),
    )
    completion = await collect(gemini(fake, client), embed)
    assert [len(v) for v in completion.embeddings] == [4, 4]
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert sent.body["requests"][0]["outputDimensionality"] == 4
    assert sent.body["requests"][1]["content"] == {"parts": [{"text": "two"}]}


# ------------------------------------------------------------------ Vertex AI


def vertex_provider(fake: FakeProvider, **options: Any) -> ProviderConfig:
    """A vertex provider whose throwaway service account the fake trusts."""
    key = service_account_file(fake.google, tempfile.mkdtemp(), fake.base_url + "/token")
    return ProviderConfig("vertex", "v", fake.base_url, credentials_file=key, **options)


async def test_vertex_exchanges_one_token_and_calls_the_project_path(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """The signed assertion is exchanged once (the fake checks its signature); calls carry
    the token as a bearer to the project/location path of the key file's project."""
    worker = worker_for(vertex_provider(fake, location="europe-west4"), client)
    for _ in range(3):
        assert (await collect(worker, request(HI))).text == "Hello from Gemini"
    assert fake.google.exchanges == 1
    calls = [r for r in fake.requests if r.path != "/token"]
    prefix = "/v1/projects/fake-project/locations/europe-west4/publishers/google/models/"
    assert calls[-1].path == prefix + f"{MODEL}:streamGenerateContent"
    assert fake.google.valid(calls[-1].headers["authorization"])


async def test_a_rejected_vertex_token_is_exchanged_again(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """A 401 for a revoked token fails that call and the next call gets a new token."""
    worker = worker_for(vertex_provider(fake, project="other"), client)
    await collect(worker, request(HI))
    fake.google.revoke_tokens()
    with pytest.raises(AuthenticationError):
        await collect(worker, request(HI))
    assert (await collect(worker, request(HI))).text == "Hello from Gemini"
    assert fake.google.exchanges == 2
    assert "/projects/other/" in fake.requests[-1].path


async def test_vertex_embeddings_are_one_predict_call(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """On Vertex AI an embedding request is one :predict call (instances, with dimensions as
    parameters.outputDimensionality); its token counts are the usage."""
    worker = worker_for(vertex_provider(fake), client)
    embed = PromptRequest(
        embed=("one two", "three"),
        params=GenerationParams("text-embedding-005", extra={"dimensions": 4}),
    )
    completion = await collect(worker, embed)
    assert [len(v) for v in completion.embeddings] == [4, 4]
    assert completion.usage is not None
    assert completion.usage.input_tokens == 3
    sent = fake.requests[-1]
    assert sent.path.endswith("/publishers/google/models/text-embedding-005:predict")
    assert sent.body == {
        "instances": [{"content": "one two"}, {"content": "three"}],
        "parameters": {"outputDimensionality": 4},
    }


async def test_an_untrusted_service_account_is_refused_at_the_exchange(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """A key the fake does not trust (its signature cannot be checked) gets no token."""
    key = service_account_file(GoogleAuth(), tempfile.mkdtemp(), fake.base_url + "/token")
    worker = worker_for(ProviderConfig("vertex", "v", fake.base_url, credentials_file=key), client)
    with pytest.raises(AuthenticationError, match="invalid_grant"):
        await collect(worker, request(HI))
    assert fake.google.exchanges == 0


def test_vertex_settings_are_for_vertex_and_need_a_key_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """project/location/credentials_file are refused on other kinds; a vertex provider with
    no key file (nor GOOGLE_APPLICATION_CREDENTIALS) is a ConfigError."""
    with pytest.raises(ValueError, match="kind 'vertex'"):
        ProviderConfig("gemini", project="p")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with pytest.raises(ConfigError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        worker_for(ProviderConfig("vertex", "v"), httpx.AsyncClient())


# ------------------------------------------------------------------ served path


async def test_embeddings_through_the_service_from_a_gemini_upstream(fake: FakeProvider) -> None:
    """POST /v1/embeddings through the served gateway reaches batchEmbedContents and answers
    in OpenAI's shape (base64 when asked)."""
    provider = ProviderConfig("gemini", "g", fake.base_url, api_keys=["key-a"])
    config = Config(providers=ProvidersConfig([provider]), service=ServiceConfig(port=0))
    async with running_service(config) as url, httpx.AsyncClient() as http:
        body = {"model": "text-embedding-004", "input": ["a", "b"]}
        answer = (await http.post(url + "/v1/embeddings", json=body)).json()
        assert [item["index"] for item in answer["data"]] == [0, 1]
        assert len(answer["data"][0]["embedding"]) == 8
        body["encoding_format"] = "base64"
        answer = (await http.post(url + "/v1/embeddings", json=body)).json()
        assert isinstance(answer["data"][0]["embedding"], str)
    assert fake.requests[-1].path.endswith(":batchEmbedContents")


async def test_a_refused_member_is_a_400_through_the_service(fake: FakeProvider) -> None:
    """A member Gemini cannot carry is a 400 naming it at the client, and no call is made."""
    provider = ProviderConfig("gemini", "g", fake.base_url, api_keys=["key-a"])
    config = Config(providers=ProvidersConfig([provider]), service=ServiceConfig(port=0))
    async with running_service(config) as url, httpx.AsyncClient() as http:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "logprobs": True}
        response = await http.post(url + "/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "logprobs" in response.text
    assert fake.requests == []


def test_the_example_configuration_builds_both_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/gemini_provider.toml loads, and with a key and a key file in the environment
    builds a gemini and a vertex worker (the vertex one on its location's host)."""
    key = service_account_file(GoogleAuth(), tempfile.mkdtemp(), "http://127.0.0.1:9/token")
    monkeypatch.setenv("GEMINI_API_KEY", "key-a")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key)
    config = load_config(Path(__file__).parent.parent / "examples" / "gemini_provider.toml")
    assert config.providers is not None
    worker = build_worker(config.providers, httpx.AsyncClient())
    assert isinstance(worker, LoadBalancedWorker)
    gemini_api, vertex = (cast(GeminiWorker, w) for w in worker.workers)
    assert gemini_api.base_url == "https://generativelanguage.googleapis.com"
    assert vertex.base_url == "https://europe-west4-aiplatform.googleapis.com"
    assert vertex.models_path == vertex_models_path("fake-project", "europe-west4")


def test_vertex_without_google_auth_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """With google-auth missing, a vertex provider is a ConfigError naming the extra."""
    key = service_account_file(GoogleAuth(), tempfile.mkdtemp(), "http://127.0.0.1:9/token")
    monkeypatch.setitem(sys.modules, "google.oauth2", None)
    provider = ProviderConfig("vertex", "v", credentials_file=key)
    with pytest.raises(ConfigError, match=r"trio-orchestrator\[vertex\]"):
        worker_for(provider, httpx.AsyncClient())
