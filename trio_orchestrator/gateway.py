"""The worker a configuration describes, for the service, the batch command and library users.

::

    async with open_configured_worker(config) as worker:
        async with open_pipeline(worker, config) as pipeline:
            ...

- No ``[providers]``: the built-in echo worker (``[service.echo]``); no key, no network.
- Providers, no routing: the provider's worker, or a load balancer over several.
- ``[routing]`` with deployments: a router over one worker per provider, each behind its
  own circuit breaker and retries (so the router can skip a provider whose breaker is open
  or whose API keys all rest, and fall back to the next deployment); the pipeline then
  puts the remaining layers (cache → coalescing → rate limit) in front of the router.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from .config import Config
from .resilience.breaker import CircuitBreakerLayer
from .resilience.stack import LayerContext, iter_layers, open_redis_for, wrap
from .routing.router import open_router
from .routing.strategies import HealthCheck
from .workers import EchoWorker, ModelWorker
from .workers.config import make_client, open_worker, worker_for
from .workers.keys import KeyPool

__all__ = ["open_configured_worker"]

# The layers that go below the router, one stack per provider.
PER_PROVIDER_LAYERS = ("circuit_breaker", "retry")


def echo_worker(config: Config) -> EchoWorker:
    """The built-in echo worker, as ``[service.echo]`` configures it."""
    echo = config.service.echo
    return EchoWorker(echo.token_delay, echo.first_token_delay, model=echo.model)


@asynccontextmanager
async def open_configured_worker(config: Config) -> AsyncIterator[ModelWorker]:
    """Open the worker ``config`` describes, and close its HTTP clients afterwards.

    Raises:
        ConfigError: a provider's key comes from an environment variable that is not set.
    """
    if not config.routing.enabled:
        if config.providers is None:
            yield echo_worker(config)
            return
        async with open_worker(config.providers) as worker:
            yield worker
        return
    async with (
        # With [distributed], each provider's breaker and limits are shared across
        # processes; the connection (and its own task) outlives the layers' nursery.
        open_redis_for(config, None) as redis,
        AsyncExitStack() as clients,
        trio.open_nursery() as nursery,
    ):
        workers: dict[str, ModelWorker] = {"echo": echo_worker(config)}
        if config.providers is not None:
            for provider in config.providers.providers:
                client = None
                if provider.kind != "echo":
                    client = make_client(provider, config.providers.http_client)
                    clients.push_async_callback(client.aclose)
                workers[provider.label] = worker_for(provider, client)
        guarded = {
            name: wrap(
                worker,
                config.resilience,
                LayerContext(nursery, name, redis),
                only=PER_PROVIDER_LAYERS,
            )
            for name, worker in workers.items()
        }
        # The router skips a provider whose breaker is open or whose keys all rest.
        health: list[HealthCheck] = [
            layer
            for worker in guarded.values()
            for layer in iter_layers(worker)
            if isinstance(layer, CircuitBreakerLayer)
        ]
        health += [
            pool for w in workers.values() if isinstance(pool := getattr(w, "keys", None), KeyPool)
        ]
        body_error: BaseException | None = None
        async with open_router(config.routing, guarded, health=health) as router:
            router.layers_inside = PER_PROVIDER_LAYERS
            try:
                yield router
            except BaseException as exc:
                # Re-raised below, outside the nursery, so the caller sees its own exception
                # rather than an ExceptionGroup wrapping it.
                body_error = exc
        nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
