"""`trio-orchestrator serve` processes sharing one Redis: a global limit holds across them,
identical requests to different processes make one upstream call, a breaker opened on one
refuses on the others, and /readyz says whether Redis is there."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from redis_fixture import RedisServer, redis_server
from service_helpers import make_config, running_service
from test_cli_serve import Served, serve_process

from trio_orchestrator.distributed import DistributedConfig
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider, open_fake_provider

__all__ = ["redis_server"]

BURST = 10


def write_config(path: Path, fake: FakeProvider, server: RedisServer, extra: str) -> Path:
    """A service configuration: the fake provider, Redis, and ``extra`` TOML."""
    path.write_text(
        "[providers]\n"
        f'providers = [{{ kind = "openai", name = "fake", base_url = "{fake.openai_base_url}",'
        ' models = ["fake-model"] }]\n\n'
        f'[distributed]\nredis_url = "{server.url}"\nhealth_interval = 0.1\n\n{extra}'
    )
    return path


@asynccontextmanager
async def services(config: Path, count: int) -> AsyncIterator[list[Served]]:
    """``count`` serve processes with ``config``."""
    async with AsyncExitStack() as stack:
        served = [await stack.enter_async_context(serve_process(config)) for _ in range(count)]
        try:
            yield served
        finally:
            for service in served:  # its output reader ends when it does
                service.process.kill()


async def test_three_services_admit_a_global_rate(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Three services under a global 20 requests/s admit 20·t within 5 % over 3 s."""
    rate, seconds = 20.0, 3.0
    limits = (
        '[resilience.rate_limits]\nenabled = true\nlimits = [{ scope = "provider", '
        f'requests_per_second = {rate}, burst = {BURST}, mode = "reject" }}]\n'
    )
    statuses: list[int] = []
    async with open_fake_provider() as fake:
        config = write_config(tmp_path / "service.toml", fake, redis_server, limits)
        async with services(config, 3) as served, AsyncExitStack() as clients:
            # The clients are made before the window opens: each loads the CA bundle (0.086 s
            # apiece here, timed with 12 httpx.AsyncClient()), and 12 of them ate a quarter of
            # the 3 s window while the bucket, full at its burst, wasted its refill.
            pool = [
                await clients.enter_async_context(httpx.AsyncClient(base_url=s.url, timeout=10))
                for s in served
                for _ in range(4)
            ]
            opened = time.monotonic()
            end = opened + seconds

            async def hammer(client: httpx.AsyncClient) -> None:
                # Stops between requests (cancelling one mid-way would leak httpx's stream).
                while time.monotonic() < end:
                    response = await client.post("/v1/prompt", json={"input": "hi"})
                    statuses.append(response.status_code)

            async with trio.open_nursery() as nursery:
                for client in pool:
                    nursery.start_soon(hammer, client)
            window = time.monotonic() - opened
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert 0.95 * rate * seconds <= admitted <= rate * window + BURST


async def test_identical_requests_to_two_services_make_one_upstream_call(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The same request sent to two services at once reaches the provider once."""
    body = {"input": "the same question", "temperature": 0}
    async with open_fake_provider(Behaviour(first_token_delay=0.5)) as fake:
        config = write_config(
            tmp_path / "service.toml",
            fake,
            redis_server,
            "[resilience.coalescing]\nenabled = true\n",
        )
        async with services(config, 2) as served:
            answers: list[httpx.Response] = []

            async def ask(url: str) -> None:
                async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                    answers.append(await client.post("/v1/prompt", json=body))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, served[0].url)
                await trio.sleep(0.1)
                nursery.start_soon(ask, served[1].url)
        seen = fake.statistics().requests
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["completion"]["text"] == answers[1].json()["completion"]["text"]
    assert seen == 1


async def test_a_breaker_opened_on_one_service_refuses_on_another(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A provider failure opens the breaker on one service; the other refuses at once."""
    breaker = "[resilience.breaker]\nenabled = true\nfailure_threshold = 1\ncooldown = 60\n"
    async with open_fake_provider(Behaviour(status=500)) as fake:
        config = write_config(tmp_path / "service.toml", fake, redis_server, breaker)
        async with services(config, 2) as (a, b):
            async with httpx.AsyncClient(base_url=a.url, timeout=10) as client:
                failed = await client.post("/v1/prompt", json={"input": "hi"})
            async with httpx.AsyncClient(base_url=b.url, timeout=10) as client:
                refused = await client.post("/v1/prompt", json={"input": "hi"})
        seen = fake.statistics().requests
    assert failed.status_code >= 500
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "circuit_open"
    assert seen == 1


@pytest.mark.parametrize(
    ("policy", "status_while_down"), [("fail_closed", 503), ("fail_open", 200)]
)
async def test_readyz_follows_redis_under_the_policy(
    redis_server: RedisServer, policy: str, status_while_down: int
) -> None:
    """/readyz through the service: Redis lost under fail_closed is 503 with the reason, and
    200 again once Redis is back; under fail_open it stays 200 (requests are served locally)."""
    distributed = DistributedConfig(
        redis_url=redis_server.url,
        health_interval=0.05,
        rate_limit_policy=policy,  # type: ignore[arg-type]
    )
    config = attrs.evolve(make_config(), distributed=distributed)
    async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
        ready = await client.get("/readyz")
        redis_server.stop()
        lost = await readyz_until(client, redis="down")
        redis_server.start()
        back = await readyz_until(client, redis="up")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "redis": "up"})
    assert lost.status_code == status_while_down
    if status_while_down == 503:
        assert lost.json() == {
            "status": "not ready",
            "reasons": ['Redis is down and [distributed] rate_limit_policy is "fail_closed"'],
            "redis": "down",
        }
    else:
        assert lost.json() == {"status": "ready", "redis": "down"}
    assert (back.status_code, back.json()) == (200, {"status": "ready", "redis": "up"})


