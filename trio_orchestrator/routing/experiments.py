"""A/B experiments: sticky assignment, per-variant outcomes, automatic rollback.

:class:`Experiments` holds every configured experiment's state; :class:`ExperimentLayer` is
the one place in the request path where it acts, the outermost worker of the gateway::

    request ─▶ ExperimentLayer ─▶ key policies ─▶ cache … ─▶ router ─▶ provider
                 │ assign (or take the service's stamp), apply the variant's overrides
                 └ record the outcome: success or failure, latency, tokens, cost

Assignment is deterministic: the first 8 bytes of SHA-256 over ``"<experiment id>\\0<unit>"``
as a fraction of 2**64, laid over the variants' normalised shares (never Python's
``hash()``, which is salted per process). A unit is the caller's API key id, a session or
the OpenAI ``user`` (``sticky``); without one the request id is used. An experiment that is
rolled back or stopped sends every request to its control.

After every outcome, each variant with ``min_samples`` (as its control) is tested against
control (:mod:`.experiment_stats`); one significantly worse beyond the margins rolls the
experiment back. Outcomes are kept as running sums, written as increments to the store
(``add_experiments``) every flush interval and loaded at start, so the statistics and the
status survive a restart.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import trio

from ..catalogue.facts import ModelFacts
from ..events import StreamEvent, Usage
from ..storage.base import ExperimentRecord, StorageUnavailable, Store, VariantSums
from ..types import Message, PromptRequest
from ..workers.base import EventSink, ModelWorker
from .experiment_config import ExperimentConfig, ExperimentsConfig, VariantConfig
from .experiment_stats import (
    Interval,
    Moments,
    log_latency_worse_p,
    mean_interval,
    proportion_worse_p,
    wilson,
)

__all__ = [
    "LATENCY_BUCKETS",
    "STATUSES",
    "Assignment",
    "ExperimentLayer",
    "Experiments",
    "VariantView",
    "unit_point",
]

logger = logging.getLogger("trio_orchestrator.experiments")

STATUSES = ("running", "rolled_back", "stopped")
"""An experiment's status."""
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""The latency histogram's bucket bounds, in seconds."""
META_EXPERIMENT = "experiment"
META_VARIANT = "experiment_variant"
# A stamp is honoured only with this process's token: a client's own meta labels (the
# native API takes them) cannot pick a variant and skew its numbers.
META_TOKEN = "experiment_stamp"
_FLUSH_TIMEOUT = 5.0  # seconds the last write at shutdown may take


