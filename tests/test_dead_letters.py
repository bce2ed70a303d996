"""The dead-letter queue is a bounded ring buffer of whole requests."""

from __future__ import annotations

import pytest

from trio_orchestrator import DeadLetter, DeadLetterQueue, PromptRequest
from trio_orchestrator.pipeline.dead_letters import DeadLetterStatistics


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


def test_a_letter_shed_again_replaces_its_older_copy() -> None:
    """The same request shed twice is held once, as the newest, and counted twice."""
    queue = DeadLetterQueue(capacity=2)
    queue.add(letter(1))
    queue.add(letter(2))
    queue.add(letter(1))
    assert [d.id for d in queue] == ["r2", "r1"]
    assert queue.statistics() == DeadLetterStatistics(
        size=2, capacity=2, total=3, dropped=0, replayed=0
    )


def test_list_limit_get_and_iteration() -> None:
    """list(limit) gives the newest letters oldest first; get() finds one without removing it."""
    queue = DeadLetterQueue(capacity=5)
    letters = [letter(i) for i in range(4)]
    for held in letters:
        queue.add(held)
    assert [d.id for d in queue.list(1)] == ["r3"]
    assert [d.id for d in queue.list(3)] == ["r1", "r2", "r3"]
    assert [d.id for d in queue.list()] == ["r0", "r1", "r2", "r3"]
    assert queue.get("r1") is letters[1]
    assert len(queue) == 4
    for held in queue:  # iterating over a copy: the queue may change meanwhile
        queue.take(held.id)
    assert len(queue) == 0
    assert queue.statistics().replayed == 4
    with pytest.raises(KeyError):
        queue.get("r1")


async def test_take_for_replay_counts_the_replay() -> None:
    """take_for_replay() removes the letter and counts one replay."""
    queue = DeadLetterQueue(capacity=1)
    queue.add(letter(7))
    assert (await queue.take_for_replay("r7")).id == "r7"
    assert queue.statistics() == DeadLetterStatistics(
        size=0, capacity=1, total=1, dropped=0, replayed=1
    )


def test_a_capacity_of_one_is_allowed_and_a_smaller_one_named() -> None:
    """Capacity 1 works; below it the error gives the value."""
    assert DeadLetterQueue(capacity=1).capacity == 1
    with pytest.raises(ValueError, match=r"^capacity must be at least 1, got -2$"):
        DeadLetterQueue(capacity=-2)
