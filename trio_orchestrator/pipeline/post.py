"""Post-processing: text filters that apply to streamed output and whole answers alike.

A :class:`PostProcessor` opens one :class:`TextFilter` per request. A filter sees the text
in pieces as the worker produces it (``feed``) and may hold some back; ``finish`` releases
what it held. The whole answer is ``feed(everything) + finish()``, so a streaming caller and
a waiting caller always see the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from ..types import PromptRequest

__all__ = ["PostProcessor", "StopSequences", "TextFilter", "TrimWhitespace", "open_filters"]


@runtime_checkable
class TextFilter(Protocol):
    """The per-request state of a post-processor."""

    @property
    def stopped(self) -> bool:
        """True once the filter wants no more text (generation may stop)."""

    def feed(self, text: str) -> str:
        """Take the next piece of text; return what may be released now."""

    def finish(self) -> str:
        """Return whatever was held back; no more text follows."""


@runtime_checkable
class PostProcessor(Protocol):
    """Opens a filter for each request, or returns ``None`` when it has nothing to do."""

    def open(self, request: PromptRequest) -> TextFilter | None:
        """Return this request's filter, or ``None`` to leave its text alone."""


@attrs.define(eq=False)
class _StopFilter:
    stops: tuple[str, ...]
    stopped: bool = False
    _held: str = ""

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buffer = self._held + text
        # The stop that completes first wins (ties: the one starting first) — all that a
        # stream can know — so the cut does not depend on how the text was chunked.
        hits = [(i + len(stop), i) for stop in self.stops if (i := buffer.find(stop)) != -1]
        if hits:
            self.stopped, self._held = True, ""
            return buffer[: min(hits)[1]]
        hold = max((_overlap(buffer, stop) for stop in self.stops), default=0)
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def finish(self) -> str:
        held, self._held = self._held, ""
        return held


def _overlap(text: str, stop: str) -> int:
    """The length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


@attrs.define(eq=False)
class StopSequences:
    """Ends the text before the first stop sequence to complete, and stops generation there.

    Args:
        stops: stop sequences applied to every request, besides each request's own
            ``params.stop``.
    """

    stops: Sequence[str] = ()

    def open(self, request: PromptRequest) -> TextFilter | None:
        """Return a stop filter when the request or the processor has stop sequences."""
        if not self.stops and not request.params.stop:
            return None
        stops = tuple(s for s in (*self.stops, *request.params.stop) if s)
        return _StopFilter(stops) if stops else None


@attrs.define(eq=False)
class _TrimFilter:
    stopped: bool = False
    _started: bool = False
    _pending: str = ""

    def feed(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        text = self._pending + text
        body = text.rstrip()
        self._pending = text[len(body) :]
        return body

    def finish(self) -> str:
        self._pending = ""
        return ""


@attrs.define(eq=False)
class TrimWhitespace:
    """Removes leading and trailing whitespace from the answer, also when streamed."""

    def open(self, request: PromptRequest) -> TextFilter | None:
        """Return a fresh trimming filter."""
        return _TrimFilter()


@attrs.define(eq=False)
class _Chain:
    filters: list[TextFilter]

    @property
    def stopped(self) -> bool:
        return any(f.stopped for f in self.filters)

    def feed(self, text: str) -> str:
        for f in self.filters:
            text = f.feed(text)
        return text

    def finish(self) -> str:
        text = ""
        for f in self.filters:
            text = f.feed(text) + f.finish() if text else f.finish()
        return text


def open_filters(processors: Sequence[PostProcessor], request: PromptRequest) -> TextFilter | None:
    """Open each processor for ``request``; return their chain, or ``None`` if all declined."""
    filters = []
    for processor in processors:
        f = processor.open(request)
        if f is not None:
            filters.append(f)
    if not filters:
        return None
    return filters[0] if len(filters) == 1 else _Chain(filters)
