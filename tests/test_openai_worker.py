"""The OpenAI-compatible worker: wire format, errors, timeouts, keys, cancellation."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_orchestrator.config import parse_config
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.errors import (
    AuthenticationError,
    BadRequest,
    ContextLengthExceeded,
    MalformedResponse,
    ModelNotFound,
    Overloaded,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from trio_orchestrator.events import Done, StreamEvent, TextDelta, ToolCallDelta, ToolCallStart
from trio_orchestrator.gateway import open_gateway
from trio_orchestrator.testing.fake_provider import Behaviour, open_fake_provider
from trio_orchestrator.types import GenerationParams, Message, PromptRequest, Tool, ToolCall
from trio_orchestrator.workers import KeyPool, OpenAIWorker, Timeouts, collect
from trio_orchestrator.workers.http import parse_retry_after
from trio_orchestrator.workers.openai import chat_body

Handler = Callable[[httpx.Request], httpx.Response]
KEY = "sk-test-0123456789abcdef"


def sse(*payloads: Any) -> bytes:
    return b"".join(
        b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n"
        for p in payloads
    )


def chunk(delta: Any = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"model": "m", "choices": [choice], **extra}


def worker(handler: Handler, **kwargs: Any) -> OpenAIWorker:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIWorker(client, "http://llm.test/v1", **kwargs)


def answering(body: bytes, status: int = 200, **headers: str) -> Handler:
    return lambda request: httpx.Response(status, content=body, headers=headers)


async def events_of(w: OpenAIWorker, request: PromptRequest) -> list[StreamEvent]:
    events: list[StreamEvent] = []

    async def emit(event: StreamEvent) -> None:
        events.append(event)

    await w.generate(request, emit)
    return events


REQUEST = PromptRequest(input="hi", params=GenerationParams(model="m"))


class Stalling(httpx.AsyncByteStream):
    """A response body that sends its chunks, then stalls (or sleeps before each)."""

    def __init__(self, chunks: list[bytes], delay: float = 0.0, stall: bool = True) -> None:
        self.chunks, self.delay, self.stall = chunks, delay, stall

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            await trio.sleep(self.delay)
            yield c
        if self.stall:
            await trio.sleep_forever()


def test_body_maps_the_generation_params() -> None:
    """stop, max_tokens, temperature, seed, tools and tool_choice reach the wire format."""
    params = GenerationParams(
        model="gpt",
        max_tokens=5,
        temperature=0.5,
        seed=7,
        stop=("END",),
        tools=(Tool("f", "does f", {"type": "object"}),),
        tool_choice="required",
    )
    body = chat_body(PromptRequest(input="q", params=params), stream=True)
    assert body["max_tokens"] == 5
    assert (body["temperature"], body["seed"], body["stop"]) == (0.5, 7, ["END"])
    assert body["tools"][0]["function"]["name"] == "f"
    assert body["tool_choice"] == "required"
    assert body["stream_options"] == {"include_usage": True}


def test_body_maps_tool_turns() -> None:
    """An assistant's tool calls and the tool's answer keep their ids."""
    chat = (
        Message("user", "q"),
        Message("assistant", "", tool_calls=(ToolCall("c1", "f", "{}"),)),
        Message("tool", "42", tool_call_id="c1"),
    )
    messages = chat_body(PromptRequest(messages=chat), stream=False)["messages"]
    assert messages[1]["tool_calls"][0]["id"] == "c1"
    assert messages[1]["content"] is None
    assert messages[2]["tool_call_id"] == "c1"


async def test_streams_text_then_usage_then_done() -> None:
    """Text deltas stream, the include_usage chunk becomes Usage, Done carries it all."""
    usage_chunk = {
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        usage_chunk,
        b"[DONE]",
    )
    events = await events_of(worker(answering(body)), REQUEST)
    assert events[:2] == [TextDelta("Hel"), TextDelta("lo")]
    done = events[-1]
    assert isinstance(done, Done)
    assert (done.text, done.finish_reason, done.model) == ("Hello", "stop", "m")
    assert done.usage is not None
    assert done.usage.total_tokens == 5


async def test_parallel_tool_calls_by_index() -> None:
    """Interleaved argument deltas of two tool calls are kept apart by index."""

    def start(i: int, name: str) -> dict[str, Any]:
        return {"index": i, "id": f"c{i}", "function": {"name": name, "arguments": ""}}

    def arg(i: int, text: str) -> dict[str, Any]:
        return {"index": i, "function": {"arguments": text}}

    body = sse(
        chunk({"tool_calls": [start(0, "f"), start(1, "g")]}),
        chunk({"tool_calls": [arg(0, '{"a"')]}),
        chunk({"tool_calls": [arg(1, '{"b": 2}')]}),
        chunk({"tool_calls": [arg(0, ": 1}")]}),
        chunk({}, "tool_calls"),
        b"[DONE]",
    )
    events = await events_of(worker(answering(body)), REQUEST)
    assert events[:2] == [ToolCallStart(0, "c0", "f"), ToolCallStart(1, "c1", "g")]
    assert ToolCallDelta(1, '{"b": 2}') in events
    done = events[-1]
    assert isinstance(done, Done)
    assert done.tool_calls == (ToolCall("c0", "f", '{"a": 1}'), ToolCall("c1", "g", '{"b": 2}'))


async def test_non_streaming_answer() -> None:
    """stream=False sends one request and emits the answer as events."""
    answer = {
        "model": "m",
        "choices": [{"message": {"content": "ok"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
    completion = await collect(
        worker(answering(json.dumps(answer).encode()), stream=False), REQUEST
    )
    assert (completion.text, completion.finish_reason) == ("ok", "length")


async def test_base_url_is_configurable() -> None:
    """Requests go to base_url + /chat/completions (vLLM, Ollama… by URL)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=sse(chunk({}, "stop"), b"[DONE]"))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    await collect(OpenAIWorker(client, "http://localhost:11434/v1"), REQUEST)
    assert seen == ["http://localhost:11434/v1/chat/completions"]


