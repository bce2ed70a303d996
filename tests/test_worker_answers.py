"""What the workers make of answers beyond their text: usage details, members passed through
(logprobs, refusal, system_fingerprint, reasoning), Anthropic's cache counts and thinking."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import trio

from trio_orchestrator.events import Done, Passthrough, StreamEvent, TextDelta, Usage
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import AnthropicWorker, OpenAIWorker, Timeouts, collect

REQUEST = PromptRequest(input="hi", params=GenerationParams(model="m"))


def sse(*payloads: Any) -> bytes:
    return b"".join(
        b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n"
        for p in payloads
    )


def chunk(delta: Any = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"model": "m", "choices": [choice], **extra}


def client(answer: httpx.Response | httpx.AsyncByteStream) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, stream=answer)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def worker(body: bytes, **kwargs: Any) -> OpenAIWorker:
    return OpenAIWorker(client(httpx.Response(200, content=body)), "http://llm.test/v1", **kwargs)


async def events_of(w: OpenAIWorker | AnthropicWorker, request: PromptRequest) -> list[StreamEvent]:
    events: list[StreamEvent] = []

    async def emit(event: StreamEvent) -> None:
        events.append(event)

    await w.generate(request, emit)
    return events


class Slow(httpx.AsyncByteStream):
    """A response body that sends its chunks ``delay`` seconds apart."""

    def __init__(self, chunks: list[bytes], delay: float) -> None:
        self.chunks, self.delay = chunks, delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            await trio.sleep(self.delay)
            yield c


def plain(event: StreamEvent) -> Any:
    """An event comparable by value (Passthrough compares by identity)."""
    if isinstance(event, Passthrough):
        return ("Passthrough", event.response, event.choice, event.message)
    return event


async def test_streamed_members_beyond_the_text_pass_through() -> None:
    """logprobs and refusal pieces pass through before their text; nulls and padding do not;
    a constant system_fingerprint passes once, a changed one again, each with the next
    event (the role chunk's alone makes none: the first event is the first token)."""
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]}
    top = {"system_fingerprint": "fp_1", "obfuscation": "x"}
    body = sse(
        chunk({"role": "assistant", "content": "", "refusal": None}, **top),
        chunk({"content": "Hi"}, **top) | {"choices": [
            {"index": 0, "delta": {"content": "Hi"}, "logprobs": logprobs, "finish_reason": None}
        ]},
        chunk({"content": "!"}, system_fingerprint="fp_1", obfuscation="yy"),
        chunk({"refusal": "No"}, system_fingerprint="fp_2"),
        chunk({}, "stop", system_fingerprint="fp_2", timings={"predicted_ms": 5.5}),
        b"[DONE]",
    )  # fmt: skip
    events = await events_of(worker(body), REQUEST)
    expected: list[StreamEvent] = [
        Passthrough({"system_fingerprint": "fp_1"}, {"logprobs": logprobs}),
        TextDelta("Hi"),
        TextDelta("!"),
        Passthrough({"system_fingerprint": "fp_2"}, message={"refusal": "No"}),
        Passthrough({"timings": {"predicted_ms": 5.5}}),
    ]
    assert [plain(e) for e in events[:-1]] == [plain(e) for e in expected]


async def test_streamed_usage_keeps_its_details() -> None:
    """Cached and reasoning tokens are read; every usage member beyond the counts is kept."""
    usage = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 192},
    }
    body = sse(
        chunk({"content": "a"}), chunk({}, "stop"), {"choices": [], "usage": usage}, b"[DONE]"
    )
    done = (await events_of(worker(body), REQUEST))[-1]
    assert isinstance(done, Done)
    assert done.usage == Usage(2006, 300, cached_input_tokens=1920, reasoning_tokens=192)
    assert done.usage.details == {
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 192},
    }


async def test_a_json_answer_passes_its_other_members_through_nulls_included() -> None:
    """Message, choice and top-level members beyond those read, as sent, before Done."""
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hi",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        "service_tier": "default",
        "system_fingerprint": None,
    }
    w = OpenAIWorker(client(httpx.Response(200, json=answer)), "http://llm.test/v1", stream=False)
    passed = [plain(e) for e in await events_of(w, REQUEST) if isinstance(e, Passthrough)]
    assert passed == [
        (
            "Passthrough",
            {"service_tier": "default", "system_fingerprint": None},
            {"logprobs": None},
            {"refusal": None, "annotations": []},
        )
    ]


