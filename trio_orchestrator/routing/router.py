"""The router: a worker that picks a deployment per request and falls back along a chain.

Fallbacks and streams, exactly: the router forwards each event of an attempt as soon as it
arrives (it buffers nothing). While an attempt has forwarded no event, its failure is
invisible: the next deployment of the chain is tried and the caller sees only that one's
events. Once an attempt has forwarded an event, a failure is visible, and
``routing.stream_fallback`` decides:

* ``fail`` (the default): the error is raised; the caller has seen a partial answer, then
  the error.
* ``restart``: only for requests that opted in with ``meta["allow_stream_restart"] = "1"``
  (others fail). The router emits one ``TextDelta`` holding ``routing.restart_marker``, then
  the next deployment's answer from its start. The grammar stays valid for every consumer:
  the marker is text, tool-call indexes of the new attempt are shifted past those already
  sent, ``Usage`` adds up every attempt's tokens, and ``Done.text`` is all text sent. A
  caller that opted in keeps what follows the last marker.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from ..catalogue.facts import Catalogue
from ..errors import (
    AuthenticationError,
    BadRequest,
    CircuitOpen,
    ConfigError,
    ContextLengthExceeded,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    RateLimitExceeded,
    WorkerCrashed,
    WorkerError,
)
from ..events import (
    Done,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from ..resilience.adaptive_limiter import ConcurrencyLimited
from ..types import PromptRequest, request_notes
from ..workers.base import EventSink, ModelWorker
from .bandit import Bandit, reward
from .budget import BudgetLedger
from .registry import ModelDeployment, ModelRegistry, Route, RoutingConfig
from .strategies import (
    Candidate,
    HealthCheck,
    RoutingDecision,
    StrategyContext,
    complexity_score,
    order,
)
from .tokens import (
    estimate_input_tokens,
    estimate_prompt_tokens,
    precheck,
    required_capabilities,
)
from .tracker import OutcomeTracker

__all__ = ["RouterStatistics", "RouterWorker", "build_router", "falls_back", "open_router"]

logger = logging.getLogger("trio_orchestrator.routing")

# Errors that say "this deployment, not this request": another deployment may well succeed.
# (A provider's adaptive limit shedding the call is one: not worth retrying there, but the
# next deployment has its own capacity.)
_DEPLOYMENT_SPECIFIC = (
    ConcurrencyLimited,
    ContextLengthExceeded,
    AuthenticationError,
    PermissionDenied,
    ModelNotFound,
)
# Refusals that say how long the deployment wants to be left alone.
_REFUSALS = (CircuitOpen, RateLimited, RateLimitExceeded)


def falls_back(error: WorkerError) -> bool:
    """Whether the router tries the next deployment after ``error``."""
    return error.retryable or isinstance(error, _DEPLOYMENT_SPECIFIC)


@attrs.frozen
class RouterStatistics:
    """What the router has done since it started."""

    decisions: int
    """Requests routed (a decision was made)."""
    unroutable: int
    """Requests refused before any call: unknown name, no deployment fits, or a budget."""
    fallbacks: int
    """Attempts on a fallback deployment after an earlier one failed."""
    restarts: int
    """Streams restarted on another deployment after they had sent events."""
    exhausted: int
    """Requests that failed on every deployment they tried."""
    chosen: Mapping[str, int]
    """Requests whose answer came from each deployment."""


@attrs.define
class _Run:
    """One request's path through its chain: what the caller has been sent so far."""

    emit: EventSink
    text: list[str] = attrs.field(factory=list)
    tool_offset: int = 0
    usage: Usage | None = None
    restarted: bool = False

    def add_usage(self, usage: Usage) -> Usage:
        if self.usage is None:
            return usage
        return Usage(
            self.usage.input_tokens + usage.input_tokens,
            self.usage.output_tokens + usage.output_tokens,
        )


