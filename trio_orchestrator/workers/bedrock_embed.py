"""Embeddings on AWS Bedrock: InvokeModel bodies and answers, model family by family.

Bedrock's Converse API has no embeddings; its embedding models answer ``POST
{base_url}/model/{modelId}/invoke`` (signed like Converse), each family with its own JSON
(AWS Bedrock user guide, "Amazon Titan Embeddings Text" and "Cohere Embed" model parameters):

- **Amazon Titan Text Embeddings** (``amazon.titan-embed-text-v2:0``, ``…-v1``): one text per
  call, ``{"inputText", "dimensions", "normalize"}`` (V2 only: ``dimensions`` 256, 512 or
  1024, ``normalize``), answered by ``{"embedding": [...], "inputTextTokenCount": n}``. An
  OpenAI request of several inputs is several calls.
- **Cohere Embed** (``cohere.embed-english-v3``, ``cohere.embed-multilingual-v3``): up to
  :data:`COHERE_BATCH` texts per call, ``{"texts", "input_type", "truncate"}``, answered by
  ``{"embeddings": [[...]], "id", "response_type", "texts"}`` (no token count in the body).

InvokeModel reports the input token count in the ``X-Amzn-Bedrock-Input-Token-Count``
response header (Bedrock's InvokeModel reference): the only count a Cohere answer has, and
Titan's too when present (it is the count Bedrock bills).

A model id of another family, token-array inputs, or a member the family cannot take is
refused with a 400 before any call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..errors import UnsupportedParameter
from ..types import PromptRequest

__all__ = [
    "COHERE_BATCH",
    "INPUT_TOKENS_HEADER",
    "TITAN_DIMENSIONS",
    "Family",
    "embed_family",
    "invoke_bodies",
    "read_answer",
]

Family = Literal["titan", "cohere"]

#: The ``dimensions`` Titan Text Embeddings V2 accepts.
TITAN_DIMENSIONS = (256, 512, 1024)

#: The most texts Cohere Embed takes in one InvokeModel call.
COHERE_BATCH = 96

#: Model id fragments naming a family (an id may carry a region prefix or be an ARN).
_FAMILIES: Mapping[str, Family] = {"amazon.titan-embed-text": "titan", "cohere.embed-": "cohere"}
_FAMILY_NAMES = "Amazon Titan Text Embeddings (amazon.titan-embed-text-v2:0) and Cohere Embed "
_FAMILY_NAMES += "(cohere.embed-english-v3, cohere.embed-multilingual-v3)"
_OURS = frozenset(["model", "input", "encoding_format"])


def _refuse(param: str, why: str, provider: str) -> UnsupportedParameter:
    where = f"the Bedrock upstream {provider!r}" if provider else "Bedrock"
    message = f"`{param}` cannot be sent to {where}. {why}. See docs/providers.md."
    return UnsupportedParameter(param, message, provider=provider)


def embed_family(model: str, *, provider: str = "") -> Family:
    """The embedding family of a Bedrock model id.

    Raises:
        UnsupportedParameter: a model of no supported family (the message names them).
    """
    for fragment, family in _FAMILIES.items():
        if fragment in model:
            return family
    raise _refuse(
        "model",
        f"{model!r} is not a Bedrock embedding model this gateway speaks; the supported "
        f"families are {_FAMILY_NAMES}",
        provider,
    )


def _titan_options(model: str, extra: Mapping[str, Any], provider: str) -> dict[str, Any]:
    v1 = "titan-embed-text-v1" in model
    options: dict[str, Any] = {}
    for name, value in extra.items():
        if value is None or name in _OURS:
            continue  # the gateway encodes the vectors as the client asked
        if name == "dimensions" and not v1:
            if value not in TITAN_DIMENSIONS:
                why = f"Titan Text Embeddings V2 takes dimensions 256, 512 or 1024, not {value!r}"
                raise _refuse("dimensions", why, provider)
            options["dimensions"] = value
        elif name == "normalize" and not v1 and isinstance(value, bool):
            options["normalize"] = value
        else:
            takes = "only the text" if v1 else "`dimensions` (256, 512, 1024) and `normalize`"
            raise _refuse(name, f"Titan Text Embeddings takes {takes}", provider)
    return options


def _cohere_options(extra: Mapping[str, Any], provider: str) -> dict[str, Any]:
    # Bedrock requires input_type for Cohere Embed v3; documents are the common case.
    options: dict[str, Any] = {"input_type": "search_document"}
    for name, value in extra.items():
        if value is None or name in _OURS:
            continue
        if name in ("input_type", "truncate"):
            options[name] = value
        else:
            why = "Cohere Embed on Bedrock takes `input_type` and `truncate`"
            raise _refuse(name, why, provider)
    return options


def invoke_bodies(
    request: PromptRequest, *, provider: str = ""
) -> tuple[Family, list[dict[str, Any]]]:
    """The InvokeModel bodies for an embedding request, in input order.

    Returns:
        The model's family and its bodies: one per input for Titan, one per
        :data:`COHERE_BATCH` inputs for Cohere.

    Raises:
        UnsupportedParameter: a model of no supported family, a token-array input, or a
            member the family cannot take.
    """
    assert request.embed is not None, "not an embedding request"
    model = request.params.model
    family = embed_family(model, provider=provider)
    texts: list[str] = []
    for i, item in enumerate(request.embed):
        if not isinstance(item, str):
            raise _refuse(
                f"input[{i}]", "Bedrock's embedding models embed text, not tokens", provider
            )
        texts.append(item)
    extra = request.params.extra
    if family == "titan":
        options = _titan_options(model, extra, provider)
        return family, [{"inputText": text, **options} for text in texts]
    options = _cohere_options(extra, provider)
    chunks = [texts[i : i + COHERE_BATCH] for i in range(0, len(texts), COHERE_BATCH)]
    return family, [{"texts": chunk, **options} for chunk in chunks]


#: The InvokeModel answer header that carries the call's input token count.
INPUT_TOKENS_HEADER = "x-amzn-bedrock-input-token-count"


def _header_count(headers: Mapping[str, str]) -> int | None:
    """The input token count in an InvokeModel answer's headers, or None."""
    raw = headers.get(INPUT_TOKENS_HEADER)
    return int(raw) if raw is not None and raw.strip().isdigit() else None


def read_answer(
    family: Family, answer: Any, headers: Mapping[str, str] | None = None
) -> tuple[list[tuple[float, ...]], int | None]:
    """The vectors of one InvokeModel answer, and its input token count when it has one.

    Call it inside :class:`~trio_orchestrator.workers.http.wire_format_guard`: an answer of
    another shape raises there.

    Args:
        family: the model's family.
        answer: the answer's JSON body.
        headers: the answer's headers (case-insensitive, as httpx gives them): their
            :data:`INPUT_TOKENS_HEADER` is the count, where present.

    Returns:
        The vectors, and the input token count (None: the answer has none).
    """
    counted = _header_count(headers or {})
    if family == "titan":
        vector = tuple(float(x) for x in answer["embedding"])
        body_count = int(answer.get("inputTextTokenCount") or 0)
        return [vector], body_count if counted is None else counted
    vectors: Sequence[Any] = answer["embeddings"]
    return [tuple(float(x) for x in v) for v in vectors], counted