def unit_point(experiment: str, unit: str) -> float:
    """Where ``unit`` falls in [0, 1) for ``experiment``: stable across processes and runs."""
    digest = hashlib.sha256(f"{experiment}\0{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@attrs.frozen
class Assignment:
    """A request's experiment and variant."""

    experiment: str
    variant: str

    @property
    def header(self) -> str:
        """The ``x-experiment`` header's value, ``id=variant``."""
        return f"{self.experiment}={self.variant}"


def _plus(sums: VariantSums, more: VariantSums) -> VariantSums:
    """``sums`` with ``more``'s added to it, field by field (the variant's name kept)."""
    added = (a + b for a, b in zip(attrs.astuple(sums)[1:], attrs.astuple(more)[1:], strict=True))
    return VariantSums(sums.variant, *added)


def _log_latency(sums: VariantSums) -> Moments:
    """The moments of a variant's log latencies (over successes only: a fast failure is no
    evidence of a fast variant)."""
    return Moments(sums.requests - sums.errors, sums.log_latency_sum, sums.log_latency_squares)


def _feedback(sums: VariantSums) -> Moments:
    """The moments of a variant's feedback scores."""
    return Moments(sums.feedback_n, sums.feedback_sum, sums.feedback_squares)


@attrs.define(eq=False)
class _Variant:
    config: VariantConfig
    total: VariantSums = attrs.field()
    unsaved: VariantSums = attrs.field()
    recent: collections.deque[float] = attrs.field(factory=collections.deque)
    buckets: list[int] = attrs.field(factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    seconds: float = 0.0  # summed over ``buckets``: this process's successes

    @total.default
    @unsaved.default
    def _nothing(self) -> VariantSums:
        return VariantSums(self.config.name)

    def add(self, ok: bool, latency: float, tokens: int, cost: float) -> None:
        if ok:
            log = math.log(max(latency, 1e-6))
            outcome = VariantSums(
                self.config.name, 1, 0, latency, log, log * log, cost=cost, tokens=tokens
            )
            self.recent.append(latency)
            self.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
            self.seconds += latency
        else:
            outcome = VariantSums(self.config.name, 1, 1, cost=cost, tokens=tokens)
        self.count(outcome)

    def add_feedback(self, score: float) -> None:
        self.count(
            VariantSums(
                self.config.name, feedback_n=1, feedback_sum=score, feedback_squares=score * score
            )
        )

    def count(self, more: VariantSums) -> None:
        """Add ``more`` to the total and to what is not yet stored."""
        self.total = _plus(self.total, more)
        self.unsaved = _plus(self.unsaved, more)

    def stored(self, sums: VariantSums) -> None:
        """Take ``sums`` (every process's, as stored) as the total, plus what this process
        counted since it last wrote."""
        self.total = _plus(sums, self.unsaved)


@attrs.frozen
class VariantView:
    """A variant's numbers as metrics read them.

    Attributes:
        experiment: the experiment's id.
        variant: the variant's name.
        requests: requests finished (since the experiment began, restarts included).
        errors: of those, failed.
        latency_buckets: successes per latency bucket (:data:`LATENCY_BUCKETS`, then
            +Inf), since this process started.
        latency_sum: seconds summed over the successes in ``latency_buckets``.
    """

    experiment: str
    variant: str
    requests: int
    errors: int
    latency_buckets: tuple[int, ...]
    latency_sum: float


@attrs.define(eq=False)
class _Experiment:
    config: ExperimentConfig
    variants: dict[str, _Variant]
    status: str = "running"
    reason: str = ""
    changed_at: float | None = None
    verdict: str = ""
    status_unsaved: bool = False

    @property
    def control(self) -> _Variant:
        return self.variants[self.config.control_name]

    def pick(self, point: float) -> str:
        if self.status != "running":
            return self.config.control_name
        shares = [v.share for v in self.config.variants]
        total = sum(shares)
        edge = 0.0
        for variant, share in zip(self.config.variants, shares, strict=True):
            edge += share / total
            if point < edge and share > 0:
                return variant.name
        return next(v.name for v in reversed(self.config.variants) if v.share > 0)


class Experiments:
    """Every configured experiment: assignment, outcomes, feedback, guard rails, storage.

    Args:
        config: the ``[experiments]`` section.
        price: the priced facts of a model name (for cost), or None when it has no price.
        clock: the wall clock for status change times (Unix seconds).
    """

    def __init__(
        self,
        config: ExperimentsConfig,
        price: Callable[[str], ModelFacts | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._price = price
        self._clock = clock
        self._experiments = {e.id: self._new(e) for e in config.experiments}
        self._requests: collections.OrderedDict[str, Assignment] = collections.OrderedDict()
        self._token = secrets.token_hex(16)

    def _new(self, config: ExperimentConfig) -> _Experiment:
        variants = {
            v.name: _Variant(v, recent=collections.deque(maxlen=self._config.latency_samples))
            for v in config.variants
        }
        return _Experiment(config, variants)

    @property
    def ids(self) -> tuple[str, ...]:
        """The experiments' ids, in configuration order."""
        return tuple(self._experiments)

    # ------------------------------------------------------------------ assignment

    def assign(self, request: PromptRequest, session: str | None = None) -> Assignment | None:
        """The experiment and variant ``request`` takes part in, or None.

        Args:
            request: the request (its model, meta and request id are read).
            session: the session, for ``sticky = "session"`` (the service reads it from
                the configured header); default: ``request.session``.
        """
        model = request.params.model
        for experiment in self._experiments.values():
            config = experiment.config
            if config.enabled and model in config.models:
                unit = self._unit(config, request, session) or request.request_id
                return Assignment(config.id, experiment.pick(unit_point(config.id, unit)))
        return None

    @staticmethod
    def _unit(config: ExperimentConfig, request: PromptRequest, session: str | None) -> str:
        if config.sticky == "key":
            return request.meta.get("api_key_id", "")
        if config.sticky == "user":
            return request.meta.get("user", "")
        if config.sticky == "session":
            return session or request.session or ""
        return ""

    def session_header(self, model: str) -> str | None:
        """The header holding the session of the experiment a request for ``model`` would
        join, when that experiment is sticky by session; else None."""
        for experiment in self._experiments.values():
            config = experiment.config
            if config.enabled and model in config.models:
                return config.session_header.lower() if config.sticky == "session" else None
        return None

    def stamp(
        self, request: PromptRequest, session: str | None = None
    ) -> tuple[PromptRequest, Assignment | None]:
        """``request`` with its assignment written into its meta (the layer honours it,
        so the service can name the variant in a response header before inference)."""
        assignment = self.assign(request, session)
        if assignment is None:
            return request, None
        meta = {
            **request.meta,
            META_EXPERIMENT: assignment.experiment,
            META_VARIANT: assignment.variant,
            META_TOKEN: self._token,
        }
        return attrs.evolve(request, meta=meta), assignment

    def assignment_of(self, request: PromptRequest) -> Assignment | None:
        """The assignment :meth:`stamp` put on ``request`` (when it names a known variant),
        else a fresh one."""
        name, variant = request.meta.get(META_EXPERIMENT), request.meta.get(META_VARIANT)
        experiment = self._experiments.get(name or "")
        stamped = request.meta.get(META_TOKEN) == self._token
        if stamped and experiment is not None and variant in experiment.variants:
            assert name is not None
            assert variant is not None
            return Assignment(name, variant)
        return self.assign(request)

    def apply(self, request: PromptRequest, assignment: Assignment) -> PromptRequest:
        """``request`` with ``assignment``'s variant's overrides applied."""
        variant = self._experiments[assignment.experiment].variants[assignment.variant].config
        return _overridden(request, variant)

    def remember(self, request_id: str, assignment: Assignment) -> None:
        """Keep ``request_id``'s assignment for feedback (the oldest is forgotten first)."""
        self._requests[request_id] = assignment
        self._requests.move_to_end(request_id)
        while len(self._requests) > self._config.feedback_capacity:
            self._requests.popitem(last=False)

    # ------------------------------------------------------------------ outcomes

    def record(
        self, assignment: Assignment, *, ok: bool, latency: float, usage: Usage | None, model: str
    ) -> None:
        """Count one finished request of ``assignment`` and apply the guard rails.

        Args:
            assignment: its experiment and variant.
            ok: it answered (False: it raised an error).
            latency: seconds from the layer to the end of its answer.
            usage: its token counts, if the upstream said.
            model: the model it asked for (its price gives the cost).
        """
        experiment = self._experiments.get(assignment.experiment)
        if experiment is None or assignment.variant not in experiment.variants:
            return
        tokens, cost = 0, 0.0
        if usage is not None:
            tokens = usage.input_tokens + usage.output_tokens
            facts = None if self._price is None else self._price(model)
            if facts is not None:
                cached = usage.cached_input_tokens
                cost = facts.cost(usage.input_tokens, usage.output_tokens, cached)
        experiment.variants[assignment.variant].add(ok, latency, tokens, cost)
        self._check(experiment)

    def feedback(self, request_id: str, score: float) -> Assignment | None:
        """Attach a feedback ``score`` to the variant that answered ``request_id``.

        Returns:
            Its assignment, or None when the request id is unknown (or forgotten).
        """
        assignment = self._requests.get(request_id)
        if assignment is None:
            return None
        experiment = self._experiments.get(assignment.experiment)
        if experiment is None or assignment.variant not in experiment.variants:
            return None
        experiment.variants[assignment.variant].add_feedback(score)
        return assignment

    def _check(self, experiment: _Experiment) -> None:
        """Roll ``experiment`` back when a variant is worse than control beyond a margin."""
        if experiment.status != "running":
            return
        guard = experiment.config.guard
        control = experiment.control.total
        if control.requests < guard.min_samples:
            return
        for name, variant in experiment.variants.items():
            sums = variant.total
            if name == experiment.config.control_name or sums.requests < guard.min_samples:
                continue
            reason = _worse(name, sums, control, guard.error_margin, guard.latency_margin)
            if reason is None or reason[0] >= guard.significance:
                continue
            text = f"{reason[1]} (p = {reason[0]:.2g} < {guard.significance})"
            if guard.action == "rollback":
                self._set_status(experiment, "rolled_back", text)
                logger.warning("experiment %s rolled back: %s", experiment.config.id, text)
            elif experiment.verdict != text:
                logger.warning("experiment %s: %s (action is none)", experiment.config.id, text)
            experiment.verdict = text
            return

    def _set_status(self, experiment: _Experiment, status: str, reason: str) -> None:
        experiment.status, experiment.reason = status, reason
        experiment.changed_at = self._clock()
        experiment.status_unsaved = True

    # ------------------------------------------------------------------ control

    def stop(self, experiment_id: str, reason: str = "stopped by an operator") -> None:
        """Send all of an experiment's traffic to its control until :meth:`resume`.

        Raises:
            KeyError: no experiment has that id.
        """
        self._set_status(self._experiments[experiment_id], "stopped", reason)
        logger.warning("experiment %s stopped: %s", experiment_id, reason)

    def resume(self, experiment_id: str) -> None:
        """Split an experiment's traffic again (after a stop or a rollback). Its numbers
        are kept, so the guard rails judge them again at its next request.

        Raises:
            KeyError: no experiment has that id.
        """
        experiment = self._experiments[experiment_id]
        self._set_status(experiment, "running", "")
        experiment.verdict = ""
        logger.info("experiment %s resumed", experiment_id)

    def reconfigure(self, section: ExperimentsConfig, /) -> list[str]:
        """Take a reloaded ``[experiments]``: splits, overrides, stickiness and guard rails.

        Returns:
            What was refused: adding or removing experiments or variants needs a restart.
        """
        before = {e.id: [v.name for v in e.variants] for e in self._config.experiments}
        after = {e.id: [v.name for v in e.variants] for e in section.experiments}
        if before != after:
            return [
                "experiments.experiments: adding or removing experiments or variants needs "
                f"a restart {before} → {after}"
            ]
        self._config = section
        for config in section.experiments:
            experiment = self._experiments[config.id]
            experiment.config = config
            for variant in config.variants:
                experiment.variants[variant.name].config = variant
        return []

    # ------------------------------------------------------------------ reading

    def report(self, experiment_id: str) -> dict[str, Any]:
        """An experiment's status and per-variant statistics, as JSON.

        Raises:
            KeyError: no experiment has that id.
        """
        experiment = self._experiments[experiment_id]
        config = experiment.config
        control = experiment.control.total
        total_share = sum(v.share for v in config.variants)
        variants = []
        for name, variant in experiment.variants.items():
            view = _variant_json(variant, variant.config.share / total_share)
            if name != config.control_name:
                view["versus_control"] = _versus(variant.total, control, config)
            variants.append(view)
        return {
            "id": config.id,
            "status": experiment.status,
            "reason": experiment.reason or None,
            "changed_at": experiment.changed_at,
            "verdict": experiment.verdict or None,
            "enabled": config.enabled,
            "models": list(config.models),
            "control": config.control_name,
            "sticky": config.sticky,
            "guard": attrs.asdict(config.guard),
            "variants": variants,
        }

    def status(self, experiment_id: str) -> str:
        """An experiment's status (:data:`STATUSES`).

        Raises:
            KeyError: no experiment has that id.
        """
        return self._experiments[experiment_id].status

    def views(self) -> Iterator[VariantView]:
        """Every variant's numbers, for the metrics."""
        for experiment_id, experiment in self._experiments.items():
            for name, variant in experiment.variants.items():
                sums = variant.total
                yield VariantView(
                    experiment_id,
                    name,
                    sums.requests,
                    sums.errors,
                    tuple(variant.buckets),
                    variant.seconds,
                )

    # ------------------------------------------------------------------ storage

    def load(self, records: Sequence[ExperimentRecord]) -> None:
        """Take the stored status and totals of the configured experiments (the rest of
        ``records`` are of experiments no longer configured, and stay stored)."""
        for record in records:
            experiment = self._experiments.get(record.id)
            if experiment is None:
                continue
            if record.status in STATUSES:
                experiment.status, experiment.reason = record.status, record.reason
                experiment.changed_at = record.changed_at
            for sums in record.variants:
                variant = experiment.variants.get(sums.variant)
                if variant is not None:
                    variant.total = sums

    def take_unsaved(self) -> list[ExperimentRecord]:
        """What changed since the last call: statuses and sums' increments (cleared here;
        give them back to :meth:`put_back` when writing them fails)."""
        records = []
        for experiment_id, experiment in self._experiments.items():
            changed = [
                variant.unsaved
                for variant in experiment.variants.values()
                if variant.unsaved != VariantSums(variant.config.name)
            ]
            if not changed and not experiment.status_unsaved:
                continue
            for variant in experiment.variants.values():
                variant.unsaved = VariantSums(variant.config.name)
            experiment.status_unsaved = False
            records.append(
                ExperimentRecord(
                    experiment_id,
                    experiment.status,
                    experiment.reason,
                    experiment.changed_at,
                    tuple(changed),
                )
            )
        return records

    def put_back(self, records: Sequence[ExperimentRecord]) -> None:
        """Keep ``records`` (from :meth:`take_unsaved`) for the next write."""
        for record in records:
            experiment = self._experiments[record.id]
            experiment.status_unsaved = True
            for sums in record.variants:
                variant = experiment.variants[sums.variant]
                variant.unsaved = _plus(variant.unsaved, sums)

    async def flush(self, store: Store) -> None:
        """Write what changed to ``store``; on failure keep it for the next flush."""
        records = self.take_unsaved()
        if not records:
            return
        try:
            await store.add_experiments(records)
        except StorageUnavailable as exc:
            self.put_back(records)
            logger.warning("storage: experiments not written (kept for later): %s", exc)

    async def sync(self, store: Store) -> None:
        """Write what changed, then read the totals every process sharing ``store`` wrote:
        the guard rails then judge the numbers of them all, and a status another process
        set (a rollback, a stop) holds here too."""
        await self.flush(store)
        try:
            records = await store.experiments()
        except StorageUnavailable as exc:
            logger.debug("storage: experiments not read: %s", exc)
            return
        for record in records:
            experiment = self._experiments.get(record.id)
            if experiment is None:
                continue
            for sums in record.variants:
                variant = experiment.variants.get(sums.variant)
                if variant is not None:
                    variant.stored(sums)  # and what was counted here since the flush
            newer = (record.changed_at or 0.0) > (experiment.changed_at or 0.0)
            if newer and not experiment.status_unsaved and record.status in STATUSES:
                if record.status != experiment.status:
                    logger.warning(
                        "experiment %s is %s (set by another process): %s",
                        record.id,
                        record.status,
                        record.reason,
                    )
                experiment.status, experiment.reason = record.status, record.reason
                experiment.changed_at = record.changed_at

    async def run(
        self,
        store: Store,
        interval: float,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Load the stored state, then :meth:`sync` every ``interval`` seconds, and write
        what changed once more when cancelled (at shutdown)."""
        try:
            self.load(await store.experiments())
        except StorageUnavailable as exc:
            logger.warning("storage unavailable at start (experiments not loaded): %s", exc)
        task_status.started()
        try:
            while True:
                await trio.sleep(interval)
                await self.sync(store)
        finally:
            with trio.move_on_after(_FLUSH_TIMEOUT, shield=True):
                await self.flush(store)


def _worse(
    name: str,
    variant: VariantSums,
    control: VariantSums,
    error_margin: float,
    latency_margin: float,
) -> tuple[float, str] | None:
    """The smaller p-value of the two tests and what it says, or None."""
    error_p = proportion_worse_p(
        variant.errors, variant.requests, control.errors, control.requests, error_margin
    )
    found: list[tuple[float, str]] = [
        (
            error_p,
            f"variant {name!r}: error rate {variant.errors / variant.requests:.3f} against "
            f"control's {control.errors / control.requests:.3f} (margin {error_margin})",
        )
    ]
    v_log, c_log = _log_latency(variant), _log_latency(control)
    if v_log.n >= 2 and c_log.n >= 2:
        latency_p = log_latency_worse_p(v_log, c_log, latency_margin)
        ratio = math.exp(v_log.mean - c_log.mean)
        found.append(
            (
                latency_p,
                f"variant {name!r}: typical latency {ratio:.2f}x control's "
                f"(margin {latency_margin})",
            )
        )
    return min(found, key=lambda item: item[0])


def _versus(variant: VariantSums, control: VariantSums, config: ExperimentConfig) -> dict[str, Any]:
    """The guard rails' p-values for a variant (None until both have a sample)."""
    guard = config.guard
    error_p = latency_p = None
    if variant.requests and control.requests:
        error_p = proportion_worse_p(
            variant.errors, variant.requests, control.errors, control.requests, guard.error_margin
        )
    v_log, c_log = _log_latency(variant), _log_latency(control)
    if v_log.n >= 2 and c_log.n >= 2:
        latency_p = log_latency_worse_p(v_log, c_log, guard.latency_margin)
    return {"error_p": error_p, "latency_p": latency_p}


def _number(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def _interval(interval: Interval, transform: Callable[[float], float] = float) -> dict[str, Any]:
    return {
        "estimate": _number(transform(interval.estimate)),
        "low": _number(transform(interval.low)),
        "high": _number(transform(interval.high)),
    }


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _variant_json(variant: _Variant, share: float) -> dict[str, Any]:
    sums = variant.total
    n = sums.requests
    successes = n - sums.errors
    log_latency = _log_latency(sums)
    recent = list(variant.recent)
    return {
        "name": variant.config.name,
        "share": share,
        "requests": n,
        "errors": sums.errors,
        "success_rate": _interval(wilson(successes, n)),
        "latency": {
            "mean": _number(sums.latency_sum / successes) if successes else None,
            "p50": _percentile(recent, 0.50),
            "p95": _percentile(recent, 0.95),
            "samples": len(recent),
            "geometric_mean": _interval(mean_interval(log_latency), math.exp),
        },
        "cost": {"total": sums.cost, "mean": sums.cost / n if n else None},
        "tokens": {"total": sums.tokens, "mean": sums.tokens / n if n else None},
        "feedback": {"n": sums.feedback_n, "mean": _interval(mean_interval(_feedback(sums)))},
    }


def _overridden(request: PromptRequest, variant: VariantConfig) -> PromptRequest:
    """``request`` with ``variant``'s model, parameters and prompt."""
    params = request.params
    changes: dict[str, Any] = {}
    for name in ("model", "temperature", "top_p", "max_tokens", "seed"):
        value = getattr(variant, name)
        if value is not None:
            changes[name] = value
    if variant.params:
        changes["extra"] = {**params.extra, **variant.params}
    evolved: dict[str, Any] = {}
    if changes:
        evolved["params"] = attrs.evolve(params, **changes)
    if variant.system_prefix is not None or variant.template is not None:
        evolved.update(_prompted(request, variant))
    return attrs.evolve(request, **evolved) if evolved else request


def _prompted(request: PromptRequest, variant: VariantConfig) -> dict[str, Any]:
    """The messages (and input) of ``request`` with the variant's prompt changes."""
    messages = list(request.chat())
    if variant.template is not None:
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].role == "user":
                text = variant.template.replace("{prompt}", messages[i].content)
                messages[i] = attrs.evolve(messages[i], content=text, parts=(), wire=None)
                break
    if variant.system_prefix is not None:
        first = messages[0] if messages else None
        if first is not None and first.role == "system":
            text = variant.system_prefix + first.content
            messages[0] = attrs.evolve(first, content=text, parts=(), wire=None)
        else:
            messages.insert(0, Message("system", variant.system_prefix))
    return {"messages": tuple(messages), "input": None}


@attrs.define(eq=False)
class ExperimentLayer:
    """The outermost worker: puts a request in its experiment's variant and counts how it
    went. A request in no experiment passes through untouched.

    Args:
        inner: the worker it wraps.
        experiments: the experiments' state.
    """

    _inner: ModelWorker
    experiments: Experiments

    @property
    def inner(self) -> ModelWorker:
        """The worker this one wraps."""
        return self._inner

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Generate ``request``'s answer as its variant, and record the outcome."""
        experiments = self.experiments
        assignment = None if request.embed is not None else experiments.assignment_of(request)
        if assignment is None:
            await self._inner.generate(request, emit)
            return
        request = experiments.apply(request, assignment)
        experiments.remember(request.request_id, assignment)
        usage: list[Usage] = []

        async def counting(event: StreamEvent) -> None:
            if isinstance(event, Usage):
                usage.append(event)
            await emit(event)

        start = trio.current_time()
        model = request.params.model
        try:
            await self._inner.generate(request, counting)
        except Exception:
            elapsed = trio.current_time() - start
            experiments.record(assignment, ok=False, latency=elapsed, usage=None, model=model)
            raise
        elapsed = trio.current_time() - start
        last = usage[-1] if usage else None
        experiments.record(assignment, ok=True, latency=elapsed, usage=last, model=model)