@attrs.define
class _Attempt:
    """One call to one deployment, forwarding its events with the run's adjustments."""

    run: _Run
    deployment: ModelDeployment
    started: float
    first_at: float | None = None
    usage: Usage | None = None
    tools: int = 0
    done: Done | None = None

    @property
    def forwarded(self) -> bool:
        return self.first_at is not None

    async def emit(self, event: StreamEvent) -> None:
        if self.first_at is None:
            self.first_at = trio.current_time()
        run = self.run
        if isinstance(event, TextDelta):
            run.text.append(event.text)
        elif isinstance(event, ToolCallStart | ToolCallDelta):
            self.tools = max(self.tools, event.index + 1)
            if run.tool_offset:
                event = attrs.evolve(event, index=event.index + run.tool_offset)
        elif isinstance(event, Usage):
            self.usage = event
            event = run.add_usage(event)
        elif isinstance(event, Done):
            event = self._final(event)
        await run.emit(event)

    def _final(self, done: Done) -> Done:
        self.done = done
        self.usage = done.usage or self.usage
        run, model = self.run, done.model or self.deployment.upstream_model
        if not run.restarted:
            return attrs.evolve(done, model=model)
        text = "".join(run.text) if done.text else ""
        usage = run.add_usage(done.usage) if done.usage else None
        return attrs.evolve(done, text=text, usage=usage, model=model)

    def cost(self) -> float:
        usage = self.usage
        return (
            0.0
            if usage is None
            else self.deployment.cost(
                usage.input_tokens, usage.output_tokens, usage.cached_input_tokens
            )
        )


