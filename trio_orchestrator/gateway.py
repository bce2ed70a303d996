"""The composition root: :func:`open_gateway` builds the whole gateway a configuration
describes, in one place and in one order, and tears it down in reverse.

::

    async with open_gateway(config) as gateway:
        completion = await gateway.pipeline.submit(request)
        report = gateway.reload(new_config)

The order, each part opened inside the one before:

1. shared resources: one Redis connection (``[distributed] redis_url``), the store
   (``[storage]``: virtual keys, spend, the request log), the HTTP clients, a nursery for
   the layers' background work (and the spend and request log writers');
2. providers: one worker per ``[[providers]]`` entry, or the built-in echo worker, or the
   worker given;
3. per-provider layers: a provider's adaptive concurrency limit right around it (its
   entry's ``[adaptive]``); with ``[routing]``, each provider's own circuit breaker and
   retries (so the router can skip a provider whose breaker is open or whose keys all rest);
4. the router (``[routing]``) or the load balancer (several providers);
5. the outer layers: experiments → virtual keys' policies → cache → semantic cache →
   coalescing → shared answers → rate limit (→ breaker → retry when there is no router);
6. the pipeline, its dead letters written through to Redis with ``[distributed]``;
7. instrumentation: metrics, traces, request logs, spend.

Every part is registered as a :class:`Component`: with the key path of the section it takes
on a reload, the provider it serves, and whatever seams of :mod:`trio_orchestrator.seams` it
implements (statistics, readiness). Nothing is found by probing attributes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .catalogue import Catalogue, ModelFacts, catalogue_for
from .config import Config
from .config.load import parse_config
from .config.reload import ConfigChange, ReloadReport, plan_reload
from .errors import ConfigError, WorkerError
from .observability import Instrumentation, instrument_pipeline
from .observability.experiments import ExperimentCollector
from .observability.metrics import prometheus
from .observability.requestlog import ErrorStatus, NotingWorker, Redactor, RequestLogListener
from .observability.spend import SpendingWorker, SpendListener
from .pipeline import (
    Assembler,
    DeadLetterQueue,
    OutputSink,
    Pipeline,
    PostProcessor,
    Retriever,
    open_pipeline,
)
from .resilience.adaptive_limiter import AdaptiveLimitLayer
from .resilience.stack import LayerContext, wrap
from .routing.experiments import ExperimentLayer, Experiments
from .routing.keys import KeyPolicyWorker, VirtualKeys
from .routing.router import RouterWorker, open_router
from .routing.strategies import HealthCheck
from .seams import ModelCatalog, ModelLister, Readiness, Reloadable, Revivable, provider_name
from .storage import (
    RequestLogWriter,
    SpendWriter,
    StorageUnavailable,
    Store,
    period_start,
    store_for,
)
from .workers import EchoWorker, LoadBalancedWorker, ModelWorker
from .workers.config import ProviderConfig, ProvidersConfig
from .workers.factory import key_pool, make_client, worker_for
from .workers.kinds import lists_models

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .distributed.budgets import SharedBudgets
    from .distributed.connection import RedisConnection

__all__ = ["Component", "Gateway", "open_gateway"]

logger = logging.getLogger("trio_orchestrator.gateway")

# The layers that go below the router, one stack per provider.
PER_PROVIDER_LAYERS = ("circuit_breaker", "retry")

# Seconds closing may spend flushing traces at shutdown.
_FLUSH_TIMEOUT = 5.0


@attrs.frozen(eq=False)
class Component:
    """One part the gateway built, and what it is registered for.

    Attributes:
        part: the object (a layer, a provider's worker, a key pool, the pipeline…).
        path: the key path of the configuration section it takes on a reload
            (``"resilience.breaker"``), or None when it takes none.
        provider: the label of the provider it serves, or None for a gateway-wide part.
        section: picks its section out of the whole configuration; by default the value
            at ``path``.
    """

    part: object
    path: str | None = None
    provider: str | None = None
    section: Callable[[Config], object] | None = None

    def section_of(self, config: Config) -> object:
        """This part's section of ``config``."""
        if self.section is not None:
            return self.section(config)
        value: object = config
        for name in (self.path or "").split("."):
            value = getattr(value, name)
        return value

    def takes(self, change: ConfigChange) -> bool:
        """True when ``change`` falls within this part's section."""
        path = self.path
        return path is not None and (change.path == path or change.path.startswith(path + "."))


class Gateway:
    """The assembled gateway: its pipeline, the worker behind it, and every part, for
    reload, readiness and statistics. Get one from :func:`open_gateway`.

    Attributes:
        redis: the one Redis connection, with ``[distributed] redis_url``; else None.
        observed: the metrics, traces and logs wired onto the pipeline.
        catalogue: the model facts every part reads (the bundled catalogue with
            ``[catalogue]`` laid over it).
        store: the operator-state store (``[storage]``), or None with ``backend = "none"``.
        keys: the live virtual keys (loaded from the store at start).
        spend: the spend writer, with a store.
        shared_budgets: the keys' budgets shared through Redis, with a store and
            ``[distributed]`` on.
        request_log: the request log's writer, with a store and ``log_requests`` on.
        experiments: the A/B experiments (``[experiments]``), or None with none configured.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self.catalogue: Catalogue = catalogue_for(config.catalogue)
        self._components: list[Component] = []
        self._providers: list[str] = []
        self._pipeline: Pipeline | None = None
        self._catalog: ModelCatalog | None = None
        self._router: RouterWorker | None = None
        self._workers: dict[str, ModelWorker] = {}
        self.redis: RedisConnection | None = None
        self.observed: Instrumentation | None = None
        self.store: Store | None = None
        self.keys = VirtualKeys()
        self.spend: SpendWriter | None = None
        self.shared_budgets: SharedBudgets | None = None
        self.request_log: RequestLogWriter | None = None
        self.experiments: Experiments | None = None
        # The last listed_models answer every asked upstream gave, and until when it holds.
        self._listed: tuple[tuple[str, ...], float] | None = None

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config

    @property
    def pipeline(self) -> Pipeline:
        """The running pipeline."""
        if self._pipeline is None:
            raise RuntimeError("the gateway is not open; use `async with open_gateway(...)`")
        return self._pipeline

    @property
    def worker(self) -> ModelWorker:
        """The outermost worker the pipeline calls (layers, router, providers below it)."""
        return self.pipeline.worker

    @property
    def components(self) -> tuple[Component, ...]:
        """Every registered part, in the order it was built."""
        return tuple(self._components)

    @property
    def models(self) -> tuple[str, ...]:
        """The model names clients may ask for; empty means any (the upstream decides).

        With ``[routing]``, the router's names (models, groups, aliases); with providers,
        the models they list (a provider listing none serves any); else the names the
        worker knows (the echo worker's model, or a given worker's if it is a
        :class:`~trio_orchestrator.seams.ModelCatalog`).
        """
        providers = self._config.providers
        if providers is not None and not self._config.routing.enabled:
            if not all(p.models for p in providers.providers):
                return ()
            return tuple(dict.fromkeys(m for p in providers.providers for m in p.models))
        catalog = self._catalog
        return () if catalog is None else catalog.model_names()

    async def listed_models(self) -> tuple[str, ...]:
        """The models the providers serve, asking the upstreams that list their own.

        Providers that name no ``models`` and whose kind lists models
        (:func:`~trio_orchestrator.workers.kinds.lists_models`: local and self-hosted
        OpenAI-compatible servers) are asked at once, each for at most
        ``service.model_list_timeout`` seconds; one that fails or is late is logged and adds
        no names. The other providers add their configured ``models``. An answer in which
        every asked upstream answered is reused for ``service.model_list_ttl`` seconds.
        """
        now = trio.current_time()
        if self._listed is not None and now < self._listed[1]:
            return self._listed[0]
        providers = self._config.providers
        entries = () if providers is None else providers.providers
        answers: list[list[str] | None] = [list(entry.models) for entry in entries]
        async with trio.open_nursery() as nursery:
            for i, entry in enumerate(entries):
                worker = self._workers.get(entry.label)
                if lists_models(entry) and isinstance(worker, ModelLister):
                    nursery.start_soon(self._ask_models, entry.label, worker, answers, i)
        names = tuple(dict.fromkeys(n for answer in answers for n in answer or ()))
        if all(answer is not None for answer in answers):
            self._listed = (names, now + self._config.service.model_list_ttl)
        return names

    async def _ask_models(
        self, label: str, worker: ModelLister, answers: list[list[str] | None], i: int
    ) -> None:
        """Put ``worker``'s model list at ``answers[i]``, or None if it fails or is late."""
        answers[i] = None
        timeout = self._config.service.model_list_timeout
        with trio.move_on_after(timeout):
            try:
                answers[i] = await worker.list_models()
            except WorkerError as exc:
                logger.warning("%s: its model list could not be read: %s", label, exc)
            return
        logger.warning("%s: its model list did not come within %s s", label, timeout)

    def model_facts(self, name: str) -> ModelFacts | None:
        """What the catalogue knows of the model a client names ``name``, or None.

        With ``[routing]``, a name the router resolves has the facts of its first
        deployment (its configured limits and prices over the catalogue's for its upstream
        model); otherwise the catalogue's entry for ``name``.
        """
        route = None if self._router is None else self._router.registry.resolve(name)
        if route is None or not route.candidates:
            return self.catalogue.get(name)
        deployment = route.candidates[0]
        known = self.catalogue.get(deployment.upstream_model) or self.catalogue.facts(name)
        return deployment.facts.over(known)

    def priced_facts(self, name: str) -> ModelFacts | None:
        """The facts pricing model ``name`` (``[observability.metrics.prices]`` laid over
        :meth:`model_facts`, as the cost metric prices), or None when it has no price."""
        facts = self.model_facts(name)
        price = self._config.observability.metrics.prices.get(name)
        if price is not None:
            facts = price.facts if facts is None else price.facts.over(facts)
        return facts if facts is not None and facts.priced else None

    def provider_of(self, name: str) -> str:
        """The label of the provider serving model ``name`` (with ``[routing]``, its first
        deployment's: a fallback's answer is charged to it too)."""
        route = None if self._router is None else self._router.registry.resolve(name)
        if route is not None and route.candidates:
            return route.candidates[0].provider
        providers = self._config.providers
        entries = () if providers is None else providers.providers
        for entry in entries:
            if name in entry.models:
                return entry.label
        return self._providers[0] if len(self._providers) == 1 else "unknown"

    def add(
        self,
        part: object,
        path: str | None = None,
        *,
        provider: str | None = None,
        section: Callable[[Config], object] | None = None,
    ) -> None:
        """Register ``part`` (see :class:`Component`); the service adds its API keys so."""
        self._components.append(Component(part, path, provider, section))

    def parts(self) -> Iterator[tuple[object, str | None]]:
        """Every part with the label of the provider it serves (for metrics)."""
        return ((c.part, c.provider) for c in self._components)

    # ------------------------------------------------------------------ reload

    def reload(self, config: Config) -> ReloadReport:
        """Put ``config`` in force without dropping a request in flight.

        Every :class:`~trio_orchestrator.seams.Revivable` part is revived first (rejected API
        keys come back: a reload is the operator saying they are fixed), whatever changed.
        Each changed option goes to the parts whose section holds it; an option that is not
        reloadable, or that no running part takes (a layer switched off, say), keeps its
        value and is reported as refused, as is whatever a part refuses.

        Args:
            config: the new configuration, already validated.

        Returns:
            What was applied and what was refused.
        """
        for component in self._components:
            if isinstance(component.part, Revivable):
                component.part.revive()
        old = self._config
        merged, applied, refused = plan_reload(old, config)
        taken: list[ConfigChange] = []
        for change in applied:
            if any(c.takes(change) for c in self._components):
                taken.append(change)
            else:
                refused.append(_nobody_takes(change))
                merged = _restore(merged, old, change.path)
        self._config = merged
        self._listed = None  # a reloaded provider's models are listed anew
        for component in self._components:
            if isinstance(component.part, Reloadable) and any(map(component.takes, taken)):
                refused += component.part.reconfigure(component.section_of(merged))
        # What a part refused stays as it was, in the configuration in force too.
        refused_paths = [line.split(":", 1)[0] for line in refused]
        kept = [c for c in taken if not any(_related(c.path, p) for p in refused_paths)]
        for change in taken:
            if change not in kept:
                self._config = _restore(self._config, old, change.path)
        report = ReloadReport(applied=tuple(kept), refused=tuple(refused))
        logger.info("configuration reloaded: %s", report)
        return report

    async def reload_from_file(self, path: str | os.PathLike[str]) -> ReloadReport:
        """Load a TOML configuration file and :meth:`reload` it.

        An unreadable or invalid file changes nothing; the report's ``invalid`` says why.
        """
        try:
            text = await trio.Path(path).read_text(encoding="utf-8")
            config = parse_config(text)
        except (OSError, UnicodeDecodeError) as exc:
            report = ReloadReport(invalid=(f"cannot read {os.fspath(path)}: {exc}",))
        except ConfigError as exc:
            report = ReloadReport(invalid=tuple(exc.problems))
        else:
            return self.reload(config)
        logger.warning("%s", report)
        return report

    # ------------------------------------------------------------------ readiness

    def unready(self) -> list[str]:
        """Why the gateway cannot take a request now; empty when it can.

        Not ready while the pipeline shuts down, while a gateway-wide part is not (Redis
        down under ``rate_limit_policy = "fail_closed"``), or while no provider can take a
        request (each has every breaker open, or every key resting or disabled).
        """
        pipeline = self._pipeline
        if pipeline is None or pipeline.closing:
            return ["the pipeline is not open"]
        by_provider: dict[str, list[str]] = {}
        problems: list[str] = []
        for component in self._components:
            if isinstance(component.part, Readiness):
                reason = component.part.unready()
                if reason is None:
                    continue
                if component.provider in self._providers:
                    by_provider.setdefault(component.provider, []).append(reason)
                else:  # gateway-wide, or in front of every provider (a balancer's breaker)
                    problems.append(reason)
        if self._providers and all(p in by_provider for p in self._providers):
            problems += [r for p in self._providers for r in by_provider[p]]
        return problems


def _nobody_takes(change: ConfigChange) -> str:
    return (
        f"{change.path}: no running part takes this option (its layer or feature is off); "
        f"restart to apply {change.old!r} → {change.new!r}"
    )


def _related(path: str, other: str) -> bool:
    """True when one key path is the other or lies within it."""
    return path == other or path.startswith(other + ".") or other.startswith(path + ".")


def _restore(merged: Any, old: Any, path: str) -> Any:
    """``merged`` with the value at ``path`` put back to ``old``'s (at the deepest attrs
    field on the path: below it are tables and values, restored whole)."""
    name, _, rest = path.partition(".")
    fields = attrs.fields_dict(type(merged)) if attrs.has(type(merged)) else {}
    if name not in fields:
        return old
    inner = getattr(merged, name)
    before = getattr(old, name)
    value = _restore(inner, before, rest) if rest and attrs.has(type(inner)) else before
    changes: dict[str, Any] = {name: value}
    return attrs.evolve(merged, **changes)


@attrs.frozen(eq=False)
class _RedisReadiness:
    """Redis is a gateway-wide dependency only when rate limits fail closed without it."""

    redis: RedisConnection
    fails_closed: bool

    def unready(self) -> str | None:
        if self.fails_closed and not self.redis.up:
            return 'Redis is down and [distributed] rate_limit_policy is "fail_closed"'
        return None


@asynccontextmanager
async def open_gateway(
    config: Config | None = None,
    *,
    worker: ModelWorker | None = None,
    retriever: Retriever | None = None,
    assembler: Assembler | None = None,
    post_processors: Sequence[PostProcessor] | None = None,
    sinks: Sequence[OutputSink] = (),
    registry: CollectorRegistry | None = None,
    error_status: ErrorStatus | None = None,
) -> AsyncIterator[Gateway]:
    """Build and run the gateway ``config`` describes, for the ``async with`` block.

    Leaving the block normally drains the pipeline (see
    :func:`~trio_orchestrator.open_pipeline`); leaving it by an exception cancels what is in
    flight. Then everything closes in reverse order of opening.

    Args:
        config: the configuration (defaults throughout when None).
        worker: the provider worker to use instead of ``[[providers]]`` (the layers that
            ``[resilience]`` enables still go around it).
        retriever: the retrieval stage's retriever.
        assembler: the assembly stage's assembler.
        post_processors: text filters (default: the request's stop sequences).
        sinks: receive every completed answer.
        registry: the Prometheus registry for the metrics (default: a new one per gateway;
            read it with ``gateway.observed.render()``).
        error_status: the HTTP status and error code a client gets for an error, for the
            request log (the service gives its own; default: status 0 and the error's class).

    Raises:
        ConfigError: a provider's key comes from an environment variable that is not set,
            or a routing deployment names a provider that is not configured.
        RedisUnavailable: Redis is unreachable at start and ``on_start_failure`` is ``fail``.
    """
    config = config or Config()
    gateway = Gateway(config)
    body_error: BaseException | None = None
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(_open_redis(config))
        if redis is not None:
            gateway.redis = redis
            fails_closed = config.distributed.rate_limit_policy == "fail_closed"
            gateway.add(_RedisReadiness(redis, fails_closed))
            gateway.add(redis)
        await stack.enter_async_context(_open_store(gateway, config))
        providers = _open_providers(gateway, config, worker, stack)
        nursery = await stack.enter_async_context(trio.open_nursery())
        try:
            top = await _assemble(gateway, config, providers, redis, stack, nursery)
            noting: NotingWorker | None = None
            if gateway.store is not None:
                top = KeyPolicyWorker(top, gateway.keys)
                gateway.spend = SpendWriter(gateway.store, config.storage)
                gateway.add(gateway.spend)
                await nursery.start(gateway.spend.run)
                nursery.start_soon(_sync_keys, gateway, config.storage.sync_interval)
                if redis is not None:
                    gateway.shared_budgets = await _share_budgets(gateway, redis, nursery)
                if config.storage.log_requests:
                    top = noting = NotingWorker(top)
                    gateway.request_log = RequestLogWriter(gateway.store, config.storage)
                    gateway.add(gateway.request_log)
                    await nursery.start(gateway.request_log.run)
            top = await _experiment(gateway, config, top, nursery)
            dead_letters = await stack.enter_async_context(_open_dead_letters(config, redis))
            async with open_pipeline(
                top,
                config,
                retriever=retriever,
                assembler=assembler,
                post_processors=post_processors,
                sinks=sinks,
                dead_letters=dead_letters,
            ) as pipeline:
                gateway._pipeline = pipeline
                gateway.add(pipeline, "pipeline")
                gateway.add(pipeline.dead_letters)
                spend = SpendListener(
                    gateway.spend, gateway.keys, gateway.priced_facts, gateway.provider_of
                )
                if gateway.request_log is None:
                    pipeline.add_listener(spend)
                else:
                    # One listener for both: each request priced once.
                    listener = _request_logger(gateway, noting, error_status, spend)
                    pipeline.add_listener(listener)
                    gateway.add(listener, "storage")  # content settings reload
                gateway.observed = _instrument(gateway, registry)
                yield gateway
        except BaseException as exc:
            # Re-raised below, outside the nursery, so the caller sees its own exception
            # rather than an ExceptionGroup wrapping it.
            body_error = exc
        finally:
            if gateway.observed is not None:
                # Flushing spans may block on the network: bounded, and done even when
                # the gateway is being cancelled.
                with trio.move_on_after(_FLUSH_TIMEOUT, shield=True):
                    await trio.to_thread.run_sync(gateway.observed.close, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


def _request_logger(
    gateway: Gateway,
    noting: NotingWorker | None,
    error_status: ErrorStatus | None,
    spend: SpendListener,
) -> RequestLogListener:
    assert gateway.request_log is not None
    storage = gateway.config.storage
    listener = RequestLogListener(
        gateway.request_log,
        gateway.keys,
        gateway.priced_facts,
        gateway.provider_of,
        noting,
        log_content=storage.log_content,
        redactor=Redactor(storage.redact, storage.log_content_max_chars),
        spend=spend,
    )
    if error_status is not None:
        listener.error_status = error_status
    return listener


def _instrument(gateway: Gateway, registry: CollectorRegistry | None) -> Instrumentation:
    if registry is None and gateway.config.observability.metrics.enabled:
        registry = prometheus().CollectorRegistry()
    observed = instrument_pipeline(
        gateway.pipeline,
        gateway.config,
        registry,
        parts=list(gateway.parts()),
        catalogue=gateway.catalogue,
    )
    if gateway.experiments is not None and observed.registry is not None:
        observed.register_collector(ExperimentCollector(gateway.experiments))
    return observed


async def _experiment(
    gateway: Gateway, config: Config, top: ModelWorker, nursery: trio.Nursery
) -> ModelWorker:
    """``top`` behind the experiments' layer, the outermost, when ``[experiments]`` has
    any: a variant's model then meets the caller's key policy like any other. With a store,
    their state is loaded before the first request and written as it changes."""
    if not config.experiments.enabled:
        return top
    experiments = Experiments(config.experiments, gateway.priced_facts)
    gateway.experiments = experiments
    gateway.add(experiments, "experiments")
    if gateway.store is not None:
        await nursery.start(experiments.run, gateway.store, config.storage.flush_interval)
    return ExperimentLayer(top, experiments)


async def _assemble(
    gateway: Gateway,
    config: Config,
    providers: dict[str, ModelWorker],
    redis: RedisConnection | None,
    stack: AsyncExitStack,
    nursery: trio.Nursery,
) -> ModelWorker:
    """Per-provider layers → router or balancer → outer layers."""
    providers = {
        label: _limit_adaptively(gateway, config, label, worker)
        for label, worker in providers.items()
    }
    if config.routing.enabled:
        guarded = {
            label: wrap(
                worker,
                config.resilience,
                _context(gateway, nursery, label, redis),
                only=PER_PROVIDER_LAYERS,
            )
            for label, worker in providers.items()
        }
        # The router skips a provider whose breaker is open or whose keys all rest.
        health = [c.part for c in gateway.components if isinstance(c.part, HealthCheck)]
        router = await stack.enter_async_context(
            open_router(config.routing, guarded, health=health, catalogue=gateway.catalogue)
        )
        gateway.add(router, "routing")
        gateway._catalog = gateway._router = router
        inner: ModelWorker = router
        label = "router"
    elif len(providers) == 1:
        ((label, inner),) = providers.items()
    else:
        assert config.providers is not None
        entries = config.providers.providers
        inner = LoadBalancedWorker(
            list(providers.values()),
            config.providers.strategy,
            [p.weight for p in entries],
            [p.models for p in entries],
        )
        gateway.add(inner, "providers", section=_providers_of)
        label = "balancer"
    skip = PER_PROVIDER_LAYERS if config.routing.enabled else ()
    context = _context(gateway, nursery, label, redis, providers)
    context = attrs.evolve(context, charged=_charged_as_caller(gateway))
    return wrap(inner, config.resilience, context, skip=skip)


def _charged_as_caller(gateway: Gateway) -> Callable[[ModelWorker], ModelWorker]:
    """How the semantic cache's embedding call is charged to the caller's key, as a
    request of its own: the virtual key's policy (models, rpm/tpm, budget) and spend."""

    def listener() -> SpendListener:
        return SpendListener(gateway.spend, gateway.keys, gateway.priced_facts, gateway.provider_of)

    def charged(worker: ModelWorker) -> ModelWorker:
        spending = SpendingWorker(worker, listener)
        return spending if gateway.store is None else KeyPolicyWorker(spending, gateway.keys)

    return charged


def _limit_adaptively(
    gateway: Gateway, config: Config, label: str, worker: ModelWorker
) -> ModelWorker:
    """``worker`` behind its adaptive concurrency limit when its entry enables one: directly
    around the provider, so each call the upstream sees (each retry too) is admitted."""
    entry = _entry_of(label)(config)
    if entry is None or not entry.adaptive.enabled:
        return worker
    layer = AdaptiveLimitLayer(worker, entry.adaptive, provider=label)
    gateway.add(layer, "providers", provider=label, section=_entry_of(label))
    return layer


def _context(
    gateway: Gateway,
    nursery: trio.Nursery,
    label: str,
    redis: RedisConnection | None,
    providers: dict[str, ModelWorker] | None = None,
) -> LayerContext:
    def register(part: object, path: str) -> None:
        gateway.add(part, path, provider=label)

    return LayerContext(nursery, label, redis, register, providers or {})


def _open_providers(
    gateway: Gateway, config: Config, given: ModelWorker | None, stack: AsyncExitStack
) -> dict[str, ModelWorker]:
    """One worker per provider, by label; each registered with its entry and key pool."""
    if given is not None:
        label = provider_name(given)
        gateway._providers.append(label)
        gateway.add(given, provider=label)
        if (given_keys := key_pool(given)) is not None:
            gateway.add(given_keys, provider=label)
        if isinstance(given, ModelCatalog):
            gateway._catalog = given
        return {label: given}
    workers: dict[str, ModelWorker] = {}
    if config.providers is None or config.routing.enabled:
        echo = config.service.echo
        builtin = EchoWorker(echo.token_delay, echo.first_token_delay, model=echo.model)
        workers["echo"] = gateway._catalog = builtin
    if config.providers is not None:
        library, transport = config.providers.http_client, config.providers.transport
        for entry in config.providers.providers:
            client = None
            if entry.kind != "echo":
                client = make_client(entry, library, transport)
                stack.push_async_callback(client.aclose)
            workers[entry.label] = worker_for(entry, client)
    gateway.add(_ProviderSet(config.providers), "providers")
    gateway._workers = workers
    for label, worker in workers.items():
        gateway._providers.append(label)
        gateway.add(worker, "providers", provider=label, section=_entry_of(label))
        pool = key_pool(worker)
        if pool is not None:
            gateway.add(pool, provider=label)
    if config.providers is not None and config.routing.enabled:
        # Requests go only to configured providers; echo only when a deployment names it.
        named = {d.provider for d in config.routing.deployments}
        if "echo" not in named:
            gateway._providers.remove("echo")
    return workers


@attrs.define(eq=False)
class _ProviderSet:
    """Takes reloads of ``[[providers]]`` as a whole: adding or removing a provider needs
    its worker and client, so it is refused (each provider takes its own entry's keys)."""

    providers: ProvidersConfig | None

    def reconfigure(self, section: ProvidersConfig | None, /) -> list[str]:
        before = [p.label for p in self.providers.providers] if self.providers else []
        after = [p.label for p in section.providers] if section else []
        if before != after:
            what = "adding, removing or reordering providers needs a restart"
            return [f"providers.providers: {what} {before} → {after}"]
        old = self.providers.http_client if self.providers else None
        if section is not None and old is not None and section.http_client != old:
            what = "the HTTP library changes only on a restart"
            return [f"providers.http_client: {what} {old!r} → {section.http_client!r}"]
        was = self.providers.transport if self.providers else None
        if section is not None and was is not None and section.transport != was:
            what = "the HTTP transport changes only on a restart"
            return [f"providers.transport: {what} {was!r} → {section.transport!r}"]
        self.providers = section
        return []


def _providers_of(config: Config) -> ProvidersConfig | None:
    return config.providers


def _entry_of(label: str) -> Callable[[Config], ProviderConfig | None]:
    def entry(config: Config) -> ProviderConfig | None:
        providers = config.providers.providers if config.providers is not None else ()
        return next((p for p in providers if p.label == label), None)

    return entry


@asynccontextmanager
async def _open_store(gateway: Gateway, config: Config) -> AsyncIterator[None]:
    """Open the store, load the virtual keys and seed their budgets; close it last.

    A store that cannot be opened does not stop the gateway (requests never depend on it):
    it is logged, spend waits in the writer's buffer, and the store is tried again on
    every write.
    """
    store = store_for(config.storage) if config.storage.enabled else None
    if store is None:
        yield
        return
    gateway.store = store
    try:
        try:
            await _load_keys(store, gateway.keys)
        except StorageUnavailable as exc:
            logger.warning("storage unavailable at start (keys not loaded): %s", exc)
        yield
    finally:
        await store.aclose()


async def _sync_keys(gateway: Gateway, interval: float) -> None:
    """Every ``interval`` seconds, read the keys and their spend again: other processes on
    the same database create, change and revoke keys and spend against their budgets."""
    assert gateway.store is not None
    while True:
        await trio.sleep(interval)
        try:
            if gateway.spend is not None:
                await gateway.spend.flush()  # this process's spend is in the sums read next
            await _load_keys(gateway.store, gateway.keys, revoked=True)
        except StorageUnavailable as exc:
            logger.debug("storage: keys not refreshed: %s", exc)


async def _share_budgets(
    gateway: Gateway, redis: RedisConnection, nursery: trio.Nursery
) -> SharedBudgets:
    """Key spend summed over every process in Redis, key changes announced there."""
    from .distributed.budgets import SharedBudgets

    store = gateway.store
    assert store is not None

    async def reload_keys() -> None:
        try:
            await _load_keys(store, gateway.keys, revoked=True)
        except StorageUnavailable as exc:
            logger.debug("storage: keys not reloaded: %s", exc)

    interval = gateway.config.distributed.spend_sync_interval
    shared = SharedBudgets(redis, gateway.keys, interval, reload_keys)
    gateway.add(shared)
    await nursery.start(shared.run)
    return shared


async def _load_keys(store: Store, keys: VirtualKeys, *, revoked: bool = False) -> None:
    """Put the live keys in memory (with ``revoked``, remove the revoked ones) and each
    key's spend in its current period."""
    records = await store.list_keys(revoked=revoked)
    for record in records:
        keys.put(record)
    records = [r for r in records if r.revoked_at is None]
    now = keys.clock()
    for period in {r.budget_period for r in records if r.budget is not None}:
        rows = await store.spend("key", since=period_start(period, now))
        for row in rows:
            live = keys.get(row.group)
            if live is not None and live.budget_period == period:
                keys.budgets.seed(row.group, period, row.cost)
    logger.debug("storage: %d virtual keys loaded", len(records))


@asynccontextmanager
async def _open_redis(config: Config) -> AsyncIterator[RedisConnection | None]:
    if config.distributed.redis_url is None:
        yield None
        return
    from .distributed.connection import open_redis

    async with open_redis(config.distributed) as redis:
        yield redis


@asynccontextmanager
async def _open_dead_letters(
    config: Config, redis: RedisConnection | None
) -> AsyncIterator[DeadLetterQueue | None]:
    if redis is None:
        yield None
        return
    from .distributed.state import open_dead_letters

    async with open_dead_letters(redis, config.pipeline.dead_letter_capacity) as queue:
        yield queue
