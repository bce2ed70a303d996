"""``n``: several choices for one chat completion, as several requests through the pipeline.

A worker answers one choice per request (the event model has one), so the service fans a
request with ``n`` > 1 out: ``n`` requests through the pipeline, each admitted, limited,
routed and counted like any other (their ids are the first one's with ``-1``, ``-2``…
appended), and their answers combined into ``choices[0..n-1]`` of one answer, the usage
summed. Streamed, each choice's chunks carry its index and go out as they come,
interleaved, and one ``[DONE]`` ends them all; a failure of any choice ends the answer
(the others are cancelled).

This is a documented rewrite of what the upstream receives: ``n`` is taken out of the
request (each upstream call asks for one choice). ``n`` = 1 is no rewrite and travels as
sent. Requests that coalesce or hit the answer cache (greedy ones, ``temperature`` 0) give
equal choices, as greedy decoding would.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from ..events import Completion
from ..pipeline import PendingRequest, Pipeline
from ..types import PromptRequest
from .chat import ChatRequest, ChunkWriter, total_usage
from .streaming import ClientGone, Emit
from .validate import Fields, invalid

__all__ = ["MAX_CHOICES", "choice_requests", "complete_choices", "stream_choices", "take_choices"]

#: The most choices one request may ask for (a request is ``n`` upstream calls).
MAX_CHOICES = 16

Receive = Callable[[], Awaitable[Mapping[str, Any]]]


def take_choices(body: Fields) -> tuple[Fields, int]:
    """Read ``n`` from a chat-completions body: the body to parse and the choices asked for.

    With ``n`` > 1 the body comes back without ``n`` (the fan-out is the gateway's, the
    upstream is asked for one choice per call); otherwise it comes back as it was.

    Raises:
        ApiError: 400 naming ``n`` when it is not an integer from 1 to :data:`MAX_CHOICES`.
    """
    data = body.data
    if "n" not in data:
        return body, 1
    n = data["n"]
    if n is None:
        return body, 1
    if type(n) is not int or not 1 <= n <= MAX_CHOICES:
        raise invalid("n", f"an integer from 1 to {MAX_CHOICES}", n)
    if n == 1:
        return body, 1
    return Fields({k: v for k, v in data.items() if k != "n"}, body.path), n


def choice_requests(prompt: PromptRequest, n: int) -> list[PromptRequest]:
    """The ``n`` requests that answer ``prompt``'s choices; the first is ``prompt`` itself."""
    rest = [attrs.evolve(prompt, request_id=f"{prompt.request_id}-{i}") for i in range(1, n)]
    return [prompt, *rest]


@attrs.define(eq=False)
class _Waiter:
    """Wakes the handler's wait for ``http.disconnect`` when one of its requests ends."""

    scope: trio.CancelScope | None = None

    def wake(self) -> None:
        if self.scope is not None:
            self.scope.cancel()


def _failed(pending: PendingRequest) -> bool:
    if not pending.done:
        return False
    try:
        pending.result()
    except Exception:
        return True
    return False


async def complete_choices(
    receive: Receive, pipeline: Pipeline, prompt: PromptRequest, n: int
) -> list[Completion]:
    """Answer ``prompt`` ``n`` times through ``pipeline`` at once, cancelling every request
    if the client disconnects, the others if one fails.

    As :func:`~.streaming.complete_unless_gone` does for one request: call it once the body
    has been read.

    Returns:
        The completions, in choice order.

    Raises:
        ClientGone: the client disconnected.
        OrchestratorError: what the first request to fail ended with.
    """
    waiter = _Waiter()
    started: list[PendingRequest] = []
    failed: PendingRequest | None = None
    gone = False
    try:
        for request in choice_requests(prompt, n):
            started.append(pipeline.try_start(request.streamed(False), waiter.wake))
        # Nothing runs between this check and the wait below: an end after it wakes it.
        while not all(p.done for p in started):
            if (failed := next((p for p in started if _failed(p)), None)) is not None:
                break
            with trio.CancelScope() as waiter.scope:
                if (await receive())["type"] == "http.disconnect":
                    gone = True
                    break
    finally:
        waiter.scope = None
        reason = "the client disconnected" if gone else "another choice of the request failed"
        for pending in started:
            pending.cancel(reason)
    if gone:
        raise ClientGone
    if failed is None:
        failed = next((p for p in started if _failed(p)), None)
    if failed is not None:
        failed.result()  # raises what it ended with
    return [p.result() for p in started]


async def stream_choices(pipeline: Pipeline, chat: ChatRequest, n: int, emit: Emit) -> None:
    """Stream ``n`` choices of ``chat`` as one answer: each choice's chunks with its index,
    as they come; then, when asked for, one usage chunk for them all.

    Raises:
        OrchestratorError: what the first choice to fail ended with (the others are
            cancelled).
    """
    prompt = chat.prompt
    created = int(time.time())
    writers = [
        ChunkWriter(prompt.request_id, prompt.params.model, chat.include_usage, i, created)
        for i in range(n)
    ]
    completions: list[Completion | None] = [None] * n
    failures: list[Exception] = []
    lock = trio.Lock()  # one sender at a time on the response

    async def send(chunk: bytes) -> None:
        async with lock:
            await emit(chunk)

    async def choice(index: int, request: PromptRequest, cancel: trio.CancelScope) -> None:
        writer = writers[index]
        try:
            async with pipeline.stream(request) as events:
                opened = False
                async for event in events:
                    chunk = writer.event(event)  # first: the opening chunk has its members
                    if not opened:
                        opened = True
                        await send(writer.first())
                    if chunk is not None:
                        await send(chunk)
                completion = events.completion
            assert completion is not None
            completions[index] = completion
            await send(writer.finish(completion))
        except Exception as exc:  # raised once, after the others are cancelled
            failures.append(exc)
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        for index, request in enumerate(choice_requests(prompt, n)):
            nursery.start_soon(choice, index, request, nursery.cancel_scope)
    if failures:
        raise failures[0]
    if chat.include_usage:
        await emit(writers[0].usage_chunk(total_usage([c.usage for c in completions if c])))