class RouterWorker:
    """A worker that routes each request to a deployment and falls back along a chain.

    It wraps one worker per deployment (a provider worker, usually behind its resilience
    layers) and is itself a :class:`~trio_orchestrator.workers.ModelWorker`. The request's
    ``params.model`` names a public model, a group, a deployment or an alias; the call to the
    chosen deployment carries the deployment's upstream model name instead.

    Args:
        deployments: deployment name → (the deployment, the worker that serves it).
        config: the routing configuration (its ``deployments`` are ignored: the mapping wins).
        tracker: the outcome tracker (default: a new one).
        health: checks saying whether a deployment may be called now (breakers, key pools).
        rng: the random source of the ``weighted`` strategy (seed it in tests).
        catalogue: where the deployments' unset limits, prices and capabilities come from
            (default: the bundled catalogue).

    Raises:
        ValueError: a mapping key differs from its deployment's name.
    """

    def deployment_workers(self) -> tuple[ModelWorker, ...]:
        """The distinct workers the deployments call (for metrics of their layers)."""
        return tuple({id(w): w for w in self._workers.values()}.values())

    def __init__(
        self,
        deployments: Mapping[str, tuple[ModelDeployment, ModelWorker]],
        config: RoutingConfig | None = None,
        tracker: OutcomeTracker | None = None,
        *,
        health: Sequence[HealthCheck] = (),
        rng: random.Random | None = None,
        catalogue: Catalogue | None = None,
    ) -> None:
        for key, (deployment, _) in deployments.items():
            if key != deployment.name:
                raise ValueError(f"deployment {deployment.name!r} is filed under {key!r}")
        config = config or RoutingConfig()
        self._config = attrs.evolve(config, deployments=tuple(d for d, _ in deployments.values()))
        self._workers = {name: worker for name, (_, worker) in deployments.items()}
        self._catalogue = catalogue
        self._registry = ModelRegistry(self._config, catalogue)
        self._tracker = tracker or OutcomeTracker(self._config.ewma_alpha)
        self._health = tuple(health)
        self._rng = rng or random.Random()
        seed = self._config.bandit.seed
        self._bandit = Bandit(self._config.bandit, random.Random(seed))
        self._ledger = BudgetLedger(self._config.budgets)
        self._resting: dict[str, float] = {}
        self._decisions: deque[RoutingDecision] = deque(maxlen=self._config.decision_log)
        self._counts = {"decisions": 0, "unroutable": 0, "fallbacks": 0, "restarts": 0}
        self._exhausted = 0
        self._chosen: dict[str, int] = {}

    @property
    def registry(self) -> ModelRegistry:
        """The names this router answers to, and the models behind them."""
        return self._registry

    def reconfigure(self, section: RoutingConfig, /) -> list[str]:
        """Apply a reloaded ``[routing]``: weights, prices, strategy, aliases, attempts and
        budgets change for the next decision (budgets keep what was spent). Adding, removing
        or moving deployments needs their workers, so it is refused.
        """
        placed = {(d.name, d.provider) for d in self._config.deployments}
        if {(d.name, d.provider) for d in section.deployments} != placed:
            return ["routing.deployments: adding, removing or moving deployments needs a restart"]
        spent = self._ledger
        self._config = section
        self._registry = ModelRegistry(section, self._catalogue)
        self._ledger = BudgetLedger(section.budgets)
        self._ledger.take_spending_from(spent)
        return []

    def model_names(self) -> tuple[str, ...]:
        """Every name the router resolves: models, groups and aliases."""
        return tuple(self._registry.names())

    @property
    def tracker(self) -> OutcomeTracker:
        """The outcome tracker the strategies read."""
        return self._tracker

    @property
    def bandit(self) -> Bandit:
        """The bandit of the ``bandit`` strategy."""
        return self._bandit

    @property
    def ledger(self) -> BudgetLedger:
        """Spending per API key and per model."""
        return self._ledger

    def recent_decisions(self) -> tuple[RoutingDecision, ...]:
        """The last ``routing.decision_log`` decisions, oldest first."""
        return tuple(self._decisions)

    def statistics(self) -> RouterStatistics:
        """Return what the router has done since it started."""
        return RouterStatistics(
            **self._counts, exhausted=self._exhausted, chosen=dict(self._chosen)
        )

    async def save_profiles(self) -> bool:
        """Write the tracker's profiles to ``routing.profile_path`` (in a thread).

        A failure to write is logged, not raised: losing a snapshot must not fail requests.

        Returns:
            whether a file was written (``False`` when no path is configured or it failed).
        """
        path = self._config.profile_path
        if path is None:
            return False
        try:
            await trio.to_thread.run_sync(self._tracker.export_profiles, path)
        except OSError as exc:
            logger.warning("could not save routing profiles to %s: %s", path, exc)
            return False
        return True

    async def _save_periodically(self) -> None:
        while True:
            await trio.sleep(self._config.profile_save_interval)
            await self.save_profiles()

    # ----------------------------------------------------------------- deciding

    def available(self, deployment: ModelDeployment) -> bool:
        """Whether ``deployment`` may be called now: not resting, and every check agrees."""
        if self._resting:
            until = self._resting.get(deployment.name)
            if until is not None:
                if trio.current_time() < until:
                    return False
                del self._resting[deployment.name]
        return not self._health or all(check.is_available(deployment) for check in self._health)

    def decide(self, request: PromptRequest) -> RoutingDecision:
        """Choose the deployment for ``request`` and its fallback chain, without calling.

        Raises:
            ModelNotFound: no model, group, deployment or alias has the requested name.
            ContextLengthExceeded: no candidate's context window (or output limit) fits.
            BadRequest: no candidate has a capability the request needs.
            BudgetExceeded: every candidate would overspend a budget.
        """
        try:
            decision = self._decide(request)
        except WorkerError:
            self._counts["unroutable"] += 1
            raise
        self._counts["decisions"] += 1
        self._decisions.append(decision)
        return decision

    def _decide(self, request: PromptRequest) -> RoutingDecision:
        route = self._route(request.params.model)
        prompt_tokens = fit_tokens = estimate_prompt_tokens(request)
        max_tokens = request.params.max_tokens
        output = max_tokens or self._config.budgets.default_output_tokens
        if request.embed is not None:
            # Each input must fit the model's window on its own; nothing is generated.
            fit_tokens, output = max(estimate_input_tokens(request)), 0
        needed = required_capabilities(request)
        skipped: list[tuple[str, str]] = []
        fitting = []
        for deployment in route.candidates:
            why = precheck(deployment, fit_tokens, max_tokens, needed)
            if why is None:
                fitting.append(deployment)
            else:
                skipped.append((deployment.name, why))
        if not fitting:
            raise _nothing_fits(route, skipped)
        stream = request.meta.get("stream") == "1"
        candidates = [self._candidate(d, prompt_tokens, output, stream) for d in fitting]
        candidates = self._affordable(candidates, request.meta.get("api_key_id"), skipped)
        return self._order(request, route, candidates, skipped, prompt_tokens)

    def _route(self, name: str) -> Route:
        route = self._registry.resolve(name)
        if route is None or not route.candidates:
            known = ", ".join(self._registry.names()) or "none configured"
            raise ModelNotFound(
                f"no model, group or alias is named {name!r}; ask for one of: {known}",
                provider="router",
                status=404,
            )
        return route

    def _candidate(
        self, deployment: ModelDeployment, prompt_tokens: int, output: int, stream: bool
    ) -> Candidate:
        tracker = self._tracker
        latency = tracker.ttft(deployment.name) if stream else tracker.latency(deployment.name)
        return Candidate(deployment, deployment.cost(prompt_tokens, output), latency)

    def _affordable(
        self, candidates: list[Candidate], api_key: str | None, skipped: list[tuple[str, str]]
    ) -> list[Candidate]:
        if not self._config.budgets.enabled:
            return candidates
        ledger, key_left = self._ledger, self._ledger.key_left(api_key)
        model_left: dict[str, float] = {}
        kept = []
        for candidate in candidates:
            cost, model = candidate.predicted_cost, candidate.deployment.model
            if model not in model_left:
                model_left[model] = ledger.model_left(model)
            if cost > key_left:
                skipped.append((candidate.deployment.name, "would exceed the API key's budget"))
            elif cost > model_left[model]:
                skipped.append((candidate.deployment.name, f"would exceed {model}'s budget"))
            else:
                kept.append(candidate)
        if kept:
            return kept
        cheapest = min(candidates, key=lambda c: c.predicted_cost)
        if api_key is not None and cheapest.predicted_cost > key_left:
            raise ledger.refuse("api_key", api_key, cheapest.predicted_cost)
        raise ledger.refuse("model", cheapest.deployment.model, cheapest.predicted_cost)

    def _order(
        self,
        request: PromptRequest,
        route: Route,
        candidates: list[Candidate],
        skipped: list[tuple[str, str]],
        prompt_tokens: int,
    ) -> RoutingDecision:
        available: list[Candidate] = []
        for candidate in candidates:
            if self.available(candidate.deployment):
                available.append(candidate)
            else:
                skipped.append((candidate.deployment.name, "unavailable"))
        context = StrategyContext(self._tracker, self._rng, self._bandit, route.pools)
        if route.strategy == "complexity":
            context.complexity = complexity_score(request, prompt_tokens)
            context.threshold = self._config.auto.threshold
        ordered, reason = order(route.strategy, available or candidates, context)
        if not available:
            reason += "; no candidate is available, so all are tried anyway"
        chain = ordered[: self._config.max_attempts]
        head = chain[0]
        return RoutingDecision(
            requested=route.name,
            strategy=route.strategy,
            chosen=head.deployment,
            fallbacks=tuple(c.deployment for c in chain[1:]),
            predicted_cost=head.predicted_cost,
            predicted_latency=head.predicted_latency,
            reason=reason,
            skipped=tuple(skipped),
            prompt_tokens=prompt_tokens,
            complexity=context.complexity if route.strategy == "complexity" else None,
        )

    # ----------------------------------------------------------------- calling

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Route ``request``, call the chain until one deployment answers; see the module.

        Raises:
            WorkerError: the request could not be routed (see :meth:`decide`), a deployment
                failed in a way no other deployment can help with, or every deployment of
                the chain failed (the last error, with a note listing the attempts).
        """
        try:
            decision = self.decide(request)
        except WorkerError:
            # A call cancelled before it began ends cancelled, whatever it asked for.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise
        logger.debug("routing %s: %s", request.request_id, decision.reason)
        run = _Run(emit)
        restart_ok = (
            self._config.stream_fallback == "restart"
            and request.meta.get("allow_stream_restart") == "1"
        )
        failures: list[str] = []
        last: WorkerError | None = None
        for index, deployment in enumerate(decision.chain):
            if index and not self.available(deployment):
                failures.append(f"{deployment.name}: skipped, unavailable")
                continue
            notes = request_notes()
            if index:
                self._counts["fallbacks"] += 1
                if notes is not None:
                    notes.fallbacks += 1
            if notes is not None:
                notes.provider = deployment.provider
            attempt = _Attempt(run, deployment, trio.current_time())
            try:
                await self._attempt(attempt, request)
                return
            except WorkerError as exc:
                last = exc
                failures.append(f"{deployment.name}: {type(exc).__name__}: {exc}")
                if not falls_back(exc) or not await self._may_continue(attempt, restart_ok):
                    raise
        self._exhausted += 1
        assert last is not None  # the chain's head is always tried
        last.add_note("routing attempts:\n  " + "\n  ".join(failures))
        raise last

    async def _may_continue(self, attempt: _Attempt, restart_ok: bool) -> bool:
        """After a failed attempt: may the next one run? Sends the restart marker if so."""
        run = attempt.run
        if not attempt.forwarded:
            return True
        if not restart_ok:
            return False
        self._counts["restarts"] += 1
        run.restarted = True
        run.tool_offset += attempt.tools
        if attempt.usage is not None:
            run.usage = run.add_usage(attempt.usage)
        run.text.append(self._config.restart_marker)
        await run.emit(TextDelta(self._config.restart_marker))
        return True

    async def _attempt(self, attempt: _Attempt, request: PromptRequest) -> None:
        deployment = attempt.deployment
        name = deployment.name
        params = attrs.evolve(request.params, model=deployment.upstream_model)
        call = attrs.evolve(request, params=params)
        deadline = trio.current_effective_deadline()
        self._tracker.started(name)
        try:
            await self._workers[name].generate(call, attempt.emit)
            if attempt.done is None:
                raise WorkerCrashed(f"deployment {name!r} returned without emitting Done")
        except WorkerError as exc:
            self._failed(attempt, exc, request)
            raise
        except BaseException:
            self._interrupted(attempt, request, deadline)
            raise
        self._succeeded(attempt, request)

    def _interrupted(self, attempt: _Attempt, request: PromptRequest, deadline: float) -> None:
        """Cancelled: at the request's deadline it is a timeout; otherwise no evidence (the
        caller left, shutdown, or a stop sequence ended the answer)."""
        deployment, cost = attempt.deployment, attempt.cost()
        now = trio.current_time()
        if now >= deadline:
            elapsed = now - attempt.started
            self._tracker.timed_out(deployment.name, elapsed=elapsed, cost=cost)
            self._bandit.update(deployment.name, 0.0)
        else:
            self._tracker.abandoned(deployment.name)
        self._ledger.charge(request.meta.get("api_key_id"), deployment.model, cost)

    def _succeeded(self, attempt: _Attempt, request: PromptRequest) -> None:
        deployment, now = attempt.deployment, trio.current_time()
        latency, cost = now - attempt.started, attempt.cost()
        # A caller that takes the answer whole is answered unstreamed by the provider: its
        # first event comes with the last, and says nothing of the time to a first token.
        first_at = attempt.first_at if request.streaming else None
        ttft = None if first_at is None else first_at - attempt.started
        self._tracker.succeeded(deployment.name, latency=latency, ttft=ttft, cost=cost)
        self._ledger.charge(request.meta.get("api_key_id"), deployment.model, cost)
        score = reward(self._config.bandit, success=True, latency=latency, cost=cost)
        self._bandit.update(deployment.name, score)
        self._chosen[deployment.name] = self._chosen.get(deployment.name, 0) + 1

    def _failed(self, attempt: _Attempt, error: WorkerError, request: PromptRequest) -> None:
        deployment, cost = attempt.deployment, attempt.cost()
        self._tracker.failed(deployment.name, error, cost=cost)
        self._ledger.charge(request.meta.get("api_key_id"), deployment.model, cost)
        self._bandit.update(deployment.name, 0.0)
        if isinstance(error, _REFUSALS):
            rest = error.retry_after
            rest = self._config.rest_after_refusal if rest is None else rest
            self._resting[deployment.name] = trio.current_time() + rest


def _nothing_fits(route: Route, skipped: list[tuple[str, str]]) -> WorkerError:
    reasons = "; ".join(f"{name} {why}" for name, why in skipped)
    too_long = all("context window" in why or "max_tokens" in why for _, why in skipped)
    if too_long:
        return ContextLengthExceeded(
            f"no deployment of {route.name!r} can hold this request ({reasons}); shorten "
            f"the conversation or lower max_tokens",
            provider="router",
            status=400,
        )
    return BadRequest(
        f"no deployment of {route.name!r} can serve this request ({reasons}); ask for a "
        f"model that has what the request needs",
        provider="router",
        status=400,
    )


def build_router(
    config: RoutingConfig,
    workers_by_provider: Mapping[str, ModelWorker],
    *,
    health: Sequence[HealthCheck] = (),
    tracker: OutcomeTracker | None = None,
    catalogue: Catalogue | None = None,
) -> RouterWorker:
    """Build a :class:`RouterWorker` from configuration, loading saved profiles if any.

    Each deployment is served by the worker of its ``provider`` (one worker per provider
    serves all its models: the router rewrites ``params.model``).

    Args:
        config: the ``[routing]`` section.
        workers_by_provider: provider name → the worker that calls it.
        health: checks saying whether a deployment may be called now.
        tracker: the outcome tracker (default: a new one, loaded from ``profile_path``).
        catalogue: where the deployments' unset limits, prices and capabilities come from
            (default: the bundled catalogue).

    Raises:
        ConfigError: no deployment is declared, or one names a provider with no worker.
    """
    routing = config
    if not routing.deployments:
        raise ConfigError("routing.deployments: no deployment is declared; add at least one")
    problems = [
        f"routing.deployments[{i}].provider: {d.provider!r} has no worker; expected one of "
        f"{sorted(workers_by_provider)}"
        for i, d in enumerate(routing.deployments)
        if d.provider not in workers_by_provider
    ]
    if problems:
        raise ConfigError(problems)
    tracker = tracker or OutcomeTracker(routing.ewma_alpha)
    _load_profiles(tracker, routing.profile_path)
    mapping = {d.name: (d, workers_by_provider[d.provider]) for d in routing.deployments}
    return RouterWorker(mapping, routing, tracker, health=health, catalogue=catalogue)


def _load_profiles(tracker: OutcomeTracker, path: str | None) -> None:
    if path is None:
        return
    try:
        loaded = tracker.import_profiles(path)
    except FileNotFoundError:
        logger.info("no routing profiles at %s yet; starting fresh", path)
    except (OSError, ValueError) as exc:
        logger.warning("routing profiles at %s ignored: %s", path, exc)
    else:
        logger.info("loaded %d routing profiles from %s", loaded, path)


@asynccontextmanager
async def open_router(
    config: RoutingConfig,
    workers_by_provider: Mapping[str, ModelWorker],
    *,
    health: Sequence[HealthCheck] = (),
    tracker: OutcomeTracker | None = None,
    catalogue: Catalogue | None = None,
) -> AsyncIterator[RouterWorker]:
    """Build a router (see :func:`build_router`) that keeps its profiles saved while open.

    With ``routing.profile_path`` set, the profiles are saved every
    ``routing.profile_save_interval`` seconds and once more on leaving the block, even by an
    exception or cancellation (the last save is shielded, and bounded to 10 seconds).

    Raises:
        ConfigError: as :func:`build_router`.
    """
    router = build_router(
        config, workers_by_provider, health=health, tracker=tracker, catalogue=catalogue
    )
    try:
        async with trio.open_nursery() as nursery:
            if router._config.profile_path is not None:
                nursery.start_soon(router._save_periodically)
            yield router
            nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(10) as scope:
            scope.shield = True
            await router.save_profiles()
