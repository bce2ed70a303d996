"""When each of a provider call's time limits cuts it, for every HTTP worker.

A stream may take ``first_token`` seconds to its first content, then ``idle`` seconds between
chunks, and ``total`` seconds in all. These tests pin the *time* of each cut (under
``autojump_clock``), not only the error's type: a limit applied at the wrong moment — every
stream cut at the first-token limit, say — passes a type check but not these. The last tests
show the same cuts through the service (its ASGI app), as a client of the gateway sees them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from service_helpers import call_app, serving_in_process

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.errors import ProviderTimeout
from trio_orchestrator.testing.fake_bedrock import event_frame
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import AnthropicWorker, ModelWorker, OpenAIWorker, collect
from trio_orchestrator.workers.azure import AzureOpenAIWorker
from trio_orchestrator.workers.bedrock import AWSCredentials, BedrockWorker
from trio_orchestrator.workers.config import Timeouts
from trio_orchestrator.workers.gemini import GeminiWorker
from trio_orchestrator.workers.preset import PresetWorker
from trio_orchestrator.workers.presets import PRESETS


def _data(payload: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


def _openai_chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _data({"model": "m", "choices": [choice]})


def _anthropic(name: str, **data: Any) -> bytes:
    return _data({"type": name, **data}, event=name)


def _anthropic_text(text: str) -> bytes:
    delta = {"type": "text_delta", "text": text}
    return _anthropic("content_block_delta", index=0, delta=delta)


def _gemini(text: str, finish: str | None = None) -> bytes:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    return _data({"candidates": [candidate], "usageMetadata": {"promptTokenCount": 1}})


class _Token:
    """A bearer token that never expires (Vertex AI's, without the exchange)."""

    async def token(self) -> str:
        return "ya29.test"

    def invalidate(self) -> None:
        pass


def _responses(name: str, **data: Any) -> bytes:
    return _data({"type": name, **data}, event=name)


@attrs.frozen
class Kind:
    """One HTTP worker, its wire format's chunks, and the request it streams."""

    name: str
    make: Callable[[httpx.AsyncClient, Timeouts], ModelWorker]
    first: bytes  # the first chunk with content (any preamble included)
    more: bytes  # one more chunk of content, the text "a"
    end: bytes  # the rest of a complete answer
    request: PromptRequest
    keepalive: bytes = b": keep-alive\n\n"  # bytes that carry no content


REQUEST = PromptRequest(input="hi", params=GenerationParams(model="m"))

# Azure's stream opens with the prompt filter's verdict, a frame with no choices.
_AZURE_PROMPT_FILTER = _data(
    {"choices": [], "id": "", "model": "", "prompt_filter_results": [{"prompt_index": 0}]}
)

KINDS = [
    Kind(
        "azure",
        lambda client, t: AzureOpenAIWorker(client, "http://azure.test", timeouts=t),
        _AZURE_PROMPT_FILTER + _openai_chunk("a"),
        _openai_chunk("a"),
        _openai_chunk(None, "stop") + b"data: [DONE]\n\n",
        REQUEST,
    ),
    Kind(
        "groq",
        lambda client, t: PresetWorker(
            client, "http://groq.test/v1", timeouts=t, preset=PRESETS["groq"]
        ),
        _openai_chunk("a"),
        _openai_chunk("a"),
        _openai_chunk(None, "stop") + b"data: [DONE]\n\n",
        REQUEST,
    ),
    Kind(
        "openai",
        lambda client, t: OpenAIWorker(client, "http://llm.test/v1", timeouts=t),
        _openai_chunk("a"),
        _openai_chunk("a"),
        _openai_chunk(None, "stop") + b"data: [DONE]\n\n",
        REQUEST,
    ),
    Kind(
        "anthropic",
        lambda client, t: AnthropicWorker(client, "http://anthropic.test", timeouts=t),
        _anthropic("message_start", message={"model": "m", "usage": {"input_tokens": 1}})
        + _anthropic("content_block_start", index=0, content_block={"type": "text", "text": ""})
        + _anthropic_text("a"),
        _anthropic_text("a"),
        _anthropic("content_block_stop", index=0)
        + _anthropic(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={"output_tokens": 1},
        )
        + _anthropic("message_stop"),
        REQUEST,
    ),
    Kind(
        "openai responses",
        lambda client, t: OpenAIWorker(
            client, "http://llm.test/v1", timeouts=t, responses_api=True
        ),
        _responses("response.created", response={"id": "r", "status": "in_progress"})
        + _responses("response.output_text.delta", delta="a", output_index=0),
        _responses("response.output_text.delta", delta="a", output_index=0),
        _responses(
            "response.completed",
            response={"id": "r", "status": "completed", "model": "m", "output": []},
        ),
        attrs.evolve(REQUEST, responses_body={"input": "hi", "stream": True}),
    ),
    Kind(
        "bedrock",
        lambda client, t: BedrockWorker(
            client,
            "http://bedrock.test",
            timeouts=t,
            credentials=AWSCredentials("AKIDTEST", Secret("secret")),
            region="us-east-1",
        ),
        event_frame("messageStart", {"role": "assistant"})
        + event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "a"}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "a"}}),
        event_frame("contentBlockStop", {"contentBlockIndex": 0})
        + event_frame("messageStop", {"stopReason": "end_turn"})
        + event_frame("metadata", {"usage": {"inputTokens": 1, "outputTokens": 4}}),
        REQUEST,
        # A frame before any content (ConverseStream's first event).
        keepalive=event_frame("messageStart", {"role": "assistant"}),
    ),
    Kind(
        "gemini",
        lambda client, t: GeminiWorker(client, "http://gemini.test", timeouts=t),
        _gemini("a"),
        _gemini("a"),
        _gemini("", "STOP"),
        REQUEST,
    ),
    Kind(
        "vertex",
        lambda client, t: GeminiWorker(
            client,
            "http://vertex.test",
            timeouts=t,
            models_path="/v1/projects/p/locations/l/publishers/google/models",
            tokens=_Token(),
        ),
        _gemini("a"),
        _gemini("a"),
        _gemini("", "STOP"),
        REQUEST,
    ),
]