async def test_missing_done_after_finish_is_a_clean_end() -> None:
    """A stream that gave its finish_reason but no [DONE] still completes."""
    completion = await collect(worker(answering(sse(chunk({"content": "a"}, "stop")))), REQUEST)
    assert completion.text == "a"


async def test_cut_stream_is_a_connection_error() -> None:
    """A stream that ends with neither finish_reason nor [DONE] is ProviderConnectionError."""
    with pytest.raises(ProviderConnectionError, match="before the answer was complete"):
        await collect(worker(answering(sse(chunk({"content": "a"})))), REQUEST)


async def test_bad_json_is_malformed() -> None:
    """An event that is not JSON becomes MalformedResponse."""
    with pytest.raises(MalformedResponse):
        await collect(worker(answering(b'data: {"choices": [\n\n')), REQUEST)


async def test_error_object_mid_stream() -> None:
    """An error object in the stream becomes its typed error."""
    body = sse(chunk({"content": "a"}), {"error": {"type": "server_error", "message": "boom"}})
    with pytest.raises(ServerError, match="boom"):
        await collect(worker(answering(body)), REQUEST)


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (400, {"code": "context_length_exceeded", "message": "too long"}, ContextLengthExceeded),
        (
            400,
            {"message": "This model's maximum context length is 4096 tokens"},
            ContextLengthExceeded,
        ),
        (401, {"message": "bad key"}, AuthenticationError),
        (404, {"message": "no such model"}, ModelNotFound),
        (500, {"message": "oops"}, ServerError),
        (503, {"message": "busy"}, Overloaded),
    ],
)
async def test_status_maps_to_typed_error(
    status: int, error: dict[str, str], expected: type[Exception]
) -> None:
    """Each status and error body maps to the most specific error class."""
    body = json.dumps({"error": error}).encode()
    with pytest.raises(expected) as info:
        await collect(worker(answering(body, status)), REQUEST)
    assert type(info.value) is expected


async def test_rate_limited_carries_retry_after() -> None:
    """A 429's Retry-After seconds become retry_after."""
    body = json.dumps({"error": {"message": "slow down"}}).encode()
    with pytest.raises(RateLimited) as info:
        await collect(worker(answering(body, 429, **{"retry-after": "7"})), REQUEST)
    assert info.value.retry_after == 7.0


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP-date is measured from now."""
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    headers = {"Retry-After": "Thu, 01 Jan 2026 12:00:30 GMT"}
    assert parse_retry_after(headers, now) == 30.0


def test_retry_after_from_openai_reset_headers() -> None:
    """Without Retry-After, the reset of the exhausted limit is used."""
    headers = {
        "x-ratelimit-remaining-requests": "10",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0.5s",
    }
    assert parse_retry_after(headers) == 360.5


def test_retry_after_from_anthropic_reset_headers() -> None:
    """Anthropic's RFC 3339 reset timestamps are measured from now."""
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    headers = {"anthropic-ratelimit-requests-reset": "2026-01-01T12:00:12Z"}
    assert parse_retry_after(headers, now) == 12.0


async def test_connect_error_is_typed() -> None:
    """A refused connection becomes ProviderConnectionError, the httpx error its cause."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ProviderConnectionError) as info:
        await collect(worker(handler), REQUEST)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_connect_timeout_is_typed() -> None:
    """httpx's ConnectTimeout becomes ProviderTimeout."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    with pytest.raises(ProviderTimeout):
        await collect(worker(handler), REQUEST)


