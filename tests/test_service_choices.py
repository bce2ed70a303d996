"""``n`` choices: n requests through the pipeline, each counted; a failure or a client gone
ends them all; ``n`` is validated; and the rendering of answers (usage details, members
passed through) by ``service/chat.py``."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from service_helpers import RecordingWorker, call_app, serving_in_process

from trio_orchestrator.errors import ServerError
from trio_orchestrator.events import Completion, Passthrough, TextDelta, Usage
from trio_orchestrator.service.chat import (
    ChunkWriter,
    completion_body,
    completions_body,
    total_usage,
    usage_body,
)
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers import EchoWorker, EventSink

LONG = " ".join(["word"] * 400)  # 20 s of tokens at 50 ms


def chat(n: Any, *, stream: bool = False, content: str = "one two three") -> dict[str, Any]:
    body = {"model": "echo", "messages": [{"role": "user", "content": content}], "n": n}
    return body | ({"stream": True} if stream else {})


def body_of(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def status_of(sent: list[dict[str, Any]]) -> int:
    status: int = sent[0]["status"]
    return status


@attrs.define(eq=False)
class FailingSecond:
    """Echoes slowly, except the second choice (its id ends in ``-1``), which fails."""

    inner: RecordingWorker = attrs.field(factory=lambda: RecordingWorker(EchoWorker(0.05)))
    model: str = "echo"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        if request.request_id.endswith("-1"):
            await trio.sleep(0.1)
            raise ServerError("upstream 500", status=500)
        await self.inner.generate(request, emit)


@pytest.mark.parametrize("stream", [False, True])
async def test_each_choice_is_a_counted_request(
    autojump_clock: trio.testing.MockClock, stream: bool
) -> None:
    """n=3 is three requests through the pipeline, all completed, in one answer."""
    worker = RecordingWorker()
    async with serving_in_process(worker) as (app, pipeline):
        sent = await call_app(app, "/v1/chat/completions", chat(3, stream=stream))
        stats = pipeline.statistics()
    assert (stats.submitted, stats.completed) == (3, 3)
    assert status_of(sent) == 200
    ids = {r.request_id for r in worker.seen}
    first = min(ids, key=len)
    assert ids == {first, f"{first}-1", f"{first}-2"}
    if not stream:
        answer = json.loads(body_of(sent))
        assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
        assert answer["usage"]["completion_tokens"] == 9
    else:
        frames = body_of(sent).split(b"\n\n")
        assert frames[-2:] == [b"data: [DONE]", b""]
        assert b"data: [DONE]" not in b"\n\n".join(frames[:-2])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_choice_ends_the_answer_and_cancels_the_others(
    autojump_clock: trio.testing.MockClock, stream: bool
) -> None:
    """One choice's upstream error is the answer's (its real status before any chunk); the
    other choices are cancelled at once, not left to finish."""
    worker = FailingSecond()
    async with serving_in_process(worker) as (app, pipeline):
        with trio.fail_after(5):  # the others take 20 s if nobody cancels them
            sent = await call_app(app, "/v1/chat/completions", chat(3, stream=stream, content=LONG))
        stats = pipeline.statistics()
    assert (stats.failed, stats.cancelled, stats.completed, stats.in_flight) == (1, 2, 0, 0)
    assert len(worker.inner.cancelled) == 2
    if not stream:
        assert status_of(sent) == 502
        assert json.loads(body_of(sent))["error"]["code"]
    else:
        *_, error, done, _end = body_of(sent).split(b"\n\n")
        assert b'"error"' in error  # the error event, then the stream's proper end
        assert done == b"data: [DONE]"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_gone_cancels_every_choice(
    autojump_clock: trio.testing.MockClock, stream: bool
) -> None:
    """A client that disconnects cancels all n requests at once."""
    worker = RecordingWorker(EchoWorker(token_delay=0.05))
    gone = trio.Event()
    async with serving_in_process(worker) as (app, pipeline):
        post = partial(call_app, app, "/v1/chat/completions", chat(3, stream=stream, content=LONG))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(post, gone=gone))
            await trio.sleep(3.0)
            gone.set()
        stats = pipeline.statistics()
    assert (stats.submitted, stats.cancelled, stats.in_flight) == (3, 3, 0)
    assert len(worker.cancelled) == 3


@pytest.mark.parametrize("n", ["2", 0, 17, True, 2.5, -1])
async def test_n_must_be_an_integer_from_1_to_16(
    autojump_clock: trio.testing.MockClock, n: Any
) -> None:
    """Anything else is a 400 naming n, and no request starts."""
    async with serving_in_process(RecordingWorker()) as (app, pipeline):
        sent = await call_app(app, "/v1/chat/completions", chat(n))
        stats = pipeline.statistics()
    assert status_of(sent) == 400
    assert json.loads(body_of(sent))["error"]["param"] == "n"
    assert stats.submitted == 0


@pytest.mark.parametrize("n", [1, None])
async def test_n_1_or_null_is_one_ordinary_request(
    autojump_clock: trio.testing.MockClock, n: Any
) -> None:
    """n=1 (or null) is no fan-out: one request, one choice."""
    worker = RecordingWorker()
    async with serving_in_process(worker) as (app, pipeline):
        sent = await call_app(app, "/v1/chat/completions", chat(n))
        stats = pipeline.statistics()
    assert status_of(sent) == 200
    assert len(json.loads(body_of(sent))["choices"]) == 1
    assert stats.submitted == 1


# ----------------------------------------------------------------- rendering


def test_usage_body_sets_the_counts_it_read_over_the_upstreams_details() -> None:
    """Cached/reasoning counts go in their details objects, merged over what the upstream sent."""
    usage = Usage(
        100,
        20,
        cached_input_tokens=60,
        cache_write_tokens=30,
        reasoning_tokens=5,
        details={"prompt_tokens_details": {"audio_tokens": 0}, "cost": 0.25},
    )
    assert usage_body(usage) == {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 60, "cache_write_tokens": 30},
        "cost": 0.25,
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    plain = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert usage_body(Usage(1, 2)) == plain
    zeros = {"prompt_tokens_details": {"cached_tokens": 0}}
    assert usage_body(Usage(1, 2, details=zeros)) == plain | zeros


def test_total_usage_sums_counts_and_details() -> None:
    """n choices' usage: counts and numeric details summed, other details kept."""
    one = Usage(10, 2, 4, 0, 1, {"prompt_tokens_details": {"cached_tokens": 4}, "model": "x"})
    two = Usage(10, 3, 6, 0, 0, {"prompt_tokens_details": {"cached_tokens": 6}, "model": "x"})
    total = total_usage([one, None, two])
    assert total == Usage(20, 5, 10, 0, 1)
    assert total is not None
    assert total.details == {"prompt_tokens_details": {"cached_tokens": 10}, "model": "x"}
    assert total_usage([None]) is None


