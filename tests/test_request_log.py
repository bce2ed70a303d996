"""The request log end to end through the served path (issue 19, item 3): requests made with
the official ``openai`` SDK and plain HTTP through the running service, read back with
``GET /v1/admin/requests`` over real HTTP, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import datetime
import json
import math
import re
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
from test_admin_keys_e2e import ADMIN, ANSWER, COST, MODEL, create, sdk, settings

from trio_orchestrator.config import parse_config
from trio_orchestrator.testing import FakeBehaviour, FakeProvider, open_fake_provider

__all__ = ["postgres_cluster", "postgres_server"]

FIELDS = {
    "id",
    "created",
    "key_id",
    "model",
    "served_model",
    "provider",
    "outcome",
    "status",
    "error_type",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "fallbacks",
    "cache_hit",
    "coalesced",
    "stream",
}
FAST = "flush_interval = 0.05\n"
RETRY = "[resilience.retry]\nenabled = true\ninitial_backoff = 0.001\n"


@asynccontextmanager
async def serving(
    fake: FakeProvider, storage: str, database: str = 'backend = "sqlite"\n', extra: str = ""
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The service in front of ``fake`` with ``[storage]`` lines ``database + storage`` and
    further sections ``extra``; an admin HTTP client on it, and its URL."""
    config = settings(fake.openai_base_url, database + storage + extra)
    async with running_service(config) as url:
        headers = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as admin:
            yield admin, url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``[storage]`` lines naming a new SQLite file or PostgreSQL database."""
    if request.param == "sqlite":
        return f'backend = "sqlite"\npath = "{tmp_path / "gw.sqlite"}"\n'
    dsn = request.getfixturevalue("postgres_server")
    return f'backend = "postgres"\ndsn = "{dsn}"\n'


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with open_fake_provider(FakeBehaviour(body=ANSWER)) as fake:
        yield fake


async def chat(url: str, key: str, content: str = "hi", **extra: Any) -> str:
    """One chat completion through the SDK; the request id the client saw."""
    async with sdk(url, key) as client:
        answer = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], **extra
        )
    request_id: str | None = answer._request_id
    assert request_id is not None
    return request_id


async def streamed_usage(url: str, key: str) -> dict[str, Any]:
    """Stream a chat completion (``include_usage``) to its end; the usage it reported."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(base_url=url, headers=headers) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    usage: dict[str, Any] = json.loads(lines[-1].removeprefix("data: "))["usage"]
    return usage


async def leave_after_first_chunk(url: str, key: str, model: str) -> str:
    """Ask for a stream over a plain socket and close it once the first chunk came; the
    request id the service gave it."""
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    received = b""
    async with await trio.open_tcp_stream(host, int(port)) as sock:
        await sock.send_all(head.encode() + body.encode())
        while b"data:" not in received:
            chunk = await sock.receive_some()
            assert chunk, received
            received += chunk
    found = re.search(rb"(?im)^x-request-id: *(\S+)", received)
    assert found is not None, received
    return found.group(1).decode()


