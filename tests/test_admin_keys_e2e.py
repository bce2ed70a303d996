"""Virtual keys and spend end to end through the served path (issue 19, items 1, 2, 4):
the admin API over real HTTP, the official ``openai`` SDK with the key, the fake provider
upstream answering a known usage for a catalogue model, storage in SQLite on disk and, for
the key's life, a restart and a lost database, in a real PostgreSQL too."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from postgres_fixture import PostgresServer, postgres_cluster, postgres_server
from service_helpers import running_service

from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.testing import FakeBehaviour, FakeProvider, open_fake_provider

__all__ = ["postgres_cluster", "postgres_server"]

ADMIN = "sk-admin-for-tests"
MODEL = "gpt-4o-mini"  # catalogue: $0.15 / $0.075 cached / $0.60 per million tokens
USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 500,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 200},
    "completion_tokens_details": {"reasoning_tokens": 100},
}
# 800 uncached and 200 cached prompt tokens, 500 completion tokens (reasoning included).
COST = (800 * 0.15 + 200 * 0.075 + 500 * 0.6) / 1e6
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "ok"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": USAGE,
}


def settings(upstream: str, storage: str) -> Config:
    """The service with one admin key, one OpenAI-compatible provider, and ``storage``."""
    return parse_config(
        f'[service]\nport = 0\n[[service.api_keys]]\nkey = "{ADMIN}"\nadmin = true\n'
        f'[[providers.providers]]\nkind = "openai"\nname = "up"\nbase_url = "{upstream}"\n'
        f'api_keys = ["upstream-key"]\nstream = false\n[storage]\n{storage}'
    )


@asynccontextmanager
async def serving(
    fake: FakeProvider, storage: str, database: str = 'backend = "sqlite"\n'
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The service in front of ``fake`` on ``database`` (``[storage]`` lines; default:
    SQLite in memory) with ``storage``; an admin HTTP client on it, and its URL."""
    config = settings(fake.openai_base_url, database + storage)
    async with running_service(config) as url:
        headers = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as admin:
            yield admin, url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``[storage]`` lines naming a new database of each backend: a SQLite file, or a fresh
    database on the PostgreSQL test server (skipped, saying why, when it is absent)."""
    if request.param == "sqlite":
        return f'backend = "sqlite"\npath = "{tmp_path / "gw.sqlite"}"\n'
    dsn = request.getfixturevalue("postgres_server")
    return f'backend = "postgres"\ndsn = "{dsn}"\n'


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with open_fake_provider(FakeBehaviour(body=ANSWER)) as fake:
        yield fake


def sdk(url: str, key: str) -> openai.AsyncOpenAI:
    """The official client on the service with ``key``."""
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


async def ask(url: str, key: str, model: str = MODEL) -> str | None:
    """One chat completion with ``key``; its text."""
    async with sdk(url, key) as client:
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    return answer.choices[0].message.content


async def create(admin: httpx.AsyncClient, **members: Any) -> dict[str, Any]:
    """Create a key; its JSON (with the secret)."""
    response = await admin.post("/v1/admin/keys", json=members)
    assert response.status_code == 201, response.text
    key: dict[str, Any] = response.json()
    return key


async def metrics_showing(admin: httpx.AsyncClient, line: str) -> str:
    """``/metrics`` once it shows ``line``: the storage writer reports its state when it next
    tries to write (every ``flush_interval``, 0.05 s here), not when a request ends -- a
    fast client could read it before."""
    with trio.fail_after(10):
        while line not in (metrics := (await admin.get("/metrics")).text):  # noqa: ASYNC110
            await trio.sleep(0.05)
    return metrics


async def spend_of(admin: httpx.AsyncClient, key_id: str) -> dict[str, Any]:
    """The key's row of ``GET /v1/admin/spend?group_by=key``."""
    response = await admin.get("/v1/admin/spend", params={"group_by": "key"})
    assert response.status_code == 200, response.text
    rows = {row["key"]: row for row in response.json()["data"]}
    row: dict[str, Any] = rows[key_id]
    return row


