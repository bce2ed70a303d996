"""The dead-letter queue is a bounded ring buffer of whole requests."""

from __future__ import annotations

import pytest

from trio_orchestrator import DeadLetter, DeadLetterQueue, PromptRequest


def letter(i: int) -> DeadLetter:
    """A dead letter for request ``r{i}``."""
    return DeadLetter(PromptRequest(input=f"r{i}", request_id=f"r{i}"), "inference", "full", 0.0)


def test_the_queue_keeps_the_newest_and_counts_what_it_dropped() -> None:
    """Past its capacity, the oldest letters are dropped and counted."""
    queue = DeadLetterQueue(capacity=3)
    for i in range(5):
        queue.add(letter(i))
    assert [d.id for d in queue.list()] == ["r2", "r3", "r4"]
    stats = queue.statistics()
    assert (stats.size, stats.total, stats.dropped) == (3, 5, 2)


def test_take_removes_a_letter_for_replay() -> None:
    """take() returns the whole request and removes it; an unknown id is a KeyError."""
    queue = DeadLetterQueue(capacity=3)
    queue.add(letter(1))
    assert queue.take("r1").request.input == "r1"
    assert len(queue) == 0
    with pytest.raises(KeyError):
        queue.take("r1")


def test_capacity_must_be_positive() -> None:
    """A queue that can hold nothing is refused."""
    with pytest.raises(ValueError, match="at least 1"):
        DeadLetterQueue(capacity=0)
