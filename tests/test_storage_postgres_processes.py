"""Three ``serve`` processes on one PostgreSQL database: a key made through one works
through all, its spend is summed over all, and its budget holds across them with an
overshoot bounded by about one ``sync_interval`` of the others' spend. Real processes, a
real server, the real clock."""

from __future__ import annotations

import math
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import openai
import trio
from postgres_fixture import postgres_cluster, postgres_server
from test_admin_keys_e2e import ADMIN, ANSWER, COST, MODEL, ask, create, spend_of
from test_cli_serve import serve_process

from trio_orchestrator.testing import FakeBehaviour, open_fake_provider

__all__ = ["postgres_cluster", "postgres_server"]

PROCESSES = 3
SYNC, FLUSH = 1.0, 0.2  # [storage] sync_interval and flush_interval, seconds
PACE = 0.05  # seconds between one client's requests: 20 requests/s per process
BUDGET = 30  # the key's budget, in requests


def write_config(path: Path, upstream: str, dsn: str) -> Path:
    """A ``serve`` configuration on the shared database ``dsn``."""
    path.write_text(
        f'[[service.api_keys]]\nkey = "{ADMIN}"\nadmin = true\n'
        f'[[providers.providers]]\nkind = "openai"\nname = "up"\nbase_url = "{upstream}"\n'
        f'api_keys = ["upstream-key"]\nstream = false\n'
        f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"\n'
        f"sync_interval = {SYNC}\nflush_interval = {FLUSH}\n"
    )
    return path


async def start(stack: AsyncExitStack, config: Path) -> str:
    """A ``serve`` process on ``config``, stopped (SIGTERM) when ``stack`` closes; its URL."""
    served = await stack.enter_async_context(serve_process(config))
    stack.callback(served.process.send_signal, signal.SIGTERM)
    return served.url


async def until_known(url: str, secret: str) -> None:
    """Wait until the process at ``url`` knows the key (a 401 costs nothing)."""
    with trio.fail_after(10 * SYNC):
        while True:
            try:
                await ask(url, secret)
                return
            except openai.AuthenticationError:
                await trio.sleep(SYNC / 10)


async def spend_until_refused(url: str, secret: str, answered: list[int]) -> None:
    """Send paced requests with ``secret`` until the budget refuses one; count the rest."""
    while True:
        try:
            await ask(url, secret)
        except openai.RateLimitError as refused:
            refusal = refused
            break
        answered.append(1)
        await trio.sleep(PACE)
    assert refusal.code == "insufficient_quota"


async def test_three_serve_processes_share_keys_spend_and_a_budget(
    tmp_path: Path, postgres_server: str
) -> None:
    """A key created on one process is served by all three; its budget refuses on every
    process, past by at most about one sync_interval of the others' spend; the spend
    endpoint sums every process's spend."""
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(open_fake_provider(FakeBehaviour(body=ANSWER)))
        config = write_config(tmp_path / "gw.toml", fake.openai_base_url, postgres_server)
        urls = [await start(stack, config) for _ in range(PROCESSES)]
        headers = {"authorization": f"Bearer {ADMIN}"}
        admin = await stack.enter_async_context(
            httpx.AsyncClient(base_url=urls[0], headers=headers)
        )
        key = await create(admin, models=[MODEL], budget=(BUDGET - 0.5) * COST)
        answered: list[int] = [1] * PROCESSES  # the warm-up request of each process
        async with trio.open_nursery() as nursery:
            for url in urls:
                nursery.start_soon(until_known, url, key["key"])
        async with trio.open_nursery() as nursery:
            for url in urls:
                nursery.start_soon(spend_until_refused, url, key["key"], answered)
        overshoot = len(answered) - BUDGET
        # The others' spend in one sync_interval and a flush, plus a request in flight each.
        bound = (PROCESSES - 1) * (SYNC + FLUSH) / PACE + PROCESSES
        print(f"\nbudget {BUDGET} requests; answered {len(answered)}; overshoot {overshoot}")
        assert 0 <= overshoot <= bound
        for url in urls:  # each answer writes that process's buffer first
            async with httpx.AsyncClient(base_url=url, headers=headers) as client:
                row = await spend_of(client, key["id"])
        # The last answer, once every process had written: all three processes' spend.
        assert row["requests"] == len(answered)
        assert math.isclose(row["cost_usd"], len(answered) * COST)
