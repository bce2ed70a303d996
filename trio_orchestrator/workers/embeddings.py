"""Embeddings on the worker side: OpenAI's ``/v1/embeddings`` wire format, and its refusal.

An embedding request is a :class:`~trio_orchestrator.types.PromptRequest` with ``embed``
set. A worker that can embed answers it with ``Embeddings``, then ``Usage`` (when known),
``Passthrough`` (the answer's members beyond the ones read here, when any) and ``Done``; one
that cannot raises :func:`cannot_embed`'s error before calling anyone.

Vectors travel as floats. A base64 vector (OpenAI's ``encoding_format: "base64"``) is the
vector's float32 values, little-endian, one after the other: decoded on the way in, encoded
again for a client that asked for it, with no loss (every float32 is exactly a float).
"""

from __future__ import annotations

import array
import base64
import hashlib
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..errors import MalformedResponse, UnsupportedParameter
from ..events import Done, Embeddings, Passthrough, Usage
from ..types import EmbeddingInput, GenerationParams, PromptRequest
from .base import EventSink, ModelWorker, collect
from .http import error_from_body

__all__ = [
    "WorkerEmbedder",
    "cannot_embed",
    "decode_vector",
    "embeddings_body",
    "emit_embeddings",
    "encode_vector",
    "fake_vector",
    "input_tokens",
]

# The members of an embeddings answer read into events; the rest go on as Passthrough.
_READ = frozenset(("object", "data", "model", "usage"))


@attrs.frozen
class WorkerEmbedder:
    """Any worker as an :class:`~trio_orchestrator.seams.Embedder`: each call is one
    embedding request (``PromptRequest(embed=...)``) through ``worker`` and whatever layers
    wrap it (a gateway's ``worker`` brings its breakers, retries, cache and routing).

    Args:
        worker: the worker to ask; it answers embedding requests or refuses them.
        batch: the most inputs sent in one request (providers cap it: OpenAI at 2,048).
    """

    worker: ModelWorker
    batch: int = 256

    async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
        """One vector per input, in input order.

        Raises:
            WorkerError: whatever the worker raised (a refusal, an upstream failure).
        """
        vectors: list[list[float]] = []
        for start in range(0, len(inputs), self.batch):
            chunk = tuple(inputs[start : start + self.batch])
            request = PromptRequest(embed=chunk, params=GenerationParams(model=model))
            completion = await collect(self.worker, request)
            vectors.extend(list(vector) for vector in completion.embeddings)
        return vectors


def embeddings_body(request: PromptRequest) -> dict[str, Any]:
    """The ``/embeddings`` JSON body for ``request``: ``model``, ``input`` (always an array),
    then ``params.extra`` as the client sent it (``encoding_format``, ``dimensions``,
    ``user`` and any member the upstream may know)."""
    assert request.embed is not None, "not an embedding request"
    inputs = [i if isinstance(i, str) else list(i) for i in request.embed]
    return {"model": request.params.model, "input": inputs, **request.params.extra}


def decode_vector(text: str) -> tuple[float, ...]:
    """A base64 vector (little-endian float32 values) as floats.

    Raises:
        ValueError: not base64, or not a whole number of float32 values.
    """
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError(f"a base64 vector of {len(raw)} bytes is not float32 values")
    values = array.array("f", raw)
    if sys.byteorder == "big":
        values.byteswap()
    return tuple(values)


def encode_vector(vector: Sequence[float]) -> str:
    """``vector`` as OpenAI's base64 encoding: its float32 values, little-endian."""
    values = array.array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def _vector(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        return decode_vector(value)
    if not isinstance(value, list):
        raise TypeError(f"an embedding must be an array or base64 text, got {value!r:.40}")
    return tuple(float(x) for x in value)


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, Mapping):
        return None
    prompt = int(data.get("prompt_tokens") or 0)
    total = int(data.get("total_tokens") or prompt)
    details = {k: v for k, v in data.items() if k not in ("prompt_tokens", "total_tokens")}
    # An embedding generates nothing; a total above the prompt is not ours to explain.
    return Usage(prompt, max(0, total - prompt), details=details)


async def emit_embeddings(
    answer: Any, request: PromptRequest, provider: str, emit: EventSink
) -> None:
    """Emit an OpenAI ``/embeddings`` answer to ``request`` as events.

    Call it inside :class:`~trio_orchestrator.workers.http.wire_format_guard`: an answer of
    another shape raises there.

    Raises:
        ProviderError: the answer is an error object.
        MalformedResponse: the answer has not one vector per input.
    """
    assert request.embed is not None, "not an embedding request"
    data = answer.get("data") if isinstance(answer, Mapping) else None
    if not isinstance(data, list) or len(data) != len(request.embed):
        if isinstance(answer, Mapping) and "error" in answer:
            raise error_from_body(answer, provider=provider)
        raise MalformedResponse(
            f"{provider or 'the provider'}: /embeddings answered without one vector per "
            f"input ({len(request.embed)} asked); retrying may help",
            provider=provider,
        )
    ordered = sorted(data, key=lambda item: int(item.get("index", 0)))
    await emit(Embeddings(tuple(_vector(item["embedding"]) for item in ordered)))
    usage = _usage(answer.get("usage"))
    if usage is not None:
        await emit(usage)
    rest = {k: v for k, v in answer.items() if k not in _READ}
    if rest:
        await emit(Passthrough(response=rest))
    await emit(Done("stop", "", usage, (), answer.get("model")))


def cannot_embed(request: PromptRequest, provider: str, what: str) -> UnsupportedParameter:
    """The error a worker that has no embeddings raises for an embedding request.

    Args:
        request: the embedding request.
        provider: the provider's name.
        what: what the provider is, for the message (``"an Anthropic Messages provider"``).
    """
    model = request.params.model
    return UnsupportedParameter(
        "model",
        f"the model {model!r} is served by {provider or 'a provider'}, {what}, which has no "
        "embeddings; ask for an embedding model of an OpenAI-compatible provider",
        provider=provider,
    )


def input_tokens(item: EmbeddingInput) -> int:
    """Tokens of one input: a token array's length, else the text's words."""
    return len(item) if isinstance(item, tuple) else len(item.split())


def fake_vector(item: EmbeddingInput, dimensions: int) -> tuple[float, ...]:
    """A deterministic unit vector for ``item`` (same input, same vector; no meaning).

    Args:
        item: the input.
        dimensions: the vector's length (at least 1).
    """
    seed = item if isinstance(item, str) else ",".join(map(str, item))
    raw = hashlib.shake_256(seed.encode("utf-8", "surrogatepass")).digest(2 * dimensions)
    values = [
        int.from_bytes(raw[i : i + 2], "little") / 32767.5 - 1.0 for i in range(0, len(raw), 2)
    ]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)
