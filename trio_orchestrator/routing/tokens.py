"""Token estimation, the capabilities a request needs, and the pre-call check.

Estimation uses tiktoken's ``cl100k_base`` encoding when the optional ``tiktoken`` extra is
installed and its encoding loads (tiktoken downloads it on first use; set
``TRIO_ORCHESTRATOR_TOKENIZER=heuristic`` on a machine that must not reach the internet, as
the tests do); otherwise a documented heuristic:

* each message costs ``ceil(len(text) / 4)`` tokens for its text (content, name, tool-call
  names and arguments) plus 4 tokens of framing (role and separators);
* each offered tool costs ``ceil(len(json) / 4)`` tokens of its JSON description;
* the reply is primed with 3 tokens;
* an input of an embedding request costs ``ceil(len(text) / 4)`` (a token array, its length),
  with no framing.

Four characters per token is the usual rule of thumb for English with GPT-style BPE
vocabularies; it over-counts code a little and under-counts some languages, which is why a
provider's own ``ContextLengthExceeded`` still triggers a fallback.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import Callable
from typing import Any

from ..types import Message, PromptRequest
from .registry import ModelDeployment

__all__ = [
    "MESSAGE_OVERHEAD",
    "REPLY_OVERHEAD",
    "TOKENIZER_ENV",
    "estimate_input_tokens",
    "estimate_prompt_tokens",
    "heuristic_tokens",
    "precheck",
    "required_capabilities",
]

TOKENIZER_ENV = "TRIO_ORCHESTRATOR_TOKENIZER"
"""Set to ``heuristic`` to never load tiktoken (which downloads its encoding)."""
MESSAGE_OVERHEAD = 4
"""Tokens of framing per message (role, separators)."""
REPLY_OVERHEAD = 3
"""Tokens that prime the assistant's reply."""


def heuristic_tokens(text: str) -> int:
    """Return ``ceil(len(text) / 4)``: the four-characters-per-token rule of thumb."""
    return -(-len(text) // 4)


@functools.cache
def _counter() -> Callable[[str], int]:
    """The token counter: tiktoken's when it is installed and loads, else the heuristic.

    Loaded once: tiktoken fetches its encoding on first use, which may fail offline.
    """
    if os.environ.get(TOKENIZER_ENV) == "heuristic":
        return heuristic_tokens
    try:
        tiktoken: Any = importlib.import_module("tiktoken")
        encoding = tiktoken.get_encoding("cl100k_base")
    except Exception:
        return heuristic_tokens

    def count(text: str) -> int:
        return len(encoding.encode(text, disallowed_special=()))

    return count


def _message_text(message: Message) -> str:
    parts = [message.content, message.name or ""]
    for call in message.tool_calls:
        parts += [call.name, call.arguments]
    return "".join(parts)


def estimate_input_tokens(request: PromptRequest) -> tuple[int, ...]:
    """Estimate the tokens of each input of an embedding request (none for a chat)."""
    if request.embed is None:
        return ()
    count = _counter()
    return tuple(len(i) if isinstance(i, tuple) else count(i) for i in request.embed)


def estimate_prompt_tokens(request: PromptRequest) -> int:
    """Estimate the input tokens of ``request`` (messages, input, offered tools; or the
    inputs of an embedding request)."""
    if request.embed is not None:
        return sum(estimate_input_tokens(request))
    count = _counter()
    total = REPLY_OVERHEAD
    for message in request.chat():
        total += count(_message_text(message)) + MESSAGE_OVERHEAD
    for tool in request.params.tools:
        description = {"name": tool.name, "description": tool.description}
        total += count(json.dumps({**description, "parameters": dict(tool.parameters)}))
    return total


def required_capabilities(request: PromptRequest) -> frozenset[str]:
    """The capabilities a deployment needs to serve ``request``.

    ``embeddings`` for an embedding request; ``tools`` when tools are offered;
    ``json_mode`` when ``params.extra["response_format"]`` asks for JSON; ``vision`` when
    ``meta["vision"] == "1"`` (messages carry text only, so whoever converts image parts —
    the service — says so in ``meta``).
    """
    needed: set[str] = set()
    if request.embed is not None:
        needed.add("embeddings")
    if request.params.tools:
        needed.add("tools")
    response_format = request.params.extra.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    ):
        needed.add("json_mode")
    if request.meta.get("vision") == "1":
        needed.add("vision")
    return frozenset(needed)


def precheck(
    deployment: ModelDeployment,
    prompt_tokens: int,
    max_tokens: int | None,
    needed: frozenset[str],
) -> str | None:
    """Return why ``deployment`` cannot serve the request, or ``None`` when it can.

    Args:
        deployment: the candidate.
        prompt_tokens: the estimated input tokens.
        max_tokens: the request's ``max_tokens`` (``None``: at least one token must fit).
        needed: the capabilities the request needs.
    """
    # The registry fills every fact from the catalogue; one still unset is not checked.
    missing = needed.difference(deployment.capabilities or needed)
    if missing:
        return f"lacks {', '.join(sorted(missing))}"
    most = deployment.max_output_tokens
    if max_tokens is not None and most is not None and max_tokens > most:
        return f"max_tokens {max_tokens} > max_output_tokens {most}"
    wanted, window = prompt_tokens + (max_tokens or 1), deployment.context_window
    if window is not None and wanted > window:
        return f"needs ~{wanted} tokens > context window {window}"
    return None
