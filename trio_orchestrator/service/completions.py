"""``POST /v1/completions``: OpenAI's legacy text completions, through the pipeline.

The prompt becomes the request's ``input`` (one user message to a chat upstream), so every
limit, budget, route and fallback applies to it as to a chat request. Members with a Chat
Completions namesake (``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
``user``, ``frequency_penalty``, ``presence_penalty``, ``logit_bias``) and unknown members
travel in :attr:`~trio_orchestrator.types.GenerationParams.extra` by that name, as a chat
request's do. What a chat upstream cannot do is refused with a 400 naming the member:
several prompts (send one request per prompt), token-id prompts, ``suffix``, ``logprobs``,
``n`` or ``best_of`` above 1. ``echo`` is served here: the prompt is put before the answer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import Response

from ..events import Completion, TextDelta
from ..pipeline import Pipeline
from ..types import GenerationParams, PromptRequest
from .chat import usage_body
from .chat_schema import CHAT_SCHEMA
from .errors import ApiError
from .guard import caller_of
from .jsonenc import json_bytes
from .overhead import late_overhead_header, overhead_headers, timed_fields
from .state import service_of
from .streaming import Emit, EventStream, complete_unless_gone, error_json
from .validate import Fields, invalid, parse_json_object

__all__ = [
    "TextCompletionRequest",
    "completions",
    "parse_completion_request",
    "text_completion_body",
]

COMPLETIONS_PATH = "/v1/completions"

#: The reference's default for ``max_tokens`` on this endpoint.
DEFAULT_MAX_TOKENS = 16

# Members read here and never forwarded: the request's frame, and what is served (echo) or
# refused (the rest) by this endpoint itself.
_OWN = frozenset(["model", "prompt", "stream", "stream_options", "echo", "suffix", "logprobs"])
_OWN |= {"n", "best_of"}


@attrs.frozen
class TextCompletionRequest:
    """A parsed ``/v1/completions`` request.

    Attributes:
        prompt: the request for the pipeline.
        stream: answer as server-sent events.
        include_usage: with ``stream``, end with a chunk carrying usage.
        echo: the prompt, put before the answer (``echo: true``), else ``""``.
    """

    prompt: PromptRequest
    stream: bool
    include_usage: bool
    echo: str = ""


def check_model(body: Fields, models: Sequence[str]) -> str:
    """The ``model`` member, which must be one of ``models`` (any, when empty).

    Raises:
        ApiError: 400 when missing, 404 for a model not served.
    """
    model = body.text("model", required=True, max_length=256)
    assert model is not None
    if models and model not in models:
        message = f"the model {model!r} does not exist; GET /v1/models lists the models served"
        raise ApiError(404, message, code="model_not_found", param="model")
    return model


# Checked as Chat Completions checks them (a penalty's range; logit_bias: token id → bias).
_CHAT_RULES = ("frequency_penalty", "presence_penalty", "logit_bias")


def parse_completion_request(
    body: Fields, models: Sequence[str], meta: Mapping[str, str], **request: Any
) -> TextCompletionRequest:
    """Validate a ``/v1/completions`` body and turn it into a :class:`TextCompletionRequest`.

    Args:
        body: the JSON body.
        models: the models served; any other ``model`` is a 404 (empty: any model).
        meta: labels for the request (API key id, user).
        request: further :class:`PromptRequest` fields (priority).

    Raises:
        ApiError: 400 naming the bad or unsupported member, or 404 for an unknown model.
    """
    model = check_model(body, models)
    text = _prompt(body)
    _refuse_unsupported(body)
    user = body.text("user", max_length=256)
    labels = dict(meta) | ({"user": user} if user else {})
    extra = {k: v for k, v in body.data.items() if k not in _OWN}
    for name in _CHAT_RULES:  # the members both APIs share, held to the same rules
        if (value := body.data.get(name)) is not None:
            CHAT_SCHEMA[name].check(value, name)
    params = GenerationParams(
        model=model,
        max_tokens=body.integer("max_tokens", minimum=1) or DEFAULT_MAX_TOKENS,
        temperature=body.number("temperature", minimum=0, maximum=2),
        top_p=body.number("top_p", minimum=0, maximum=1),
        stop=_stop(body),
        seed=body.integer("seed"),
        extra=extra,
    )
    options = body.object("stream_options")
    include_usage = options is not None and options.flag("include_usage")
    echo = text if body.flag("echo") else ""
    stream = body.flag("stream")
    prompt = PromptRequest(input=text, params=params, meta=labels, streaming=stream, **request)
    return TextCompletionRequest(prompt, stream, include_usage, echo)


def _prompt(body: Fields) -> str:
    value = body.data.get("prompt")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        return value
    if value is None:
        raise invalid("prompt", "a string", missing=True)
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        message = (
            "`prompt` holds several prompts; this gateway answers one prompt per request: "
            "send one request for each"
        )
        raise ApiError(400, message, code="unsupported_parameter", param="prompt")
    if isinstance(value, list) and value:
        message = "`prompt` as token ids is not supported (the upstream is a chat model); send text"
        raise ApiError(400, message, code="unsupported_parameter", param="prompt")
    raise invalid("prompt", "a string, or an array of one string", value)


def _refuse_unsupported(body: Fields) -> None:
    """400 for members a chat upstream cannot honour, naming the first one sent."""
    for name in ("n", "best_of"):
        if body.integer(name, minimum=1) not in (None, 1):
            raise _unsupported(name, "only one completion per request is supported; use 1")
    if body.text("suffix"):
        raise _unsupported("suffix", "insertion (text after the completion) is not supported")
    if body.integer("logprobs", minimum=0, maximum=5) is not None:
        message = "legacy `logprobs` are not supported; /v1/chat/completions has `logprobs`"
        raise _unsupported("logprobs", message)
    body.flag("echo")  # validated here, served by the answer


def _unsupported(name: str, why: str) -> ApiError:
    message = f"`{name}` is not supported on /v1/completions: {why}"
    return ApiError(400, message, code="unsupported_parameter", param=name)


def _stop(body: Fields) -> tuple[str, ...]:
    value = body.data.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise invalid("stop", "a string or an array of up to 4 strings", value)


# ----------------------------------------------------------------- answers


def _finish_reason(reason: str) -> str:
    # The legacy endpoint knows stop, length and content_filter; a chat-only reason (a tool
    # call, which this endpoint never asks for) reads as a natural stop.
    return reason if reason in ("stop", "length", "content_filter") else "stop"


def text_completion_body(completion: Completion, model: str, echo: str = "") -> dict[str, Any]:
    """A ``text_completion`` object for a finished request.

    Args:
        completion: the request's completion.
        model: the model asked for (used when the upstream named none).
        echo: text to put before the answer (the prompt, for ``echo: true``).
    """
    choice = {
        "text": echo + completion.text,
        "index": 0,
        "logprobs": None,
        "finish_reason": _finish_reason(completion.finish_reason),
    }
    passthrough = completion.passthrough
    return {
        "id": "cmpl-" + completion.request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": completion.model or model,
        "choices": [choice],
        "usage": usage_body(completion.usage),
        **(dict(passthrough.response) if passthrough is not None else {}),
    }


@attrs.define
class TextChunkWriter:
    """Turns a request's events into streamed ``text_completion`` objects."""

    request_id: str
    model: str
    include_usage: bool
    _created: int = attrs.field(init=False, factory=lambda: int(time.time()))

    def _chunk(self, choices: list[dict[str, Any]], **members: Any) -> bytes:
        chunk = {
            "id": "cmpl-" + self.request_id,
            "object": "text_completion",
            "created": self._created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return json_bytes(chunk | members)

    def text(self, text: str, finish_reason: str | None = None) -> bytes:
        """A chunk carrying ``text`` (and the finish reason, on the last one)."""
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return self._chunk([choice])

    def last(self, completion: Completion) -> list[bytes]:
        """The final chunk (with the finish reason), then the usage chunk when asked for."""
        chunks = [self.text("", _finish_reason(completion.finish_reason))]
        if self.include_usage:
            chunks.append(self._chunk([], usage=usage_body(completion.usage)))
        return chunks


async def stream_completion(pipeline: Pipeline, request: TextCompletionRequest, emit: Emit) -> None:
    """Send the request's text as ``text_completion`` chunks.

    Nothing is sent before the first upstream event, so that an error before it is answered
    with its own status (the response's headers go with the first emit).
    """
    prompt = request.prompt
    writer = TextChunkWriter(prompt.request_id, prompt.params.model, request.include_usage)
    echo = request.echo
    async with pipeline.stream(prompt) as events:
        async for event in events:
            if echo:
                await emit(writer.text(echo))
                echo = ""
            if isinstance(event, TextDelta) and event.text:
                await emit(writer.text(event.text))
        assert events.completion is not None
        for chunk in writer.last(events.completion):
            await emit(chunk)


async def completions(request: Request) -> Response:
    """``POST /v1/completions``: a text completion, streaming (server-sent events) or not."""
    state = service_of(request)
    pipeline = state.open_pipeline()
    caller = caller_of(request.scope)
    extra = timed_fields(request.scope, caller.request_fields())
    body = parse_json_object(await request.body())
    parsed = parse_completion_request(body, state.models, caller.meta(request.headers), **extra)
    if parsed.stream:
        produce = partial(stream_completion, pipeline, parsed)
        late = late_overhead_header(state, parsed.prompt.timing, COMPLETIONS_PATH)
        return EventStream(
            produce, lambda error, _exc: error_json(error), b"[DONE]", late_header=late
        )
    completion = await complete_unless_gone(request.receive, pipeline, parsed.prompt)
    body_json = text_completion_body(completion, parsed.prompt.params.model, parsed.echo)
    content = json_bytes(body_json)
    headers = overhead_headers(state, request.scope, COMPLETIONS_PATH)
    return Response(content, media_type="application/json", headers=headers)
