"""The pipeline hooks observability installs: per-stage timing and trace spans."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from ..pipeline.job import Job
    from .metrics import StageTimes
    from .tracing import RequestTracer

__all__ = ["ObservationHooks"]


@attrs.define(eq=False, slots=True)
class _Observation:
    """What the hooks keep on one job: the open stage and when it began, the trace spans."""

    spans: Any = None
    stage: str | None = None
    stage_started: float = 0.0


class ObservationHooks:
    """Times each stage of each request and opens its trace spans (either may be off).

    Create it inside the Trio run that runs the pipeline (it reads that run's clock).

    Args:
        stage_times: where per-stage processing times go, or None not to time stages.
        tracer: opens the request's spans, or None not to trace.
    """

    def __init__(
        self, stage_times: StageTimes | None = None, tracer: RequestTracer | None = None
    ) -> None:
        self._tracer = tracer
        self._stage_times = None if stage_times is None else stage_times.histograms
        # The run's clock, read directly: trio.current_time() costs three calls per reading,
        # and stage timing reads it twice per stage of every request.
        self._clock = trio.lowlevel.current_clock().current_time

    def started(self, job: Job) -> None:
        """Begin observing ``job``; open its request span."""
        observation = _Observation()
        if self._tracer is not None:
            observation.spans = self._tracer.start(job.request)
        job.observation = observation

    def stage_entered(self, job: Job, stage: str) -> None:
        """Note the stage and its start; open its span."""
        observation: _Observation | None = job.observation
        if observation is None:  # submitted before the hooks were set
            return
        observation.stage = stage
        if self._stage_times is not None:
            observation.stage_started = self._clock()
        if observation.spans is not None:
            assert self._tracer is not None
            self._tracer.stage_started(observation.spans, stage)

    def stage_left(self, job: Job) -> None:
        """Observe the stage's processing time; close its span."""
        observation: _Observation | None = job.observation
        if observation is None or observation.stage is None:
            return
        if self._stage_times is not None:
            elapsed = self._clock() - observation.stage_started
            self._stage_times[observation.stage].observe(elapsed)
        observation.stage = None
        if observation.spans is not None:
            assert self._tracer is not None
            self._tracer.stage_ended(observation.spans)

    def inference(self, job: Job) -> AbstractContextManager[None] | None:
        """Run the worker call in the request's trace context, when tracing."""
        observation: _Observation | None = job.observation
        if observation is None or observation.spans is None:
            return None
        assert self._tracer is not None
        return self._tracer.generate(observation.spans)

    def finished(self, job: Job) -> None:
        """Close the open stage and the request's span."""
        self.stage_left(job)
        observation: _Observation | None = job.observation
        if observation is not None and observation.spans is not None:
            assert self._tracer is not None
            self._tracer.finish(observation.spans, job)
