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

from ..catalogue.facts import ModelFacts
from ..pipeline import FinishedRequest, Outcome
from ..routing.keys import VirtualKeys
from ..storage.base import SpendRecord, day_of
from ..storage.writer import SpendWriter

__all__ = ["SpendListener"]


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
        completion = record.completion
        if record.outcome is not Outcome.COMPLETED or completion is None:
            return
        usage = completion.usage
        if usage is None:
            return
        asked = record.request.params.model
        facts = self.facts_of(asked)
        if facts is None and completion.model is not None:
            facts = self.facts_of(completion.model)
        cost = 0.0
        if facts is not None:
            cost = facts.cost(usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)
        key_id = record.request.meta.get("api_key_id", "")
        if key_id:
            self.keys.charge(key_id, cost)
        if self.writer is None:
            return
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
