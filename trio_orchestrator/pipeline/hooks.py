"""Hooks: how observability follows a request through the stages.

The pipeline calls a :class:`PipelineHooks` object, when one is set, at a few points of each
request's journey. With none set (the default) each point costs one attribute test. The
hooks keep whatever they need per request (a trace span, a stage's start time) in the job's
``observation`` slot, which is how trace context crosses the memory channels.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .job import Job

__all__ = ["PipelineHooks"]


class PipelineHooks(Protocol):
    """What the pipeline tells its observer. Every method must be quick and must not raise."""

    def started(self, job: Job) -> None:
        """A request was submitted; runs in the caller's task."""

    def stage_entered(self, job: Job, stage: str) -> None:
        """Stage ``stage`` took the request off its input channel."""

    def stage_left(self, job: Job) -> None:
        """The current stage hands the request on to the next one."""

    def inference(self, job: Job) -> AbstractContextManager[None] | None:
        """Wraps the worker call, in the task that runs it (context set here reaches the
        worker); ``None`` when there is nothing to wrap it in (then the call holds no frame
        of the pipeline's for its whole life, a stream's)."""

    def finished(self, job: Job) -> None:
        """The request ended; ``job.outcome`` is set."""