async def readyz_until(client: httpx.AsyncClient, *, redis: str) -> httpx.Response:
    """Poll /readyz until it says Redis is ``redis`` (up or down); 10 s at most."""
    with trio.fail_after(10):
        while (answer := await client.get("/readyz")).json().get("redis") != redis:  # noqa: ASYNC110
            await trio.sleep(0.02)
    return answer


async def test_a_service_rides_out_redis_going_away_and_coming_back(
    redis_server: RedisServer,
) -> None:
    """Redis stopped mid-run under a serving process: no request hangs, fail_closed refuses
    with 429 while it is gone, /readyz says so, and both recover when Redis returns."""
    from trio_orchestrator.config import parse_config

    config = parse_config(
        f"""
[service]
port = 0
[distributed]
redis_url = "{redis_server.url}"
health_interval = 0.05
rate_limit_policy = "fail_closed"
[resilience.rate_limits]
enabled = true
limits = [{{ scope = "provider", requests_per_second = 1000.0, burst = 1000.0, mode = "reject" }}]
"""
    )
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
        before = await client.post("/v1/chat/completions", json=body)
        redis_server.stop()
        with trio.fail_after(5):  # never hangs: every answer comes within Redis's timeout
            while (ready := await client.get("/readyz")).status_code == 200:  # noqa: ASYNC110
                await trio.sleep(0.02)
            during = [await client.post("/v1/chat/completions", json=body) for _ in range(5)]
        redis_server.start()
        with trio.fail_after(10):
            while (await client.get("/readyz")).status_code != 200:  # noqa: ASYNC110
                await trio.sleep(0.05)
            after = await client.post("/v1/chat/completions", json=body)
    assert before.status_code == 200
    assert ready.json()["redis"] == "down"
    assert {r.status_code for r in during} == {429}
    assert after.status_code == 200
    assert after.json()["choices"][0]["message"]["content"] == "hi"


async def test_routers_in_two_processes_share_each_providers_breaker(
    redis_server: RedisServer,
) -> None:
    """In routing mode too, a provider's breaker is shared: once one router's calls open it,
    another router (its own Redis connection, as in another process) does not call that
    provider at all, and falls back."""
    from trio_orchestrator import GenerationParams, PromptRequest, collect, open_gateway
    from trio_orchestrator.config import parse_config

    async with (
        open_fake_provider(Behaviour(status=500)) as failing,
        open_fake_provider(Behaviour(text="fine")) as fine,
    ):
        text = f"""
[distributed]
redis_url = "{redis_server.url}"
breaker_cache = 0.001
[resilience.breaker]
enabled = true
failure_threshold = 1
cooldown = 60.0
[[providers.providers]]
kind = "openai"
name = "a"
base_url = "{failing.openai_base_url}"
[[providers.providers]]
kind = "openai"
name = "b"
base_url = "{fine.openai_base_url}"
[routing]
strategy = "cost"
[[routing.deployments]]
name = "cheap"
model = "m"
provider = "a"
input_price = 1.0
[[routing.deployments]]
name = "dear"
model = "m"
provider = "b"
input_price = 2.0
"""
        config = parse_config(text)
        request = PromptRequest(input="hi", params=GenerationParams(model="m"))
        async with (
            open_gateway(config) as first,
            open_gateway(config) as second,
        ):
            assert (await collect(first.worker, request)).text == "fine"  # a failed, b answered
            answers = [(await collect(second.worker, request)).text for _ in range(3)]
    assert answers == ["fine"] * 3
    assert failing.statistics().requests == 1  # only the first router's call


async def test_a_letter_shed_by_one_process_is_listed_and_replayed_by_another(
    redis_server: RedisServer,
) -> None:
    """/v1/dead-letters on one service lists a letter another process dead-lettered, and
    replaying it there completes it (once: the letter leaves the shared stream)."""
    from trio_orchestrator import EchoWorker, PromptRequest, open_gateway
    from trio_orchestrator.pipeline import DeadLetter

    config = attrs.evolve(
        make_config(),
        distributed=DistributedConfig(redis_url=redis_server.url, health_interval=0.05),
    )
    shed = PromptRequest(input="shed elsewhere", request_id="req_elsewhere")
    async with open_gateway(config, worker=EchoWorker()) as other:
        other.pipeline.dead_letters.add(DeadLetter(shed, "inference", "full", trio.current_time()))
        async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
            # The other process writes its letters in the background; generous, since this
            # guards against a hang, not a slow machine.
            with trio.fail_after(30):
                while not (await client.get("/v1/dead-letters")).json()["data"]:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            listed = (await client.get("/v1/dead-letters")).json()["data"]
            replayed = await client.post("/v1/dead-letters/req_elsewhere/replay")
            after = (await client.get("/v1/dead-letters")).json()["data"]
    assert [letter["id"] for letter in listed] == ["req_elsewhere"]
    assert (replayed.status_code, replayed.json()["outcome"]) == (200, "completed")
    assert replayed.json()["completion"]["text"] == "shed elsewhere"
    assert after == []
