"""Frozen snapshots of a pipeline's counters."""

from __future__ import annotations

import attrs

from .dead_letters import DeadLetterStatistics
from .priority import PriorityStatistics

__all__ = ["PipelineStatistics", "StageStatistics"]


@attrs.frozen
class StageStatistics:
    """One stage and its input channel."""

    name: str
    """The stage: ``rag``, ``assemble``, ``inference``, ``post`` or ``stream``."""
    capacity: int
    """The input channel's buffer size."""
    queue_depth: int
    """Requests waiting in the input channel now."""
    peak_depth: int
    """The most requests ever waiting in the input channel at once."""
    processed: int
    """Requests the stage has taken from its channel."""
    shed: int
    """Requests shed because this stage's input channel was full."""
    held: int = 0
    """Requests taken from the channel and held waiting for a slot (the inference stage's
    priority queue, at most ``priority.max_waiting``); 0 for the other stages."""


@attrs.frozen
class PipelineStatistics:
    """A snapshot of a pipeline. Always ``submitted == completed + failed + shed + expired +
    cancelled + in_flight``."""

    submitted: int
    """Requests given to submit, try_submit or stream."""
    completed: int
    """Requests answered."""
    failed: int
    """Requests whose worker raised."""
    shed: int
    """Requests refused at admission or shed by a full stage channel."""
    expired: int
    """Requests whose deadline passed."""
    cancelled: int
    """Requests cancelled by their caller or by shutdown."""
    in_flight: int
    """Requests not yet ended."""
    stages: tuple[StageStatistics, ...]
    """The five stages, in order."""
    inference_active: int
    """Requests holding an inference slot now."""
    inference_concurrency: int
    """Inference slots."""
    waiting_to_enter: int
    """Callers of submit waiting for room in the entry channel."""
    dead_letters: DeadLetterStatistics
    """The dead-letter queue."""
    sink_errors: int
    """Exceptions raised by output sinks (logged and otherwise ignored)."""
    priority: PriorityStatistics | None = None
    """Priority admission to inference, when enabled."""

    def stage(self, name: str) -> StageStatistics:
        """Return the statistics of the stage called ``name``."""
        return next(s for s in self.stages if s.name == name)
