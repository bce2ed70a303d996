"""The HTTP endpoints: OpenAI-compatible, native, and operational."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import trio
from starlette.requests import Request
from starlette.responses import Response

from ..distributed.connection import RedisUnavailable
from ..distributed.dead_letters import RedisDeadLetterQueue
from ..errors import OrchestratorError
from ..events import Completion
from ..pipeline import DeadLetter, DeadLetterQueue, Pipeline
from ..types import PromptRequest
from .embeddings import embeddings_answer, parse_embeddings_request
from .errors import ApiError, map_exception, outcome_of
from .guard import caller_of, set_request_id
from .jsonenc import JSONResponse, json_bytes
from .keystate import budgets_json, key_pools_json
from .metrics import render_metrics
from .models import get_model, list_models
from .native import completion_json, event_json, parse_prompt_request
from .overhead import overhead_headers, timed_fields
from .state import service_of
from .streaming import Emit, EventStream, cancel_on_disconnect, complete_unless_gone
from .validate import Fields, invalid, parse_json_object

__all__ = [
    "JSONResponse",
    "failure_response",
    "get_model",
    "json_error",
    "list_models",
    "stream_prompt",
]

EMBEDDINGS_PATH = "/v1/embeddings"


async def _body(request: Request) -> Fields:
    return parse_json_object(await request.body())


# ----------------------------------------------------------------- OpenAI-compatible


async def embeddings(request: Request) -> Response:
    """``POST /v1/embeddings``: through the pipeline like a chat (see :mod:`.embeddings`)."""
    state = service_of(request)
    pipeline = state.open_pipeline()
    caller = caller_of(request.scope)
    extra = timed_fields(request.scope, caller.request_fields())
    meta = caller.meta(request.headers)
    parsed = parse_embeddings_request(await _body(request), state.models, meta, **extra)
    completion = await complete_unless_gone(request.receive, pipeline, parsed.prompt)
    answer = JSONResponse(embeddings_answer(completion, parsed))
    # After rendering, so that the body's encoding counts.
    headers = overhead_headers(state, request.scope, EMBEDDINGS_PATH)
    if headers is not None:
        answer.headers.update(headers)
    return answer


# ----------------------------------------------------------------- native


def _prompt(request: Request, fields: Fields) -> PromptRequest:
    state = service_of(request)
    caller = caller_of(request.scope)
    prompt_request = parse_prompt_request(
        fields, state.models, caller.meta(request.headers), caller.priority_cap
    )
    set_request_id(request.scope, prompt_request.request_id)  # x-request-id names it
    return prompt_request


async def prompt(request: Request) -> Response:
    """``POST /v1/prompt``: run a prompt; answer with the completion and its outcome."""
    pipeline = service_of(request).open_pipeline()
    prompt_request = _prompt(request, await _body(request))
    work = partial(complete_unless_gone, request.receive, pipeline, prompt_request)
    return await _answer(prompt_request.request_id, work)


async def _answer(request_id: str, work: Callable[[], Awaitable[Completion]]) -> Response:
    try:
        completion = await work()
    except OrchestratorError as exc:
        return failure_response(request_id, exc)
    body = {"request_id": request_id, "outcome": "completed"}
    return JSONResponse(body | {"completion": completion_json(completion)})


def failure_response(request_id: str, exc: BaseException) -> Response:
    """The native answer for a request that ended without a completion."""
    error = map_exception(exc)
    body = {"request_id": request_id, "outcome": outcome_of(exc).value, **error.body()}
    return JSONResponse(body, error.status, error.headers())


async def prompt_stream(request: Request) -> Response:
    """``POST /v1/prompt/stream``: a prompt's events as server-sent events."""
    pipeline = service_of(request).open_pipeline()
    prompt_request = _prompt(request, await _body(request))
    return EventStream(partial(stream_prompt, pipeline, prompt_request), _native_error)


async def stream_prompt(pipeline: Pipeline, request: PromptRequest, emit: Emit) -> None:
    """Send ``request``'s events: ``start``, each event, ending with ``done``.

    ``start`` goes out with the first event, so that a failure before it keeps its status.
    """
    start: bytes | None = json_bytes({"type": "start", "request_id": request.request_id})
    async with pipeline.stream(request) as events:
        async for event in events:
            if start is not None:
                await emit(start)
                start = None
            await emit(json_bytes(event_json(event)))


def _native_error(error: ApiError, exc: BaseException) -> bytes:
    return json_bytes({"type": "error", "outcome": outcome_of(exc).value, **error.body()})


