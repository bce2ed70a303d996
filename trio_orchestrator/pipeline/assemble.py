"""Prompt assembly: the second stage turns a request and its documents into the chat to send."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from ..types import Document, Message, PromptRequest

__all__ = ["Assembler", "DefaultAssembler"]


@runtime_checkable
class Assembler(Protocol):
    """Builds the request the worker sees."""

    def assemble(self, request: PromptRequest, documents: Sequence[Document]) -> PromptRequest:
        """Return the request to send: its messages are the whole chat for the model."""


@attrs.define(eq=False)
class DefaultAssembler:
    """System prompt, then retrieved context, then the conversation (history and input).

    Args:
        system_prompt: put first, as a system message, when given.
        context_header: introduces the retrieved documents in the system message.
    """

    system_prompt: str | None = None
    context_header: str = "Answer using the following context where it is relevant."

    def assemble(self, request: PromptRequest, documents: Sequence[Document]) -> PromptRequest:
        """Return ``request`` with the system prompt and context prepended to its chat."""
        if self.system_prompt is None and not documents:
            return request  # the worker sends request.chat(), which includes the input
        parts = [self.system_prompt] if self.system_prompt else []
        if documents:
            context = "\n\n".join(f"[{d.id}]\n{d.text}" for d in documents)
            parts.append(f"{self.context_header}\n\n{context}")
        head: tuple[Message, ...] = (Message("system", "\n\n".join(parts)),) if parts else ()
        return attrs.evolve(
            request, messages=head + request.chat(), input=None, context=tuple(documents)
        )