async def test_stalled_stream_is_cut_at_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream that stalls after its first token fails with ProviderTimeout at the idle limit."""
    stream = Stalling([sse(chunk({"content": "a"}))])
    w = worker(lambda r: httpx.Response(200, stream=stream), timeouts=Timeouts(idle=5))
    with pytest.raises(ProviderTimeout, match="idle"):
        await collect(w, REQUEST)


async def test_idle_timeout_allows_slow_but_steady_tokens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Gaps shorter than the idle timeout never trip it, however long the whole answer."""
    chunks = [sse(chunk({"content": "a"})) for _ in range(10)] + [sse(chunk({}, "stop"))]
    stream = Stalling(chunks, delay=4, stall=False)
    w = worker(lambda r: httpx.Response(200, stream=stream), timeouts=Timeouts(idle=5))
    assert (await collect(w, REQUEST)).text == "a" * 10


async def test_first_token_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """No content before the first-token limit is ProviderTimeout naming that limit."""
    stream = Stalling([b": keep-alive\n\n"])
    w = worker(lambda r: httpx.Response(200, stream=stream), timeouts=Timeouts(first_token=3))
    with pytest.raises(ProviderTimeout, match="first token"):
        await collect(w, REQUEST)


async def test_total_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """A steady stream longer than the total limit is ProviderTimeout naming it."""
    stream = Stalling([sse(chunk({"content": "a"})) for _ in range(100)], delay=1, stall=False)
    w = worker(lambda r: httpx.Response(200, stream=stream), timeouts=Timeouts(total=20))
    with pytest.raises(ProviderTimeout, match="total"):
        await collect(w, REQUEST)


def test_timeouts_reject_nan_and_negatives() -> None:
    """Timeouts are seconds > 0 or inf."""
    assert Timeouts(idle=math.inf).idle == math.inf
    with pytest.raises(ValueError, match="idle"):
        Timeouts(idle=-1)
    with pytest.raises(ValueError, match="total"):
        Timeouts(total=math.nan)


async def test_rate_limited_key_hands_over_to_the_next() -> None:
    """A 429 on one key rests it for the request's model and the same request goes out
    again with the next key."""
    keys = [Secret("sk-aaaaaaaa1"), Secret("sk-bbbbbbbb2")]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        if request.headers["authorization"].endswith("1"):
            return httpx.Response(
                429, json={"error": {"message": "slow"}}, headers={"retry-after": "9"}
            )
        return httpx.Response(200, content=sse(chunk({"content": "ok"}, "stop")))

    pool = KeyPool(keys)
    assert (await collect(worker(handler, keys=pool), REQUEST)).text == "ok"
    assert seen == ["Bearer sk-aaaaaaaa1", "Bearer sk-bbbbbbbb2"]
    assert REQUEST.params.model in pool.statistics().keys[keys[0].fingerprint()].model_rests


async def test_keys_never_leak(caplog: pytest.LogCaptureFixture) -> None:
    """The key is in no repr, error message or log line, even when the provider echoes it."""
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}).encode()
    pool = KeyPool([Secret(KEY)], "p")
    w = worker(answering(body, 401), keys=pool)
    with pytest.raises(AuthenticationError) as info:
        await collect(w, REQUEST)
    seen = " ".join([str(info.value), repr(info.value), repr(w), repr(pool), caplog.text])
    seen += repr(pool.statistics())
    assert KEY not in seen
    assert KEY[:12] not in seen


async def test_list_models_and_embed() -> None:
    """/models gives model ids; /embeddings gives one vector per input, in order."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "a"}, {"id": "b"}]})
        vectors = [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}]
        return httpx.Response(200, json={"data": vectors})

    w = worker(handler)
    assert await w.list_models() == ["a", "b"]
    assert await w.embed(["x", "y"], model="e") == [[1.0, 0.0], [0.0, 1.0]]


async def test_cancelling_closes_the_connection() -> None:
    """Cancelling the request mid-stream closes the HTTP stream: the server sees it go."""
    fake_cm = open_fake_provider(Behaviour(tokens=4, stall_after=2))
    async with fake_cm as fake, httpx.AsyncClient() as client:
        w = OpenAIWorker(client, fake.openai_base_url)
        with trio.CancelScope() as scope:

            async def emit(event: StreamEvent) -> None:
                if isinstance(event, TextDelta) and event.text.strip() == "ipsum":
                    scope.cancel()

            await w.generate(REQUEST, emit)
        # The client is still open: only closing the stream can have told the server.
        with trio.fail_after(10):
            await fake.wait_for_disconnects(1)
    assert fake.statistics().client_disconnects == 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["choices", "delta", "content", "tool_calls", "index", "usage", "error"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=60)
@given(st.lists(_json, max_size=4), st.booleans())
async def test_any_json_stream_ends_typed(payloads: list[Any], done: bool) -> None:
    """Whatever JSON a provider streams, the worker completes or raises a ProviderError."""
    body = sse(*payloads, *([b"[DONE]"] if done else []))
    try:
        await collect(worker(answering(body)), REQUEST)
    except ProviderError:
        pass


async def test_a_complete_answer_whose_body_never_ends_is_still_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After [DONE], a body that stalls instead of ending costs its connection, not the answer."""
    stream = Stalling([sse(chunk({"content": "a"})) + sse(chunk({}, "stop")) + b"data: [DONE]\n\n"])
    w = worker(lambda r: httpx.Response(200, stream=stream), timeouts=Timeouts(idle=5))
    completion = await collect(w, REQUEST)
    assert (completion.text, completion.finish_reason) == ("a", "stop")