async def test_key_lifecycle_spend_budget_and_revocation(fake: FakeProvider, database: str) -> None:
    """Create → the SDK's requests succeed → spend priced from the catalogue → 429
    insufficient_quota past the budget → revoke → 401, on SQLite and on PostgreSQL."""
    async with serving(fake, "", database) as (admin, url):
        key = await create(admin, label="team-a", models=[MODEL], budget=2.5 * COST)
        assert key["key"].startswith("sk-to-")
        assert key["budget_period"] == "month"
        assert await ask(url, key["key"]) == "ok"
        assert await ask(url, key["key"]) == "ok"
        row = await spend_of(admin, key["id"])
        assert row["requests"] == 2
        assert (row["prompt_tokens"], row["cached_tokens"]) == (2000, 400)
        assert (row["completion_tokens"], row["reasoning_tokens"]) == (1000, 200)
        assert math.isclose(row["cost_usd"], 2 * COST)
        assert await ask(url, key["key"]) == "ok"  # 2 x COST spent: still under 2.5 x COST
        with pytest.raises(openai.RateLimitError) as refused:
            await ask(url, key["key"])
        assert refused.value.code == "insufficient_quota"
        assert refused.value.type == "insufficient_quota"
        assert fake.statistics().requests == 3
        by_model = (await admin.get("/v1/admin/spend?group_by=model")).json()["data"]
        assert by_model[0]["model"] == MODEL
        assert math.isclose(by_model[0]["cost_usd"], 3 * COST)
        assert (await admin.delete(f"/v1/admin/keys/{key['id']}")).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            await ask(url, key["key"])