class Scripted(httpx.AsyncByteStream):
    """A response body: each chunk after its delay, then (unless it ends) a stall."""

    def __init__(self, chunks: list[tuple[float, bytes]], *, stall: bool = True) -> None:
        self.chunks, self.stall = chunks, stall

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for delay, chunk in self.chunks:
            await trio.sleep(delay)
            yield chunk
        if self.stall:
            await trio.sleep_forever()


def _worker(kind: Kind, body: Scripted, timeouts: Timeouts) -> ModelWorker:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, stream=body, headers=headers)

    return kind.make(httpx.AsyncClient(transport=httpx.MockTransport(handler)), timeouts)


async def _cut_after(worker: ModelWorker, request: PromptRequest, limit: str) -> float:
    """Run ``worker`` to its timeout; return the seconds from the call to the cut."""
    start = trio.current_time()
    with pytest.raises(ProviderTimeout, match=limit):
        await collect(worker, request)
    return trio.current_time() - start


LIMITS = Timeouts(first_token=3, idle=5, total=20)


@pytest.fixture(params=KINDS, ids=[kind.name for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    """Each HTTP worker in turn."""
    result: Kind = request.param
    return result


async def test_no_content_is_cut_at_the_first_token_limit(
    kind: Kind, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream that sends only keep-alive comments is cut at first_token, not later."""
    body = Scripted([(0.0, kind.keepalive), (2.0, kind.keepalive)])
    assert await _cut_after(_worker(kind, body, LIMITS), kind.request, "first token") == 3.0


async def test_a_stall_after_content_is_cut_at_the_idle_limit(
    kind: Kind, autojump_clock: trio.testing.MockClock
) -> None:
    """Content at 2 s, then silence: cut at 2 + idle = 7 s (past the first-token limit)."""
    body = Scripted([(2.0, kind.first)])
    assert await _cut_after(_worker(kind, body, LIMITS), kind.request, "idle") == 7.0


async def test_each_chunk_restarts_the_idle_limit(
    kind: Kind, autojump_clock: trio.testing.MockClock
) -> None:
    """Chunks at 1, 5 and 9 s, then silence: the idle limit counts from the last, 9 + 5 s."""
    body = Scripted([(1.0, kind.first), (4.0, kind.more), (4.0, kind.more)])
    assert await _cut_after(_worker(kind, body, LIMITS), kind.request, "idle") == 14.0


async def test_a_steady_stream_is_cut_at_the_total_limit(
    kind: Kind, autojump_clock: trio.testing.MockClock
) -> None:
    """A chunk every 4 s never trips idle (5 s), but the call ends at total = 20 s."""
    body = Scripted([(1.0, kind.first)] + [(4.0, kind.more)] * 10)
    assert await _cut_after(_worker(kind, body, LIMITS), kind.request, "total") == 20.0


async def test_a_steady_stream_runs_past_the_first_token_limit_to_its_end(
    kind: Kind, autojump_clock: trio.testing.MockClock
) -> None:
    """Chunks 4 s apart (each within idle) run to the answer's end at 17 s, far past the
    3 s first-token limit: that limit ends with the first content."""
    chunks = [(1.0, kind.first)] + [(4.0, kind.more)] * 3 + [(4.0, kind.end)]
    worker = _worker(kind, Scripted(chunks, stall=False), LIMITS)
    start = trio.current_time()
    completion = await collect(worker, kind.request)
    assert completion.text == "a" * 4
    assert trio.current_time() - start == 17.0


async def test_a_json_answer_is_cut_at_the_first_token_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A non-streaming call whose body never arrives is cut at first_token."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Scripted([(1.0, b'{"id": ')]))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    worker = OpenAIWorker(client, "http://llm.test/v1", timeouts=LIMITS, stream=False)
    assert await _cut_after(worker, REQUEST, "first token") == 3.0


async def test_azures_prompt_filter_frame_is_not_a_first_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Azure's opening prompt-filter frame carries no content: a stream that sends only it
    is still cut at first_token."""
    body = Scripted([(0.5, _AZURE_PROMPT_FILTER)])
    worker = AzureOpenAIWorker(
        httpx.AsyncClient(transport=httpx.MockTransport(lambda r: _sse(body))),
        "http://azure.test",
        timeouts=LIMITS,
    )
    assert await _cut_after(worker, REQUEST, "first token") == 3.0


def _sse(body: Scripted) -> httpx.Response:
    return httpx.Response(200, stream=body, headers={"content-type": "text/event-stream"})


# ------------------------------------------------------------------ through the service


class _TimedSends(list[dict[str, Any]]):
    """The ASGI messages an application sends, each with the (mock) time it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, message: dict[str, Any]) -> None:
        self.times.append(trio.current_time())
        super().append(message)


async def _served_stream(kind: Kind, body: Scripted) -> tuple[str, float]:
    """Stream a chat completion from ``kind``'s worker through the service's ASGI app;
    return the response body and when (seconds after the call) its last byte was sent."""
    if kind.request.responses_body is None:
        path = "/v1/chat/completions"
        call: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    else:  # a Responses API upstream is reached natively through /v1/responses
        path, call = "/v1/responses", {"input": "hi"}
    sent = _TimedSends()
    start = trio.current_time()
    async with serving_in_process(_worker(kind, body, LIMITS)) as (app, _):
        await call_app(app, path, {"model": "echo", "stream": True, **call}, sent=sent)
    parts = [m.get("body", b"") for m in sent if m["type"] == "http.response.body"]
    return b"".join(parts).decode(), sent.times[-1] - start


async def test_served_steady_stream_outlives_the_first_token_limit(
    kind: Kind, autojump_clock: trio.testing.MockClock
) -> None:
    """Through the service, a stream with a chunk every 4 s (idle limit 5 s) reaches its
    end at 17 s, past the 3 s first-token limit, with all its text."""
    chunks = [(1.0, kind.first)] + [(4.0, kind.more)] * 3 + [(4.0, kind.end)]
    text, ended = await _served_stream(kind, Scripted(chunks, stall=False))
    assert '"error"' not in text
    assert ("response.completed" if kind.request.responses_body else "data: [DONE]") in text
    assert ended == 17.0


async def test_served_stall_after_content_is_cut_at_the_idle_limit(
    kind: Kind, autojump_clock: trio.testing.MockClock
) -> None:
    """Through the service, a stream that stalls after its first content at 2 s ends with
    the idle timeout's error at 7 s (not at the 3 s first-token limit)."""
    text, ended = await _served_stream(kind, Scripted([(2.0, kind.first)]))
    assert '"error"' in text
    assert "idle timeout" in text
    assert ended == 7.0
