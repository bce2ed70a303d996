"""An offline, deterministic worker that answers with the last user message."""

from __future__ import annotations

import json
import re
from typing import ClassVar

import attrs
import trio

from ..errors import UnsupportedParameter
from ..events import Done, Embeddings, TextDelta, ToolCallDelta, ToolCallStart, Usage
from ..types import PromptRequest, ToolCall
from ..validators import non_negative_time
from .base import EventSink
from .embeddings import fake_vector, input_tokens

__all__ = ["EchoWorker", "split_tokens"]

# Bounds the memory one fake embedding request can ask for (text-embedding-3-large has 3072).
_MOST_DIMENSIONS = 4096

_TOKEN = re.compile(r"\S+\s*|\s+")


def split_tokens(text: str) -> list[str]:
    """Split ``text`` into word-like tokens whose concatenation is ``text`` exactly."""
    return _TOKEN.findall(text)


@attrs.define(eq=False)
class EchoWorker:
    """Answers with the last user message, token by token, and needs no network or key.

    With tools offered and ``tool_choice`` ``"required"`` (or naming a function), it calls the
    first (or named) tool with ``{"input": <last user message>}`` instead.

    An embedding request gets deterministic fake vectors: the same input always gets the
    same unit vector (of ``params.extra["dimensions"]`` values, default
    ``EMBEDDING_DIMENSIONS``), with no meaning, so the offline service answers
    ``/v1/embeddings`` as it answers chats.

    Args:
        token_delay: seconds between tokens.
        first_token_delay: seconds before the first token.
        prefix: text put before the echoed message.
        model: the model name reported in ``Done``.
    """

    token_delay: float = attrs.field(default=0.0, validator=non_negative_time)
    first_token_delay: float = attrs.field(default=0.0, validator=non_negative_time)
    prefix: str = ""
    model: str = "echo"

    EMBEDDING_DIMENSIONS: ClassVar[int] = 16
    """The length of a fake vector when the request names no ``dimensions``."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Echo the request; see the class docstring."""
        if request.embed is not None:
            await self._embed(request, emit)
            return
        chat = request.chat()
        prompt = next((m.content for m in reversed(chat) if m.role == "user"), "")
        input_tokens = sum(len(m.content.split()) for m in chat)
        if self.first_token_delay:
            await trio.sleep(self.first_token_delay)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        call = self._tool_call(request, prompt)
        if call is not None:
            await emit(ToolCallStart(0, call.id, call.name))
            await emit(ToolCallDelta(0, call.arguments))
            usage = Usage(input_tokens, 1)
            await emit(usage)
            await emit(Done("tool_calls", "", usage, (call,), self.model))
            return
        await self._echo(request, self.prefix + prompt, input_tokens, emit)

    async def _echo(
        self, request: PromptRequest, text: str, input_tokens: int, emit: EventSink
    ) -> None:
        tokens = split_tokens(text)
        limit = request.params.max_tokens
        finish_reason = "stop"
        if limit is not None and len(tokens) > limit:
            tokens, finish_reason = tokens[:limit], "length"
        for i, token in enumerate(tokens):
            if i and self.token_delay:
                await trio.sleep(self.token_delay)
            await emit(TextDelta(token))
        usage = Usage(input_tokens, len(tokens))
        await emit(usage)
        await emit(Done(finish_reason, "".join(tokens), usage, (), self.model))

    async def _embed(self, request: PromptRequest, emit: EventSink) -> None:
        assert request.embed is not None
        dimensions = request.params.extra.get("dimensions")
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            dimensions = self.EMBEDDING_DIMENSIONS
        elif dimensions > _MOST_DIMENSIONS:
            message = f"the echo worker's vectors have at most {_MOST_DIMENSIONS} dimensions"
            raise UnsupportedParameter("dimensions", message, provider="echo")
        if self.first_token_delay:
            await trio.sleep(self.first_token_delay)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        await emit(Embeddings(tuple(fake_vector(i, dimensions) for i in request.embed)))
        usage = Usage(sum(input_tokens(i) for i in request.embed), 0)
        await emit(usage)
        await emit(Done("stop", "", usage, (), self.model))

    def model_names(self) -> tuple[str, ...]:
        """The one model it answers as."""
        return (self.model,)

    @staticmethod
    def _tool_call(request: PromptRequest, prompt: str) -> ToolCall | None:
        tools, choice = request.params.tools, request.params.tool_choice
        if not tools or choice in (None, "auto", "none"):
            return None
        name = tools[0].name
        if isinstance(choice, dict):
            name = str(choice.get("function", {}).get("name", name))
        return ToolCall(f"call_{request.request_id[-12:]}", name, json.dumps({"input": prompt}))