async def test_a_model_the_key_may_not_use_is_404_naming_it(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """A model outside the key's list is refused as OpenAI refuses a model one cannot use:
    404 model_not_found naming it; an alias maps to an allowed model."""
    async with serving(fake, "") as (admin, url):
        key = await create(admin, models=[MODEL], aliases={"fast": MODEL})
        with pytest.raises(openai.NotFoundError) as refused:
            await ask(url, key["key"], "gpt-4o")
        assert refused.value.code == "model_not_found"
        assert "gpt-4o" in refused.value.message
        assert fake.statistics().requests == 0
        assert await ask(url, key["key"], "fast") == "ok"
        assert fake.requests[-1].body["model"] == MODEL


async def test_restart_keeps_keys_and_spend(fake: FakeProvider, database: str) -> None:
    """After a restart on the same database (SQLite or PostgreSQL) the key still works, its
    spend is kept, and its budget counts what was spent before the restart."""
    async with serving(fake, "", database) as (admin, url):
        key = await create(admin, label="kept", budget=1.5 * COST, budget_period="day")
        assert await ask(url, key["key"]) == "ok"
    async with serving(fake, "", database) as (admin, url):
        assert await ask(url, key["key"]) == "ok"  # spent COST of 1.5 x COST: allowed
        with pytest.raises(openai.RateLimitError) as refused:
            await ask(url, key["key"])  # 2 x COST spent, across the restart
        assert refused.value.code == "insufficient_quota"
        row = await spend_of(admin, key["id"])
        assert row["requests"] == 2
        assert math.isclose(row["cost_usd"], 2 * COST)
        shown = (await admin.get(f"/v1/admin/keys/{key['id']}")).json()
        assert shown["label"] == "kept"
        assert math.isclose(shown["spend"], 2 * COST)


async def test_rotate_patch_list_and_expiry(fake: FakeProvider) -> None:
    """Rotation stops the old secret at once; a patch takes effect on the next request;
    listing pages never show a secret; an expired key is 401."""
    async with serving(fake, "") as (admin, url):
        key = await create(admin, label="r")
        rotated = (await admin.post(f"/v1/admin/keys/{key['id']}/rotate")).json()
        with pytest.raises(openai.AuthenticationError):
            await ask(url, key["key"])
        assert await ask(url, rotated["key"]) == "ok"
        patched = await admin.patch(f"/v1/admin/keys/{key['id']}", json={"models": ["other"]})
        assert patched.json()["models"] == ["other"]
        with pytest.raises(openai.NotFoundError):
            await ask(url, rotated["key"])
        await create(admin, label="second")
        expired = await create(admin, label="old", expires_at="2000-01-01T00:00:00Z")
        with pytest.raises(openai.AuthenticationError):
            await ask(url, expired["key"])
        first = (await admin.get("/v1/admin/keys?limit=2")).json()
        assert first["has_more"]
        assert len(first["data"]) == 2
        rest = (await admin.get(f"/v1/admin/keys?limit=2&after={first['last_id']}")).json()
        assert not rest["has_more"]
        assert len(rest["data"]) == 1
        for shown in first["data"] + rest["data"]:
            assert "key" not in shown
            assert "digest" not in shown


async def test_only_admin_keys_reach_the_admin_api(fake: FakeProvider) -> None:
    """A virtual key (never an admin) is refused 403 by the admin API; no key is 401."""
    async with serving(fake, "") as (admin, url):
        key = await create(admin)
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/v1/admin/keys")).status_code == 401
            headers = {"authorization": f"Bearer {key['key']}"}
            assert (await client.get("/v1/admin/spend", headers=headers)).status_code == 403
            assert (await client.post("/v1/admin/keys", headers=headers)).status_code == 403


async def test_secrets_are_never_logged(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither a created nor a rotated secret appears in any log record."""
    caplog.set_level(logging.DEBUG)
    async with serving(fake, "") as (admin, url):
        key = await create(admin, label="quiet")
        await ask(url, key["key"])
        rotated = (await admin.post(f"/v1/admin/keys/{key['id']}/rotate")).json()
        await ask(url, rotated["key"])
        await admin.delete(f"/v1/admin/keys/{key['id']}")
    assert key["id"] in caplog.text  # the id is logged, so the log was captured
    assert key["key"] not in caplog.text
    assert rotated["key"] not in caplog.text
    assert key["key"][6:] not in caplog.text


async def test_storage_down_requests_succeed_and_loss_is_counted(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """With the database unreachable, requests still succeed, key changes are refused 503,
    records beyond the buffer are dropped and counted; once the disk is back, the buffered
    records are written."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database's directory should be")
    storage = f'path = "{blocker / "gw.sqlite"}"\nbuffer_capacity = 2\nflush_interval = 0.05'
    async with serving(fake, storage) as (admin, url):
        for _ in range(3):
            assert await ask(url, ADMIN) == "ok"
        refused = await admin.post("/v1/admin/keys", json={})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == ("storage_unavailable")
        metrics = await metrics_showing(admin, "trio_orchestrator_storage_up 0.0")
        assert "trio_orchestrator_storage_dropped_total 1.0" in metrics
        blocker.unlink()
        blocker.mkdir()  # the disk is back
        data = (await admin.get("/v1/admin/spend?group_by=model")).json()["data"]
        assert data[0]["requests"] == 2  # the two buffered; the third was dropped
        metrics = (await admin.get("/metrics")).text
        assert "trio_orchestrator_storage_written_total 2.0" in metrics


async def test_a_lost_postgres_server_fails_no_request_and_catches_up(
    fake: FakeProvider, postgres_cluster: PostgresServer, postgres_server: str
) -> None:
    """With the PostgreSQL server stopped mid-run, a virtual key's requests still succeed,
    key changes are refused 503 and the store is reported down; once the server is back the
    spend buffered meanwhile is written, none lost."""
    database = f'backend = "postgres"\ndsn = "{postgres_server}"\n'
    async with serving(fake, "flush_interval = 0.05\n", database) as (admin, url):
        key = await create(admin, label="through-the-outage")
        assert await ask(url, key["key"]) == "ok"
        assert (await spend_of(admin, key["id"]))["requests"] == 1
        postgres_cluster.stop()
        try:
            for _ in range(3):
                assert await ask(url, key["key"]) == "ok"
            refused = await admin.post("/v1/admin/keys", json={})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "storage_unavailable"
            assert postgres_server not in refused.text
            metrics = await metrics_showing(admin, "trio_orchestrator_storage_up 0.0")
            assert "trio_orchestrator_storage_dropped_total 0.0" in metrics
        finally:
            postgres_cluster.start()
        row = await spend_of(admin, key["id"])
        assert row["requests"] == 4
        assert math.isclose(row["cost_usd"], 4 * COST)


async def test_without_storage_the_admin_api_says_how_to_turn_it_on(fake: FakeProvider) -> None:
    """With storage off (the default) requests are served and the key and spend routes
    answer 404 storage_disabled, saying what to configure."""
    config = settings(fake.openai_base_url, "")
    async with running_service(config) as url:
        assert await ask(url, ADMIN) == "ok"
        headers = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as admin:
            for path in ("/v1/admin/keys", "/v1/admin/spend"):
                answer = await admin.get(path)
                assert answer.status_code == 404
                assert answer.json()["error"]["code"] == "storage_disabled"
                assert "[storage] path" in answer.json()["error"]["message"]


async def test_a_streamed_answer_is_charged_too(fake: FakeProvider) -> None:
    """A streamed chat completion is priced and charged to its key like a whole one."""
    async with serving(fake, "") as (admin, url):
        key = await create(admin)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        headers = {"authorization": f"Bearer {key['key']}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            answer = await client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200
        assert answer.text.rstrip().endswith("data: [DONE]")
        row = await spend_of(admin, key["id"])
        assert row["requests"] == 1
        assert math.isclose(row["cost_usd"], COST)
