"""The sharded transport: the connection limit holds in all, requests spread, slots return."""

from __future__ import annotations

from typing import Any, cast

import attrs
import httpx
import httpx2
import pytest
import trio

from trio_orchestrator import PromptRequest
from trio_orchestrator.config import Config
from trio_orchestrator.errors import ProviderConnectionError
from trio_orchestrator.events import StreamEvent, TextDelta
from trio_orchestrator.gateway import open_gateway
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider, open_fake_provider
from trio_orchestrator.types import GenerationParams
from trio_orchestrator.workers import OpenAIWorker
from trio_orchestrator.workers.config import ProviderConfig, ProvidersConfig
from trio_orchestrator.workers.factory import make_client, worker_for
from trio_orchestrator.workers.transport import ShardedTransport, pool_limits

REQUEST = PromptRequest(input="hi", params=GenerationParams(model="fake-model"))


async def wait_until_active(fake: FakeProvider, count: int) -> None:
    # Client and fake run in this Trio run: when every task is blocked, the requests that
    # can be answered are being answered.
    with trio.fail_after(10):
        while fake.statistics().active < count:
            await trio.testing.wait_all_tasks_blocked(0.05)


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
async def test_connections_stay_within_the_limit_and_spread_evenly(library: str) -> None:
    """Twenty held streams over 7 connections in pools of 3: 7 answered, the rest queued."""
    module = httpx2 if library == "httpx2" else httpx
    transport = ShardedTransport(module, max_connections=7, pool_size=3)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        open_fake_provider(Behaviour(tokens=4, stall_after=1)) as fake,
        module.AsyncClient(transport=transport, timeout=None) as client,
        trio.open_nursery() as nursery,
    ):
        url = fake.openai_base_url + "/chat/completions"

        async def hold() -> None:
            response = await client.send(client.build_request("POST", url, json=body), stream=True)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await response.aclose()

        for _ in range(20):
            nursery.start_soon(hold)
        await wait_until_active(fake, 7)
        await trio.testing.wait_all_tasks_blocked(0.05)  # and no eighth answer is coming
        assert fake.statistics().active == 7  # the limit holds over all pools together
        assert sorted(transport.in_flight) == [6, 7, 7]  # least loaded first: an even spread
        nursery.cancel_scope.cancel()
    assert transport.in_flight == [0, 0, 0]  # every slot came back


async def test_a_failed_connection_gives_its_slot_back() -> None:
    """A refused connection fails typed, and its pool's count of requests returns to 0."""
    transport = ShardedTransport(httpx2, max_connections=4, pool_size=2)
    async with httpx2.AsyncClient(transport=cast(Any, transport), timeout=None) as client:
        worker = OpenAIWorker(cast(httpx.AsyncClient, client), "http://127.0.0.1:9/v1")

        async def emit(_: StreamEvent) -> None:
            raise AssertionError("no events from a refused connection")

        for _ in range(3):
            with pytest.raises(ProviderConnectionError):
                await worker.generate(REQUEST, emit)
    assert transport.in_flight == [0, 0]


async def test_worker_streams_through_the_client_make_client_builds() -> None:
    """make_client's sharded client carries a whole streamed answer from the fake provider."""
    async with open_fake_provider(Behaviour(tokens=5)) as fake:
        provider = ProviderConfig(kind="openai", base_url=fake.openai_base_url, pool_size=2)
        async with make_client(provider) as client:
            answers: list[str] = []
            for _ in range(3):
                text: list[str] = []

                async def emit(event: StreamEvent, text: list[str] = text) -> None:
                    if isinstance(event, TextDelta):
                        text.append(event.text)

                await worker_for(provider, client).generate(REQUEST, emit)
                answers.append("".join(text))
            assert pool_limits(client) == (1024, 2)
    assert answers == ["lorem ipsum dolor sit amet"] * 3


async def test_reload_refuses_new_connection_limits() -> None:
    """Changing max_connections or pool_size on reload is refused: the client is built."""
    provider = ProviderConfig(kind="openai", name="p", base_url="http://127.0.0.1:9/v1")
    same = Config(providers=ProvidersConfig((provider,)))
    async with open_gateway(same) as gateway:
        assert gateway.reload(same).refused == ()
        for changed_provider in (
            attrs.evolve(provider, max_connections=8),
            attrs.evolve(provider, pool_size=4),
        ):
            changed = Config(providers=ProvidersConfig((changed_provider,)))
            refused = gateway.reload(changed).refused
            assert any("max_connections and pool_size" in r for r in refused)


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
def test_every_pool_shares_one_tls_context(library: str) -> None:
    """The pools share one TLS context (building one reads the whole CA bundle, so one per
    pool made opening a provider take seconds), and the next client reuses it."""
    module = httpx2 if library == "httpx2" else httpx
    first = ShardedTransport(module, max_connections=64, pool_size=4)
    second = ShardedTransport(module, max_connections=8, pool_size=4)
    contexts = {id(pool._pool._ssl_context) for t in (first, second) for pool in t._pools}
    assert len(first._pools) == 16
    assert len(contexts) == 1