async def test_reasoning_tokens_end_the_first_token_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A model that reasons (reasoning_content deltas) for longer than the first-token limit
    is not cut: each reasoning token counts as a token for the timeouts."""
    thinking = [sse(chunk({"reasoning_content": "hmm "})) for _ in range(10)]
    chunks = [*thinking, sse(chunk({"content": "a"}), chunk({}, "stop"), b"[DONE]")]
    timeouts = Timeouts(first_token=5, idle=5)
    w = OpenAIWorker(client(Slow(chunks, delay=2)), "http://llm.test/v1", timeouts=timeouts)
    completion = await collect(w, REQUEST)
    assert completion.text == "a"
    assert completion.passthrough is not None
    assert completion.passthrough.message == {"reasoning_content": "hmm " * 10}


# ----------------------------------------------------------------- Anthropic


def event(name: str, **data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def anthropic(answer: httpx.Response | httpx.AsyncByteStream, **kwargs: Any) -> AnthropicWorker:
    return AnthropicWorker(client(answer), "http://anthropic.test", **kwargs)


CACHED = {"input_tokens": 21, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 3000}
THINKING = [
    event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
    event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "Let me "}),
    event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "see."}),
    event("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "EqQ"}),
    event("content_block_stop", index=0),
]
ANSWER = [
    event("content_block_start", index=1, content_block={"type": "text", "text": ""}),
    event("content_block_delta", index=1, delta={"type": "text_delta", "text": "42"}),
    event("content_block_stop", index=1),
    event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 7}),
    event("message_stop"),
]


async def test_anthropic_streamed_usage_counts_the_whole_prompt() -> None:
    """Cache reads and writes count as input, and are reported as such."""
    start = event("message_start", message={"model": "claude", "usage": CACHED})
    body = start + b"".join(ANSWER)
    completion = await collect(anthropic(httpx.Response(200, content=body)), REQUEST)
    assert completion.usage == Usage(
        21 + 100 + 3000, 7, cached_input_tokens=3000, cache_write_tokens=100
    )


async def test_anthropic_json_usage_counts_the_whole_prompt_and_thinking_passes() -> None:
    """A JSON answer: the same usage, and its thinking block as reasoning_content."""
    answer = {
        "type": "message",
        "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "Let me see.", "signature": "EqQ"},
            {"type": "redacted_thinking", "data": "AAA=="},
            {"type": "text", "text": "42"},
        ],
        "stop_reason": "end_turn",
        "usage": {**CACHED, "output_tokens": 7},
    }
    w = anthropic(httpx.Response(200, json=answer), stream=False)
    completion = await collect(w, REQUEST)
    assert completion.usage == Usage(3121, 7, cached_input_tokens=3000, cache_write_tokens=100)
    assert completion.text == "42"
    assert completion.passthrough is not None
    assert completion.passthrough.message == {"reasoning_content": "Let me see."}


async def test_anthropic_thinking_streams_as_reasoning_content() -> None:
    """Each thinking delta is a Passthrough of reasoning_content, before the text."""
    start = event("message_start", message={"model": "claude", "usage": CACHED})
    body = start + b"".join(THINKING) + b"".join(ANSWER)
    events = await events_of(anthropic(httpx.Response(200, content=body)), REQUEST)
    assert [plain(e) for e in events if isinstance(e, Passthrough | TextDelta)] == [
        ("Passthrough", {}, {}, {"reasoning_content": "Let me "}),
        ("Passthrough", {}, {}, {"reasoning_content": "see."}),
        TextDelta("42"),
    ]


async def test_anthropic_thinking_ends_the_first_token_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Thinking for longer than the first-token limit is not cut: thinking deltas count as
    tokens for the timeouts."""
    start = event("message_start", message={"model": "claude", "usage": CACHED})
    think = event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "."})
    chunks = [start, THINKING[0], *([think] * 10), THINKING[-1], b"".join(ANSWER)]
    w = anthropic(Slow(chunks, delay=1), timeouts=Timeouts(first_token=5, idle=5))
    completion = await collect(w, REQUEST)
    assert completion.text == "42"
    assert completion.passthrough is not None
    assert completion.passthrough.message == {"reasoning_content": "." * 10}