UNENCODABLE = {
    "a lone surrogate": PromptRequest(input="\ud800", params=GenerationParams(model="m")),
    "an integer beyond 64 bits": PromptRequest(
        input="hi", params=GenerationParams(model="m", extra={"seed": 2**64})
    ),
}


@pytest.mark.parametrize("name", list(UNENCODABLE))
async def test_a_body_json_cannot_carry_is_a_bad_request_before_any_call(name: str) -> None:
    """What the encoder refuses is a BadRequest (no retry, no breaker), and nothing is sent."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=sse(chunk({}, "stop"), b"[DONE]"))

    with pytest.raises(BadRequest) as caught:
        await collect(worker(handler), UNENCODABLE[name])
    assert not caught.value.trips_breaker
    assert not caught.value.retryable
    assert seen == []


async def test_a_library_caller_cannot_open_the_breaker_with_an_unencodable_request() -> None:
    """Through open_gateway, a breaker opening on the first failure stays closed after an
    unencodable request, so the next request reaches the upstream and is answered."""
    async with open_fake_provider(Behaviour(text="still here")) as fake:
        settings = parse_config(f"""
[[providers.providers]]
kind = "openai"
name = "up"
base_url = "{fake.openai_base_url}"
api_keys = ["sk-up"]

[resilience.breaker]
enabled = true
failure_threshold = 1
cooldown = 600.0
max_cooldown = 600.0
""")
        async with open_gateway(settings) as gateway:
            for request in UNENCODABLE.values():
                with pytest.raises(BadRequest):
                    await gateway.pipeline.submit(request)
            completion = await gateway.pipeline.submit(REQUEST)
    assert completion.text == "still here"
    assert len(fake.requests) == 1


WHOLE_ANSWER = {
    "model": "m",
    "choices": [{"message": {"content": "all of it"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 3},
}


def answering_after(
    seconds: float, seen: list[dict[str, Any]], answer: dict[str, Any] = WHOLE_ANSWER
) -> Handler:
    """Answers the whole of ``answer`` ``seconds`` after the request; records bodies."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        body = Stalling([json.dumps(answer).encode()], delay=seconds, stall=False)
        return httpx.Response(200, stream=body)

    return handler


async def test_a_caller_taking_the_answer_whole_is_answered_unstreamed_within_total(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request whose caller takes the answer whole goes out unstreamed, and its answer
    may take longer than first_token (it is generated whole before it comes): only total
    bounds it."""
    seen: list[dict[str, Any]] = []
    w = worker(answering_after(10, seen), timeouts=Timeouts(first_token=3, total=20))
    completion = await collect(w, REQUEST.streamed(False))
    assert completion.text == "all of it"
    assert "stream" not in seen[0]
    w = worker(answering_after(30, seen), timeouts=Timeouts(first_token=3, total=20))
    with pytest.raises(ProviderTimeout, match="total"):
        await collect(w, REQUEST.streamed(False))


async def test_a_provider_configured_not_to_stream_keeps_the_first_token_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``stream = false`` (the provider never streams): its answers, streamed to their
    callers or not, are bounded by first_token, as they were."""
    seen: list[dict[str, Any]] = []
    w = worker(answering_after(10, seen), timeouts=Timeouts(first_token=3), stream=False)
    with pytest.raises(ProviderTimeout, match="first token"):
        await collect(w, REQUEST.streamed(False))


async def test_a_whole_responses_answer_is_bounded_by_total_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ``/v1/responses`` request its client does not stream, forwarded natively, may take
    longer than first_token too: only total bounds it."""
    answer = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": "m",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "all of it", "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 1, "output_tokens": 3, "total_tokens": 4},
    }
    seen: list[dict[str, Any]] = []
    handler = answering_after(10, seen, answer)
    w = worker(handler, timeouts=Timeouts(first_token=3, total=20), responses_api=True)
    request = attrs.evolve(REQUEST, responses_body={"model": "m", "input": "hi"}, streaming=False)
    completion = await collect(w, request)
    assert completion.text == "all of it"
    assert "stream" not in seen[0]
