"""OpenAI's embeddings wire format: ``/v1/embeddings`` requests in, answers out.

The request becomes a :class:`~trio_orchestrator.types.PromptRequest` with ``embed`` set and
goes through the pipeline like a chat (limits, cache, coalescing, breakers, routing,
metrics). ``input`` may be a string, an array of strings, an array of token ids or an array
of token-id arrays (1 to 2048 items, no empty string, as OpenAI documents); token arrays
reach only OpenAI-compatible upstreams (the echo worker embeds them too). Every other member
— ``encoding_format``, ``dimensions``, ``user`` and unknown ones — travels in
``params.extra`` to an OpenAI-compatible upstream exactly as sent, so the upstream answers in
the encoding the client asked for; the answer gives it back in that encoding (base64: the
float32 values, little-endian), with the upstream's usage (zero counts when it gave none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..events import Completion
from ..types import EmbeddingInput, GenerationParams, PromptRequest
from ..workers.embeddings import encode_vector
from .errors import ApiError
from .validate import Fields, invalid

__all__ = ["MAX_INPUTS", "EmbeddingsRequest", "embeddings_answer", "parse_embeddings_request"]

MAX_INPUTS = 2048
"""The most inputs one request may hold (OpenAI's bound)."""

# A token id the upstream's JSON encoder can carry whatever it is (no vocabulary is near).
_MAX_TOKEN_ID = 2**31 - 1
_INPUT = (
    "a non-empty string, or an array of 1 to 2048 non-empty strings, of token ids, "
    "or of non-empty token-id arrays"
)
_ENCODINGS = ("float", "base64")


@attrs.frozen
class EmbeddingsRequest:
    """A parsed ``/v1/embeddings`` request.

    Attributes:
        prompt: the request for the pipeline (``embed`` set).
        base64: answer with base64 vectors (``encoding_format: "base64"``).
    """

    prompt: PromptRequest
    base64: bool


def parse_embeddings_request(
    body: Fields, models: Sequence[str], meta: Mapping[str, str], **request: Any
) -> EmbeddingsRequest:
    """Validate an OpenAI embeddings body and turn it into an :class:`EmbeddingsRequest`.

    Args:
        body: the JSON body.
        models: the models served; any other ``model`` is a 404 (empty: any model).
        meta: labels for the request (API key id, trace context).
        request: further :class:`PromptRequest` fields (priority).

    Raises:
        ApiError: 400 naming the bad member, or 404 for an unknown model.
    """
    model = body.text("model", required=True, max_length=256)
    assert model is not None
    if models and model not in models:
        message = f"the model {model!r} does not exist; GET /v1/models lists the models served"
        raise ApiError(404, message, code="model_not_found", param="model")
    inputs = _inputs(body.data.get("input"))
    encoding = body.data.get("encoding_format")
    if encoding is not None and encoding not in _ENCODINGS:
        raise invalid("encoding_format", '"float" or "base64"', encoding)
    body.integer("dimensions", minimum=1)
    user = body.text("user", max_length=256)
    labels = dict(meta)
    if user:
        labels["user"] = user
    extra = {k: v for k, v in body.data.items() if k not in ("model", "input")}
    params = GenerationParams(model=model, extra=extra)
    prompt = PromptRequest(embed=inputs, params=params, meta=labels, **request)
    return EmbeddingsRequest(prompt, encoding == "base64")


def _inputs(value: Any) -> tuple[EmbeddingInput, ...]:
    if isinstance(value, str):
        return (_text("input", value),)
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_INPUTS:
        raise invalid("input", _INPUT, value)
    if all(isinstance(item, str) for item in value):
        return tuple(_text(f"input[{i}]", item) for i, item in enumerate(value))
    if all(_is_token(item) for item in value):
        return (tuple(value),)
    if all(isinstance(item, list) for item in value):
        return tuple(_tokens(f"input[{i}]", item) for i, item in enumerate(value))
    raise invalid("input", _INPUT, value)


def _text(path: str, value: str) -> str:
    if not value:
        raise invalid(path, "a non-empty string", value)
    return value


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TOKEN_ID


def _tokens(path: str, value: list[Any]) -> tuple[int, ...]:
    if not value or not all(_is_token(t) for t in value):
        expected = f"a non-empty array of token ids (integers in [0, {_MAX_TOKEN_ID}])"
        raise invalid(path, expected, value)
    return tuple(value)


def _vector_json(vector: tuple[float, ...], base64: bool) -> str | list[float]:
    return encode_vector(vector) if base64 else list(vector)


def embeddings_answer(completion: Completion, request: EmbeddingsRequest) -> dict[str, Any]:
    """The ``list`` of ``embedding`` objects answering ``request``.

    Members of the upstream's answer the gateway does not read (``Passthrough.response``)
    follow the documented ones.
    """
    data = [
        {"object": "embedding", "index": i, "embedding": _vector_json(vector, request.base64)}
        for i, vector in enumerate(completion.embeddings)
    ]
    usage = completion.usage
    counts = {"prompt_tokens": 0, "total_tokens": 0}
    if usage is not None:
        counts = {"prompt_tokens": usage.input_tokens, "total_tokens": usage.total_tokens}
        counts |= {k: v for k, v in usage.details.items() if k not in counts}
    model = completion.model or request.prompt.params.model
    answer = {"object": "list", "data": data, "model": model, "usage": counts}
    if completion.passthrough is not None:
        answer |= {k: v for k, v in completion.passthrough.response.items() if k not in answer}
    return answer