# ----------------------------------------------------------------- operations


async def healthz(request: Request) -> Response:
    """``GET /healthz``: the process is alive."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when requests would be served, else 503 with the reasons (draining,
    Redis down under ``fail_closed``, every provider's breakers open or keys resting)."""
    state = service_of(request)
    shared = {} if (redis := state.redis_state()) is None else {"redis": redis}
    reasons = state.unready()
    if not reasons:
        return JSONResponse({"status": "ready", **shared})
    status = "draining" if state.draining else "not ready"
    return JSONResponse({"status": status, "reasons": reasons, **shared}, 503)


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus exposition."""
    body, content_type = render_metrics(service_of(request))
    return Response(body, media_type=content_type)


async def stats(request: Request) -> Response:
    """``GET /v1/stats``: the pipeline's statistics, every provider's API keys, and the
    router's spending per key and model (``budgets``, null without ``[routing]``)."""
    state = service_of(request)
    pipeline = state.pipeline
    data = None if pipeline is None else attrs.asdict(pipeline.statistics())
    keys = key_pools_json(state.gateway)
    budgets = budgets_json(state.gateway)
    return JSONResponse(
        {"draining": state.draining, "pipeline": data, "keys": keys, "budgets": budgets}
    )


async def list_dead_letters(request: Request) -> Response:
    """``GET /v1/dead-letters``: shed requests, oldest first."""
    limit = _limit(request.query_params.get("limit"))
    pipeline = service_of(request).pipeline
    letters = [] if pipeline is None else await _letters(pipeline.dead_letters, limit)
    now = trio.current_time()
    return JSONResponse({"object": "list", "data": [_letter_json(d, now) for d in letters]})


async def _letters(queue: DeadLetterQueue, limit: int | None) -> list[DeadLetter]:
    """The letters of every process when they are shared through Redis (this process's own
    while Redis is unreachable), else this process's."""
    if isinstance(queue, RedisDeadLetterQueue):
        try:
            return await queue.list_shared(limit)
        except RedisUnavailable:
            pass
    return queue.list(limit)


async def _has_letter(queue: DeadLetterQueue, letter_id: str) -> bool:
    """Whether a letter exists here, or on the shared stream when there is one."""
    try:
        queue.get(letter_id)
        return True
    except KeyError:
        pass
    if not isinstance(queue, RedisDeadLetterQueue):
        return False
    try:
        await queue.get_shared(letter_id)
    except (KeyError, RedisUnavailable):
        return False
    return True


_MAX_LIMIT = 10_000


def _limit(value: str | None) -> int | None:
    """The ``limit`` query parameter: ASCII digits only, within ``[1, 10000]``.

    ``str.isdigit`` is true of ``¹`` and ``٣``, which ``int`` refuses or reads as another
    digit, and ``int`` refuses more than 4,300 digits: the length bound comes first.
    """
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 5):
        raise invalid("limit", f"an integer in [1, {_MAX_LIMIT}]", value)
    if not 1 <= (limit := int(value)) <= _MAX_LIMIT:
        raise invalid("limit", f"an integer in [1, {_MAX_LIMIT}]", value)
    return limit


def _letter_json(letter: DeadLetter, now: float) -> dict[str, Any]:
    request = letter.request
    return {
        "id": letter.id,
        "stage": letter.stage,
        "reason": letter.reason,
        "age_seconds": round(max(0.0, now - letter.time), 3),
        "request": {
            "input": request.input,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "model": request.params.model,
            "session": request.session,
            "priority": request.priority.name.lower(),
            "meta": dict(request.meta),
            "timeout": None
            if request.timeout is None or math.isinf(request.timeout)
            else request.timeout,
        },
    }


async def replay_dead_letter(request: Request) -> Response:
    """``POST /v1/dead-letters/{id}/replay``: submit a shed request again."""
    letter_id = request.path_params["id"]
    pipeline = service_of(request).open_pipeline()
    if not await _has_letter(pipeline.dead_letters, letter_id):
        message = f"no dead letter {letter_id!r} (never shed, already replayed, or pushed out)"
        raise ApiError(404, message, code="dead_letter_not_found", param="id")
    work = partial(cancel_on_disconnect, request.receive, partial(pipeline.replay, letter_id))
    return await _answer(letter_id, work)


def json_error(error: ApiError) -> Response:
    """``error`` as a response."""
    return JSONResponse(error.body(), error.status, error.headers())