def test_completion_body_puts_passed_members_in_their_places() -> None:
    """Message members in the message, choice members in the choice, the rest on top."""
    passed = Passthrough(
        {"system_fingerprint": "fp", "service_tier": "default"},
        {"logprobs": {"content": []}},
        {"refusal": "No", "annotations": []},
    )
    body = completion_body(Completion("r", "", passthrough=passed), "m")
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": "No",
        "annotations": [],
    }
    assert body["choices"][0]["logprobs"] == {"content": []}
    assert (body["system_fingerprint"], body["service_tier"]) == ("fp", "default")
    many = completions_body([Completion("r", "a"), Completion("r-1", "b")], "m")
    assert [c["message"]["content"] for c in many["choices"]] == ["a", "b"]
    assert many["id"] == "chatcmpl-r"


def test_chunk_writer_keeps_a_tokens_logprobs_with_it() -> None:
    """Choice members wait for the next chunk; delta members get their own; top-level
    members go on every chunk from then on, the opening one included."""
    writer = ChunkWriter("r", "m", include_usage=False, index=2)
    logprobs = {"content": [{"token": "Hi"}]}
    assert writer.event(Passthrough({"system_fingerprint": "fp"}, {"logprobs": logprobs})) is None
    first = json.loads(writer.first())
    assert (first["system_fingerprint"], first["choices"][0]["logprobs"]) == ("fp", None)
    text = json.loads(writer.event(TextDelta("Hi")) or b"")
    assert text["choices"][0] == {
        "index": 2,
        "delta": {"content": "Hi"},
        "finish_reason": None,
        "logprobs": logprobs,
    }
    refusal = json.loads(writer.event(Passthrough(message={"refusal": "No"})) or b"")
    assert refusal["choices"][0]["delta"] == {"refusal": "No"}
    assert refusal["system_fingerprint"] == "fp"
    assert json.loads(writer.event(TextDelta("!")) or b"")["choices"][0]["logprobs"] is None
