"""Output sinks: where the streaming stage also delivers every completed answer."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs

from ..events import Completion
from ..types import PromptRequest

__all__ = ["CallbackSink", "MemorySink", "OutputSink"]


@runtime_checkable
class OutputSink(Protocol):
    """Receives each completed answer. Runs in the streaming stage, so it must not block:
    hand slow work to a task of your own (for example through a memory channel)."""

    def deliver(self, request: PromptRequest, completion: Completion) -> None:
        """Take one completed answer."""


@attrs.define(eq=False)
class MemorySink:
    """Keeps the last ``maxlen`` completions in memory."""

    maxlen: int = 1000
    completions: deque[Completion] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.completions = deque(maxlen=self.maxlen)

    def deliver(self, request: PromptRequest, completion: Completion) -> None:
        """Append the completion, dropping the oldest when full."""
        self.completions.append(completion)


@attrs.define(eq=False)
class CallbackSink:
    """Calls a function with each request and its completion."""

    callback: Callable[[PromptRequest, Completion], None]

    def deliver(self, request: PromptRequest, completion: Completion) -> None:
        """Call the callback."""
        self.callback(request, completion)
