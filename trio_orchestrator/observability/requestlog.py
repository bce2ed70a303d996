"""The request log: one record per request, whatever its outcome, written in batches.

Two parts. :class:`NotingWorker` is the outermost layer: for each worker call it makes the
request's :class:`~trio_orchestrator.types.RequestNotes` and sets them for the layers below,
which note what only they know (a retry layer its retries, the router its fallbacks and the
provider it called, the caches a hit, coalescing a shared call). :class:`RequestLogListener`
is a pipeline listener: when a request ends (completed, failed, shed, expired, cancelled) it
builds a :class:`~trio_orchestrator.storage.RequestRecord` from the request, its answer or
error, the pipeline's timings and those notes, priced as spend is
(:func:`~.spend.price`), and hands it to the
:class:`~trio_orchestrator.storage.RequestLogWriter` -- no I/O, no await on the request's
path.

Prompts and answers are kept only when ``[storage] log_content`` is on, or the request's
virtual key has ``"log_content": true`` in its metadata; then redacted (:class:`Redactor`)
and truncated.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import attrs

from ..catalogue.facts import ModelFacts
from ..errors import DeadlineExceeded, RateLimitExceeded, RequestCancelled, RequestError
from ..pipeline import FinishedRequest, Outcome
from ..routing.budget import BudgetExceeded
from ..routing.keys import VirtualKeys
from ..storage.base import RequestRecord
from ..storage.config import StorageConfig
from ..storage.writer import RequestLogWriter
from ..types import (
    PromptRequest,
    RequestNotes,
    set_request_notes,
)
from ..workers.base import EventSink, ModelWorker
from .spend import SpendListener, price

__all__ = [
    "DEFAULT_REDACTIONS",
    "ErrorStatus",
    "NotingWorker",
    "Redactor",
    "RequestLogListener",
    "outcome_of",
]

logger = logging.getLogger("trio_orchestrator.requestlog")

DEFAULT_REDACTIONS = (
    r"\bsk-[A-Za-z0-9_\-]{16,}",  # OpenAI, Anthropic (sk-ant-…) and many compatible keys
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{8,}",
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bAIza[0-9A-Za-z_\-]{35}\b",  # Google API keys
)
"""What is always redacted from logged content: strings shaped like API keys."""

REDACTED = "[REDACTED]"
TRUNCATED = "…[truncated]"

ErrorStatus = Callable[[BaseException], tuple[int, str]]
"""The HTTP status and OpenAI error code a client got for an error (the service's mapping)."""

# A refusal by the gateway itself, before any upstream was asked.
_REFUSALS = (BudgetExceeded, RateLimitExceeded)


def _error_status(error: BaseException) -> tuple[int, str]:
    """Without the service (the library's gateway): no HTTP status, the error's class."""
    return 0, type(error).__name__


@attrs.frozen
class Redactor:
    """Replaces what looks like a secret with ``[REDACTED]``, then cuts to ``max_chars``.

    Args:
        patterns: regular expressions to redact, beside :data:`DEFAULT_REDACTIONS`.
        max_chars: the most characters kept.
    """

    patterns: Iterable[str] = ()
    max_chars: int = 4096
    _compiled: tuple[re.Pattern[str], ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # One by one: a configured pattern may carry global flags (``(?i)…``) of its own.
        compiled = tuple(re.compile(p) for p in (*DEFAULT_REDACTIONS, *self.patterns))
        object.__setattr__(self, "_compiled", compiled)

    def __call__(self, text: str) -> str:
        """``text`` redacted and truncated."""
        for pattern in self._compiled:
            text = pattern.sub(REDACTED, text)
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + TRUNCATED
        return text


def outcome_of(record: FinishedRequest) -> str:
    """The request log's outcome of a finished request (see
    :data:`~trio_orchestrator.storage.OUTCOMES`)."""
    outcome, error = record.outcome, record.error
    if outcome is Outcome.COMPLETED:
        return "completed"
    if outcome is Outcome.EXPIRED or isinstance(error, DeadlineExceeded):
        return "timed_out"
    if outcome is Outcome.CANCELLED or isinstance(error, RequestCancelled):
        return "cancelled"
    if outcome is Outcome.SHED or isinstance(error, (*_REFUSALS, RequestError)):
        return "rejected"
    return "failed"


@attrs.define(eq=False)
class NotingWorker:
    """The outermost layer: gives each call its :class:`~trio_orchestrator.types.RequestNotes`
    for the layers below to note into, and keeps them for :class:`RequestLogListener`
    (which takes them back, by request id, when the request ends).

    Args:
        inner: the worker it wraps.
    """

    _inner: ModelWorker
    _notes: dict[str, RequestNotes] = attrs.field(factory=dict, init=False)

    @property
    def inner(self) -> ModelWorker:
        """The worker this layer wraps."""
        return self._inner

    def generate(self, request: PromptRequest, emit: EventSink) -> Coroutine[Any, Any, None]:
        """``inner``'s call, with fresh notes set for ``request``.

        Not a coroutine function: the notes are set in the calling task's context when
        called (the caller awaits the call at once, in the same task), and the call is
        ``inner``'s own coroutine, with no frame of this layer resumed at every event. The
        notes stay set in that task until its next call replaces them: every call of the
        worker stack comes through here, so none reads another's.
        """
        notes = self._notes[request.request_id] = RequestNotes()
        set_request_notes(notes)
        return self._inner.generate(request, emit)

    def take(self, request_id: str) -> RequestNotes | None:
        """The notes of ``request_id``'s call, forgotten here (None: no call was made)."""
        return self._notes.pop(request_id, None)


@attrs.define(eq=False)
class RequestLogListener:
    """Builds each finished request's record and hands it to the writer.

    Args:
        writer: where records go.
        keys: the virtual keys (a key may turn content logging on for itself).
        facts_of: the priced facts of a model name (as spend prices).
        provider_of: the provider label serving a model name (when the router noted none).
        noting: the layer holding each call's notes (None: none are kept).
        log_content: keep prompts and answers of every request.
        redactor: what logged content goes through.
        error_status: the HTTP status and error code a client got for an error.
        clock: Unix time (the record's ``created``).
        spend: the spend listener, called first with each finished request: the request is
            priced once, for spend and its record (None: priced here; spend is then a
            listener of its own).
    """

    writer: RequestLogWriter
    keys: VirtualKeys
    facts_of: Callable[[str], ModelFacts | None]
    provider_of: Callable[[str], str]
    noting: NotingWorker | None = None
    log_content: bool = False
    redactor: Redactor = attrs.field(factory=Redactor)
    error_status: ErrorStatus = _error_status
    clock: Callable[[], float] = time.time
    spend: SpendListener | None = None

    def __call__(self, record: FinishedRequest) -> None:
        """Record one finished request (never raises, never waits); with ``spend``, charge
        it first."""
        request, completion = record.request, record.completion
        cost = None if self.spend is None else self._charge(self.spend, record)
        notes = None if self.noting is None else self.noting.take(request.request_id)
        fields: dict[str, Any] = {}
        if completion is not None and completion.usage is not None:
            usage = completion.usage
            fields.update(
                prompt_tokens=usage.input_tokens,
                cached_tokens=usage.cached_input_tokens,
                completion_tokens=usage.output_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cost=(
                    price(usage, request.params.model, completion.model, self.facts_of)
                    if cost is None
                    else cost
                ),
            )
        if record.error is not None:
            fields["status"], fields["error_type"] = self.error_status(record.error)
        if notes is not None:
            fields.update(
                provider=notes.provider or self.provider_of(request.params.model),
                fallbacks=notes.fallbacks,
                cache_hit=notes.cache_hit,
                coalesced=notes.coalesced,
                attempts=0 if notes.cache_hit or notes.coalesced else 1 + notes.retries,
            )
            fields["attempts"] += notes.fallbacks
        else:
            fields["provider"] = self.provider_of(request.params.model)
        outcome = outcome_of(record)
        if outcome == "rejected":
            fields["attempts"] = fields["fallbacks"] = 0
        key_id = request.meta.get("api_key_id", "")
        if self._logs_content(key_id):
            fields["request"] = self.redactor(_prompt_json(request))
            if completion is not None:
                fields["response"] = self.redactor(completion.text)
        ttft = record.time_to_first_token
        self.writer.add(
            RequestRecord(
                id=request.request_id,
                created=self.clock(),
                key_id=key_id,
                model=request.params.model,
                served_model=None if completion is None else completion.model,
                outcome=outcome,
                latency_ms=record.latency * 1000,
                ttft_ms=None if ttft is None else ttft * 1000,
                stream=request.streaming,
                **fields,
            )
        )

    @staticmethod
    def _charge(spend: SpendListener, record: FinishedRequest) -> float | None:
        # Spend failing must not lose the record, as when the two were separate listeners.
        try:
            return spend.charge(record)
        except Exception:
            logger.exception("spend failed to charge a request; it was ignored")
            return None

    def reconfigure(self, storage: StorageConfig, /) -> list[str]:
        """Apply a reloaded ``[storage]``'s content settings (``log_content``, ``redact``,
        ``log_content_max_chars``) to the requests that end from now on."""
        self.log_content = storage.log_content
        self.redactor = Redactor(storage.redact, storage.log_content_max_chars)
        return []

    def _logs_content(self, key_id: str) -> bool:
        if self.log_content:
            return True
        record = self.keys.get(key_id) if key_id else None
        return record is not None and record.metadata.get("log_content") is True


def _prompt_json(request: PromptRequest) -> str:
    """The prompt as the request log keeps it: its messages as JSON."""
    messages = [{"role": m.role, "content": m.content} for m in request.chat()]
    return json.dumps(messages, ensure_ascii=False)
