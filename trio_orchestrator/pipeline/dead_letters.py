"""The dead-letter queue: a bounded ring buffer of whole shed requests."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import ClassVar

import attrs

from ..types import PromptRequest

__all__ = ["DeadLetter", "DeadLetterQueue", "DeadLetterStatistics"]


@attrs.frozen
class DeadLetter:
    """A shed request.

    Attributes:
        request: the request exactly as it was submitted.
        stage: the stage that shed it.
        reason: why.
        time: when, on Trio's clock.
    """

    request: PromptRequest
    stage: str
    reason: str
    time: float

    @property
    def id(self) -> str:
        """The request's id, which also names the letter."""
        return self.request.request_id


@attrs.frozen
class DeadLetterStatistics:
    """A snapshot of a :class:`DeadLetterQueue`."""

    size: int
    """Letters held now."""
    capacity: int
    """Letters it can hold."""
    total: int
    """Letters ever added."""
    dropped: int
    """Letters pushed out because the queue was full."""
    replayed: int
    """Letters taken out for replay."""


@attrs.define(eq=False)
class DeadLetterQueue:
    """Holds the last ``capacity`` shed requests, whole, for inspection and replay."""

    capacity: int = 1000
    _letters: OrderedDict[str, DeadLetter] = attrs.field(init=False, factory=OrderedDict)
    _total: int = attrs.field(init=False, default=0)
    _dropped: int = attrs.field(init=False, default=0)
    _replayed: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {self.capacity}")

    def add(self, letter: DeadLetter) -> None:
        """Add a letter, dropping the oldest when full."""
        self._letters.pop(letter.id, None)
        self._letters[letter.id] = letter
        self._total += 1
        if len(self._letters) > self.capacity:
            self._letters.popitem(last=False)
            self._dropped += 1

    def __len__(self) -> int:
        return len(self._letters)

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(list(self._letters.values()))

    def list(self, limit: int | None = None) -> list[DeadLetter]:
        """Return the letters, oldest first (the last ``limit`` of them when given)."""
        letters = list(self._letters.values())
        return letters if limit is None else letters[-limit:]

    def get(self, letter_id: str) -> DeadLetter:
        """Return the letter with this id.

        Raises:
            KeyError: no such letter (never added, replayed, or pushed out).
        """
        return self._letters[letter_id]

    def take(self, letter_id: str) -> DeadLetter:
        """Remove and return a letter for replay.

        Raises:
            KeyError: no such letter.
        """
        letter = self._letters.pop(letter_id)
        self._replayed += 1
        return letter

    async def take_for_replay(self, letter_id: str) -> DeadLetter:
        """Like :meth:`take`; a queue shared between processes overrides it to make sure a
        letter is replayed by one process only.

        Raises:
            KeyError: no such letter.
        """
        return self.take(letter_id)

    metric_kind: ClassVar[str] = "dead_letters"
    metric_counters: ClassVar[tuple[str, ...]] = ("total", "dropped", "replayed")

    def statistics(self) -> DeadLetterStatistics:
        """Return a snapshot of the queue's counters."""
        return DeadLetterStatistics(
            len(self._letters), self.capacity, self._total, self._dropped, self._replayed
        )
