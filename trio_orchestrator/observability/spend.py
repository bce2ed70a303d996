"""Spend: every completed request priced and charged to its key, model, provider and day.

A pipeline listener (:class:`SpendListener`): when a request completes with a reported
usage, it prices the tokens (prompt, cached prompt, completion -- reasoning tokens are
completion tokens and cost the output price) by the model's facts, charges the key's
in-memory budget at once, and hands a :class:`~trio_orchestrator.storage.SpendRecord` to
the :class:`~trio_orchestrator.storage.SpendWriter`, which writes in batches off the
request path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
import trio

from ..catalogue.facts import ModelFacts
from ..events import Accumulator, StreamEvent, Usage
from ..pipeline import FinishedRequest, Outcome
from ..routing.keys import VirtualKeys
from ..storage.base import SpendRecord, day_of
from ..storage.writer import SpendWriter
from ..types import PromptRequest
from ..workers.base import EventSink, ModelWorker

__all__ = ["SpendListener", "SpendingWorker", "price"]


def price(
    usage: Usage, asked: str, answered: str | None, facts_of: Callable[[str], ModelFacts | None]
) -> float:
    """What ``usage`` cost in US dollars: priced by the facts of the model asked for, else of
    the model that answered (``answered``), else 0 (no price known). Spend and the request
    log both price with it, so their costs agree."""
    facts = facts_of(asked)
    if facts is None and answered is not None:
        facts = facts_of(answered)
    if facts is None:
        return 0.0
    return facts.cost(usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)


@attrs.define(eq=False)
class SpendListener:
    """Prices each completed request and records it.

    Args:
        writer: where records go (None: only the in-memory budgets are charged).
        keys: the virtual keys whose budgets are charged.
        facts_of: the priced facts of a model name, or None when it has no price.
        provider_of: the provider label serving a model name.
        clock: Unix time (the record's UTC day).
    """

    writer: SpendWriter | None
    keys: VirtualKeys
    facts_of: Callable[[str], ModelFacts | None]
    provider_of: Callable[[str], str]
    clock: Callable[[], float] = time.time

    def __call__(self, record: FinishedRequest) -> None:
        """Price and record one finished request (completed ones with a usage only)."""
        self.charge(record)

    def charge(self, record: FinishedRequest) -> float | None:
        """Price and record one finished request; what it cost (None: not charged, being
        not completed or without a usage). The request log's listener calls it so that a
        request is priced once for both."""
        completion = record.completion
        if record.outcome is not Outcome.COMPLETED or completion is None:
            return None
        usage = completion.usage
        if usage is None:
            return None
        asked = record.request.params.model
        cost = price(usage, asked, completion.model, self.facts_of)
        key_id = record.request.meta.get("api_key_id", "")
        if key_id:
            self.keys.charge(key_id, cost)
        if self.writer is not None:
            self.writer.add(
                SpendRecord(
                    day=day_of(self.clock()),
                    key_id=key_id,
                    model=asked,
                    provider=self.provider_of(asked),
                    prompt_tokens=usage.input_tokens,
                    cached_tokens=usage.cached_input_tokens,
                    completion_tokens=usage.output_tokens,
                    reasoning_tokens=usage.reasoning_tokens,
                    cost=cost,
                )
            )
        return cost


@attrs.define(eq=False)
class SpendingWorker:
    """A worker whose completed requests are priced and charged as the pipeline's are, for
    the calls the gateway makes on a caller's behalf outside the pipeline (the semantic
    cache's embedding call): the request carries the caller's ``meta``, so its cost goes
    to the caller's key and spend records.

    Args:
        inner: the worker making the call.
        listener: gives the spend listener to charge (made when charged: the gateway's
            spend writer is opened after its layers).
    """

    inner: ModelWorker
    listener: Callable[[], SpendListener]

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Answer through ``inner``, then charge the completed answer.

        Raises:
            WorkerError: whatever ``inner`` raised (nothing is charged here: an attempt's
                cost is the router's to charge).
        """
        accumulator = Accumulator()
        started = trio.current_time()

        async def record(event: StreamEvent) -> None:
            accumulator.add(event)
            await emit(event)

        await self.inner.generate(request, record)
        completion = accumulator.completion(request.request_id)
        elapsed = trio.current_time() - started
        finished = FinishedRequest(request, Outcome.COMPLETED, completion, None, elapsed, None)
        self.listener()(finished)