async def logged(admin: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    """``GET /v1/admin/requests`` with ``params``; its JSON (200 checked)."""
    answer = await admin.get("/v1/admin/requests", params=params)
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


async def test_every_outcome_is_logged_with_its_fields(fake: FakeProvider, database: str) -> None:
    """A plain, a streamed, a retried, a failing and a budget-refused request each leave one
    record under the id the client saw, with the outcome, status, tokens, cost (as spend
    prices), attempts and timings, newest first; on SQLite and PostgreSQL."""
    async with serving(fake, FAST, database, RETRY) as (admin, url):
        key = await create(admin, label="logged", budget=2.5 * COST)
        plain = await chat(url, key["key"])
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        headers = {"authorization": f"Bearer {key['key']}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            streamed = await client.post("/v1/chat/completions", json=body)
        assert streamed.status_code == 200
        fake.script(*[FakeBehaviour(status=500)] * 3)  # every attempt fails
        with pytest.raises(openai.InternalServerError) as failed:
            await chat(url, key["key"])
        fake.script(FakeBehaviour(status=500))  # one failure, then the retry answers
        retried = await chat(url, key["key"])
        with pytest.raises(openai.RateLimitError) as refused:  # 3 x COST spent
            await chat(url, key["key"])
        page = await logged(admin, key=key["id"])
    records = page["data"]
    assert page["object"] == "list"
    assert page["next_cursor"] is None
    assert [r["id"] for r in records] == [
        refused.value.request_id,
        retried,
        failed.value.request_id,
        streamed.headers["x-request-id"],
        plain,
    ]
    assert all(set(r) == FIELDS for r in records)  # no content: logging it is off
    outcomes = ["rejected", "completed", "failed", "completed", "completed"]
    assert [r["outcome"] for r in records] == outcomes
    assert [r["status"] for r in records] == [429, 200, 502, 200, 200]
    errors = ["insufficient_quota", None, "upstream_error", None, None]
    assert [r["error_type"] for r in records] == errors
    assert [r["attempts"] for r in records] == [0, 2, 3, 1, 1]
    assert [r["stream"] for r in records] == [False, False, False, True, False]
    for record in (records[1], *records[3:]):
        assert math.isclose(record["cost"], COST)
        assert (record["prompt_tokens"], record["cached_tokens"]) == (1000, 200)
        assert (record["completion_tokens"], record["reasoning_tokens"]) == (500, 100)
        assert record["served_model"] == MODEL
        if record["stream"]:
            assert record["ttft_ms"] is not None
            assert record["ttft_ms"] <= record["latency_ms"]
        else:  # answered whole, unstreamed by the provider: no time to a first token
            assert record["ttft_ms"] is None
    for record in records:
        assert record["key_id"] == key["id"]
        assert record["model"] == MODEL
        assert record["provider"] == "up"
        assert not record["cache_hit"]
        assert not record["coalesced"]
    assert records[0]["cost"] == records[2]["cost"] == 0
    assert records[0]["created"] >= records[-1]["created"]


async def test_filters_pages_and_one_record(fake: FakeProvider) -> None:
    """Filters narrow the log, pages of ``limit`` follow ``next_cursor`` without repeats
    newest first, ``since``/``until`` take Unix or ISO times, one record is read by id
    (404 otherwise), and a bad filter is a 400 in OpenAI's error shape."""
    async with serving(fake, FAST) as (admin, url):
        ids = [await chat(url, ADMIN, f"question {i}") for i in range(5)]
        fake.script(FakeBehaviour(status=500))
        with pytest.raises(openai.InternalServerError):
            await chat(url, ADMIN)
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2, "outcome": "completed"}
            page = await logged(admin, **params, **({"cursor": cursor} if cursor else {}))
            seen += [r["id"] for r in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids[::-1]
        assert [r["status"] for r in (await logged(admin, status=502))["data"]] == [502]
        assert len((await logged(admin, model=MODEL, provider="up"))["data"]) == 6
        assert (await logged(admin, model="other"))["data"] == []
        middle = (await logged(admin, request_id=ids[2]))["data"][0]["created"]
        # Cut to the millisecond, down (microseconds would round up, past ``middle``).
        when = datetime.datetime.fromtimestamp(middle, datetime.UTC)
        iso = when.isoformat(timespec="milliseconds")
        older = (await logged(admin, until=iso, outcome="completed"))["data"]
        assert [r["id"] for r in older] == ids[:2][::-1]
        newer = (await logged(admin, since=middle, outcome="completed"))["data"]
        assert [r["id"] for r in newer] == ids[2:][::-1]
        one = await admin.get(f"/v1/admin/requests/{ids[3]}")
        assert one.status_code == 200
        assert one.json()["id"] == ids[3]
        missing = await admin.get("/v1/admin/requests/req_nothing")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "request_not_found"
        for bad in (
            {"limit": 1001},
            {"limit": "x"},
            {"outcome": "done"},
            {"since": "yesterday"},
            {"status": "ok"},
            {"cursor": "not-a-cursor"},
            {"colour": "red"},
        ):
            answer = await admin.get("/v1/admin/requests", params=bad)
            assert answer.status_code == 400, bad
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert error["param"] == next(iter(bad))


async def test_only_admin_keys_read_the_log(fake: FakeProvider) -> None:
    """A virtual key is refused 403 by the request log; no key is 401."""
    async with serving(fake, FAST) as (admin, url):
        key = await create(admin)
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/v1/admin/requests")).status_code == 401
            headers = {"authorization": f"Bearer {key['key']}"}
            answer = await client.get("/v1/admin/requests", headers=headers)
            assert answer.status_code == 403


async def test_content_is_kept_only_when_asked_and_redacted(fake: FakeProvider) -> None:
    """Prompts and answers are absent by default; a key with ``log_content`` in its
    metadata has them kept, with API-key-like strings and the configured patterns
    redacted, and cut to ``log_content_max_chars``."""
    storage = FAST + 'redact = ["(?i)card \\\\d{4}"]\nlog_content_max_chars = 80\n'
    async with serving(fake, storage) as (admin, url):
        quiet = await create(admin, label="quiet")
        loud = await create(admin, label="loud", metadata={"log_content": True})
        secret = "sk-proj-" + "a1B2" * 10
        prompt = f"my key is {secret} and Card 1234; " + "x" * 200
        unlogged = await chat(url, quiet["key"], prompt)
        kept = await chat(url, loud["key"], prompt)
        records = {r["id"]: r for r in (await logged(admin))["data"]}
    assert "request" not in records[unlogged]
    assert "response" not in records[unlogged]
    record = records[kept]
    assert secret not in record["request"]
    assert "[REDACTED]" in record["request"]
    assert "Card 1234" not in record["request"]
    assert record["request"].endswith("…[truncated]")
    assert len(record["request"]) == 80 + len("…[truncated]")
    assert record["response"] == "ok"


async def test_content_everywhere_when_on_globally(fake: FakeProvider) -> None:
    """``[storage] log_content = true`` keeps every request's prompt and answer."""
    async with serving(fake, FAST + "log_content = true\n") as (admin, url):
        request_id = await chat(url, ADMIN, "what is 2 + 2?")
        record = (await admin.get(f"/v1/admin/requests/{request_id}")).json()
    assert record["request"] == '[{"role": "user", "content": "what is 2 + 2?"}]'
    assert record["response"] == "ok"


async def test_a_cached_answer_is_logged_as_a_hit(fake: FakeProvider) -> None:
    """With the cache on, the repeated request is logged as a cache hit with no attempt."""
    extra = "[resilience.cache]\nenabled = true\n"
    async with serving(fake, FAST, extra=extra) as (admin, url):
        first = await chat(url, ADMIN, "same", temperature=0)
        second = await chat(url, ADMIN, "same", temperature=0)
        records = {r["id"]: r for r in (await logged(admin))["data"]}
    assert fake.statistics().requests == 1
    assert (records[first]["cache_hit"], records[first]["attempts"]) == (False, 1)
    assert (records[second]["cache_hit"], records[second]["attempts"]) == (True, 0)


async def test_storage_down_requests_succeed_and_the_log_catches_up(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """With the database unreachable requests still succeed, records beyond the buffer are
    dropped and counted, and once the disk is back the buffered ones are written."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database's directory should be")
    storage = f'path = "{blocker / "gw.sqlite"}"\nbuffer_capacity = 2\n{FAST}'
    async with serving(fake, storage, "") as (admin, url):
        ids = [await chat(url, ADMIN) for _ in range(3)]
        answer = await admin.get("/v1/admin/requests")
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "storage_unavailable"
        metrics = (await admin.get("/metrics")).text
        assert "trio_orchestrator_request_log_dropped_total 1.0" in metrics
        assert "trio_orchestrator_request_log_buffered 2.0" in metrics
        assert "trio_orchestrator_request_log_up 0.0" in metrics
        blocker.unlink()
        blocker.mkdir()  # the disk is back
        records = (await logged(admin))["data"]
        assert [r["id"] for r in records] == ids[:2][::-1]  # the third was dropped
        metrics = (await admin.get("/metrics")).text
        assert "trio_orchestrator_request_log_written_total 2.0" in metrics


async def test_a_lost_postgres_server_fails_no_request_and_the_log_catches_up(
    fake: FakeProvider, postgres_cluster: PostgresServer, postgres_server: str
) -> None:
    """With the PostgreSQL server stopped, requests succeed and their records wait in the
    buffer; once it is back every one is written."""
    database = f'backend = "postgres"\ndsn = "{postgres_server}"\n'
    async with serving(fake, FAST, database) as (admin, url):
        first = await chat(url, ADMIN)
        assert len((await logged(admin))["data"]) == 1
        postgres_cluster.stop()
        try:
            during = [await chat(url, ADMIN) for _ in range(3)]
            assert (await admin.get("/v1/admin/requests")).status_code == 503
        finally:
            postgres_cluster.start()
        records = (await logged(admin))["data"]
    assert [r["id"] for r in records] == [*during[::-1], first]


async def test_retention_keeps_the_newest_rows(fake: FakeProvider, database: str) -> None:
    """With ``log_max_rows``, the writer task prunes the log to the newest rows, and the
    pruned count is exported."""
    storage = FAST + "log_max_rows = 2\nprune_interval = 0.05\n"
    async with serving(fake, storage, database) as (admin, url):
        ids = [await chat(url, ADMIN) for _ in range(4)]
        # The writer prunes in the service's own time, seen only over HTTP: poll for it
        # (bounded; no duration is asserted).
        with trio.fail_after(20):
            while len((await logged(admin))["data"]) > 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
        records = (await logged(admin))["data"]
        metrics = (await admin.get("/metrics")).text
    assert [r["id"] for r in records] == ids[2:][::-1]
    assert "trio_orchestrator_request_log_pruned_total 2.0" in metrics


async def test_log_requests_off_answers_404(fake: FakeProvider) -> None:
    """With ``log_requests = false`` nothing is logged and the route says how to turn it on."""
    async with serving(fake, "log_requests = false\n") as (admin, url):
        await chat(url, ADMIN)
        answer = await admin.get("/v1/admin/requests")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "request_log_disabled"


async def test_a_fallback_is_logged_with_the_provider_that_answered(fake: FakeProvider) -> None:
    """Under ``[routing]``, a request whose first deployment fails and whose second answers
    is logged with one fallback, two attempts and the second provider."""
    upstream = fake.openai_base_url
    providers = "".join(
        f'[[providers.providers]]\nkind = "openai"\nname = "{name}"\nbase_url = "{upstream}"\n'
        f'api_keys = ["k"]\nstream = false\n'
        for name in ("first", "second")
    )
    deployments = "".join(
        f'[[routing.deployments]]\nname = "{name}"\nmodel = "{MODEL}"\nprovider = "{name}"\n'
        f"input_price = {price}\noutput_price = {price}\n"
        for name, price in (("first", 1.0), ("second", 2.0))
    )
    config = parse_config(
        f'[service]\nport = 0\n[[service.api_keys]]\nkey = "{ADMIN}"\nadmin = true\n'
        f'{providers}{deployments}[storage]\nbackend = "sqlite"\n{FAST}'
    )
    async with running_service(config) as url:
        fake.script(FakeBehaviour(status=500))
        request_id = await chat(url, ADMIN)
        headers = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as admin:
            record = (await admin.get(f"/v1/admin/requests/{request_id}")).json()
    assert fake.statistics().requests == 2
    assert (record["outcome"], record["status"]) == ("completed", 200)
    assert (record["attempts"], record["fallbacks"]) == (2, 1)
    assert record["provider"] == "second"


async def test_a_coalesced_request_is_logged_as_such(fake: FakeProvider) -> None:
    """With coalescing on, of two identical requests in flight at once one calls the
    upstream and the other is logged as coalesced, with no attempt of its own."""
    extra = "[resilience.coalescing]\nenabled = true\n"
    # The upstream answers slowly, so the second request arrives while the first waits.
    fake.script(FakeBehaviour(first_token_delay=2.0))
    ids: list[str] = []
    async with serving(fake, FAST, extra=extra) as (admin, url):

        async def one() -> None:
            ids.append(await chat(url, ADMIN, "same", temperature=0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
        records = {r["id"]: r for r in (await logged(admin))["data"]}
    assert fake.statistics().requests == 1
    flags = sorted((records[i]["coalesced"], records[i]["attempts"]) for i in ids)
    assert flags == [(False, 1), (True, 0)]


async def test_a_streamed_request_and_a_stream_left_midway_are_logged_and_priced_once(
    fake: FakeProvider,
) -> None:
    """Through an upstream that streams: a streamed request read to its end is logged
    completed with its TTFT, the tokens the SDK was told and the cost spend charged (one
    price for both); a stream the client leaves after its first chunk is logged cancelled,
    with a TTFT, and charges nothing."""
    config = parse_config(
        f'[service]\nport = 0\n[[service.api_keys]]\nkey = "{ADMIN}"\nadmin = true\n'
        f'[[providers.providers]]\nkind = "openai"\nname = "up"\n'
        f'base_url = "{fake.openai_base_url}"\napi_keys = ["k"]\n'
        f'[storage]\nbackend = "sqlite"\n{FAST}'
    )
    fake.set_model(MODEL, FakeBehaviour(text="one two three four"))
    fake.set_model("stalls", FakeBehaviour(text="one two three four", stall_after=1))
    async with running_service(config) as url:
        headers = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as admin:
            key = await create(admin, label="streams")
            usage = await streamed_usage(url, key["key"])
            left_id = await leave_after_first_chunk(url, key["key"], "stalls")
            with trio.fail_after(10):
                # The cancelled request ends when the service notices the socket close.
                while len((page := await logged(admin, key=key["id"]))["data"]) < 2:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            spend = (await admin.get("/v1/admin/spend", params={"group_by": "key"})).json()
    cancelled, completed = page["data"]
    assert cancelled["id"] == left_id
    assert (cancelled["outcome"], cancelled["stream"]) == ("cancelled", True)
    assert cancelled["ttft_ms"] is not None
    assert (cancelled["completion_tokens"], cancelled["cost"]) == (0, 0)
    assert (completed["outcome"], completed["status"], completed["stream"]) == (
        "completed",
        200,
        True,
    )
    assert completed["ttft_ms"] is not None
    assert completed["ttft_ms"] <= completed["latency_ms"]
    assert (completed["prompt_tokens"], completed["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert completed["cost"] > 0
    (row,) = [r for r in spend["data"] if r["key"] == key["id"]]
    assert row["requests"] == 1  # the stream left midway charged nothing
    assert row["cost_usd"] == completed["cost"]
