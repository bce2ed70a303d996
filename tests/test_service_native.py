"""The native endpoints, dead letters and replay, embeddings, and the operational endpoints."""

from __future__ import annotations

import json
from typing import Any

import attrs
import httpx
import pytest
import trio
from service_helpers import EmbeddingWorker, make_config, running_service, statistics

from trio_orchestrator.config import Config
from trio_orchestrator.gateway import open_gateway
from trio_orchestrator.pipeline import open_pipeline
from trio_orchestrator.resilience import PriorityConfig
from trio_orchestrator.service import ApiError, ServiceState
from trio_orchestrator.service.openapi import openapi_document
from trio_orchestrator.workers import EchoWorker, ProviderConfig, ProvidersConfig

SLOW = EchoWorker(first_token_delay=0.3)


def sse_payloads(text: str) -> list[Any]:
    """The JSON payloads of a server-sent event stream."""
    return [json.loads(frame.removeprefix("data: ")) for frame in text.split("\n\n") if frame]


async def test_prompt_returns_the_completion_and_its_outcome() -> None:
    """POST /v1/prompt answers with the request id, outcome completed, and the completion."""
    body = {"input": "hello world", "request_id": "req-1", "session": "s1"}
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/prompt", json=body)
    data = response.json()
    assert (data["request_id"], data["outcome"]) == ("req-1", "completed")
    assert data["completion"]["text"] == "hello world"


@pytest.mark.parametrize("request_id", ["섽Ü", "a b", "x\r\ninjected: 1", "é", "a" * 129])
async def test_a_request_id_unfit_for_a_header_is_a_400(request_id: str) -> None:
    """A client-chosen request id travels in x-request-id, so one that a header cannot carry
    (non-ASCII, spaces, line breaks, too long) is refused with 400, streamed or not."""
    body = {"input": "hello", "request_id": request_id}
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        for path in ("/v1/prompt", "/v1/prompt/stream"):
            response = await client.post(path, json=body)
            assert response.status_code == 400, path
            assert response.json()["error"]["param"] == "request_id"


async def test_a_prompt_without_a_model_when_none_is_listed_is_a_400() -> None:
    """With providers that list no models there is no default model: omitting it is a 400
    naming `model`, not a 500."""
    config = make_config()
    config = Config(
        pipeline=config.pipeline,
        service=config.service,
        providers=ProvidersConfig([ProviderConfig("echo", "e")]),
    )
    async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/prompt", json={"input": "hello"})
        named = await client.post("/v1/prompt", json={"input": "hello", "model": "echo"})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "model")
    assert named.status_code == 200


async def test_prompt_past_its_timeout_is_a_408_with_outcome_expired() -> None:
    """A prompt whose timeout passes gets 408 and outcome expired."""
    async with running_service(worker=SLOW) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/prompt", json={"input": "hi", "timeout": 0.01})
    assert (response.status_code, response.json()["outcome"]) == (408, "expired")


async def test_prompt_stream_sends_each_event() -> None:
    """POST /v1/prompt/stream sends start, the deltas, usage and done, in order."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/prompt/stream", json={"input": "a b"})
    kinds = [event["type"] for event in sse_payloads(response.text)]
    assert kinds == ["start", "text_delta", "text_delta", "usage", "done"]


async def test_invalid_priority_is_named() -> None:
    """An unknown priority gets 400 naming `priority`."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/prompt", json={"input": "hi", "priority": "urgent"})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "priority")


async def _flood(client: httpx.AsyncClient, n: int) -> list[httpx.Response]:
    responses: list[httpx.Response] = []

    async def one(i: int) -> None:
        responses.append(await client.post("/v1/prompt", json={"input": f"p{i}"}))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return responses


TINY = {
    "inference_concurrency": 1,
    "inference_capacity": 1,
    "assemble_capacity": 1,
    "priority": PriorityConfig(max_waiting=1),
}


async def test_a_full_pipeline_sheds_with_503_and_retry_after() -> None:
    """Requests beyond a full stage get 503, outcome shed, and Retry-After."""
    async with (
        running_service(make_config(TINY), SLOW) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        responses = await _flood(client, 6)
    shed = [r for r in responses if r.status_code == 503]
    assert shed
    assert all(r.json()["outcome"] == "shed" and "retry-after" in r.headers for r in shed)


async def test_shed_requests_are_listed_as_dead_letters() -> None:
    """Each shed request appears in /v1/dead-letters with its stage and its prompt."""
    async with (
        running_service(make_config(TINY), SLOW) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        responses = await _flood(client, 6)
        letters = (await client.get("/v1/dead-letters")).json()["data"]
    shed_ids = {r.json()["request_id"] for r in responses if r.status_code == 503}
    assert {letter["id"] for letter in letters} == shed_ids
    assert all(letter["request"]["input"].startswith("p") for letter in letters)


async def test_replaying_a_dead_letter_completes_it() -> None:
    """POST /v1/dead-letters/{id}/replay runs the shed request again and removes the letter."""
    async with (
        running_service(make_config(TINY), SLOW) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        await _flood(client, 6)
        letter = (await client.get("/v1/dead-letters")).json()["data"][0]
        replay = await client.post(f"/v1/dead-letters/{letter['id']}/replay")
        remaining = (await client.get("/v1/dead-letters")).json()["data"]
    assert (replay.status_code, replay.json()["outcome"]) == (200, "completed")
    assert replay.json()["completion"]["text"] == letter["request"]["input"]
    assert letter["id"] not in {r["id"] for r in remaining}


async def test_replaying_an_unknown_letter_is_a_404() -> None:
    """Replaying an id that is not in the queue gets 404."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/dead-letters/nope/replay")
    assert (response.status_code, response.json()["error"]["code"]) == (
        404,
        "dead_letter_not_found",
    )


@pytest.mark.parametrize("limit", ["¹", "٣", "-1", "0", "abc", "10001", "9" * 5000, " 5"])
async def test_a_dead_letter_limit_that_is_not_a_small_ascii_integer_is_a_400(limit: str) -> None:
    """GET /v1/dead-letters?limit=… with a superscript, a non-ASCII digit, a sign, text, a
    value out of [1, 10000] or thousands of digits is a 400 naming `limit`, never a 500."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/dead-letters", params={"limit": limit})
        fine = await client.get("/v1/dead-letters", params={"limit": "10000"})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "limit")
    assert fine.status_code == 200


@pytest.mark.parametrize("seconds", [5e-324, 1e-9, 0, -1, 86_401])
async def test_a_timeout_no_request_could_use_is_a_400(seconds: float) -> None:
    """A prompt's `timeout` below a millisecond (5e-324 is positive, and no answer) or above a
    day is refused with a 400 naming it, streamed or not, as /openapi.json says."""
    body = {"input": "hi", "timeout": seconds}
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        for path in ("/v1/prompt", "/v1/prompt/stream"):
            response = await client.post(path, json=body)
            assert (response.status_code, response.json()["error"]["param"]) == (400, "timeout")
    schema = openapi_document()["paths"]["/v1/prompt"]["post"]["requestBody"]
    timeout_schema = schema["content"]["application/json"]["schema"]["properties"]["timeout"]
    assert (timeout_schema["minimum"], timeout_schema["maximum"]) == (0.001, 86_400)


async def test_stats_count_the_requests_served() -> None:
    """GET /v1/stats reports the pipeline's counters."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        for _ in range(3):
            await client.post("/v1/prompt", json={"input": "hi"})
        stats = await statistics(client)
    assert (stats["submitted"], stats["completed"], stats["in_flight"]) == (3, 3, 0)


async def test_the_echo_worker_embeds_with_deterministic_fake_vectors() -> None:
    """The offline service embeds: the same input gets the same unit vector, `dimensions` long."""
    body = {"model": "echo", "input": ["a b", "c", "a b"], "dimensions": 5}
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/embeddings", json=body)
        default = await client.post("/v1/embeddings", json={"model": "echo", "input": "x"})
    answer = response.json()
    vectors = [item["embedding"] for item in answer["data"]]
    assert vectors[0] == vectors[2] != vectors[1]
    assert [len(v) for v in vectors] == [5, 5, 5]
    assert abs(sum(x * x for x in vectors[1]) - 1.0) < 1e-9
    assert answer["usage"] == {"prompt_tokens": 5, "total_tokens": 5}  # words
    assert len(default.json()["data"][0]["embedding"]) == 16


async def test_embeddings_come_from_a_worker_that_embeds() -> None:
    """With a worker that embeds, /v1/embeddings returns its vectors, one per input."""
    body = {"model": "echo", "input": ["a b", "c"]}
    async with (
        running_service(worker=EmbeddingWorker()) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        response = await client.post("/v1/embeddings", json=body)
    vectors = [item["embedding"] for item in response.json()["data"]]
    assert vectors == [[3.0, 2.0], [1.0, 1.0]]


async def test_metrics_are_prometheus_text() -> None:
    """GET /metrics answers the Prometheus text format."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in response.text


async def test_openapi_document_lists_every_endpoint() -> None:
    """/openapi.json describes every HTTP route the application has."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        document = (await client.get("/openapi.json")).json()
    assert document == json.loads(json.dumps(openapi_document(("echo",))))
    expected = {
        "/v1/chat/completions", "/v1/models", "/v1/models/{model}", "/v1/embeddings",
        "/v1/completions", "/v1/responses",
        "/v1/prompt", "/v1/prompt/stream", "/v1/stats", "/v1/dead-letters",
        "/v1/dead-letters/{id}/replay", "/metrics", "/healthz", "/readyz", "/openapi.json",
        "/v1/messages", "/v1/messages/count_tokens",
        "/v1/admin/keys", "/v1/admin/keys/{id}", "/v1/admin/keys/{id}/rotate", "/v1/admin/spend",
    }  # fmt: skip
    assert set(document["paths"]) == expected


async def test_readyz_is_ready_while_serving() -> None:
    """/readyz is 200 while the pipeline is open and not draining."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/readyz")
    assert (response.status_code, response.json()["status"]) == (200, "ready")


@attrs.define
class Health:
    """A readiness part that says what it is told."""

    reason: str | None = None

    def unready(self) -> str | None:
        """The reason set, or None."""
        return self.reason


async def test_readiness_follows_the_gateways_parts() -> None:
    """The service is not ready, with the reason, while its only provider's readiness part
    says it cannot take a request; ready again once it can."""
    health = Health("every API key of echo is resting or disabled")
    async with open_gateway(worker=EchoWorker()) as gateway:
        gateway.add(health, provider="echo")
        state = ServiceState(Config(), gateway=gateway, pipeline=gateway.pipeline)
        assert state.unready() == ["every API key of echo is resting or disabled"]
        health.reason = None
        assert state.ready()


async def test_a_draining_service_refuses_new_requests_and_is_not_ready() -> None:
    """Once draining, new requests get 503 `draining` with Retry-After, and readiness fails."""
    async with open_pipeline(EchoWorker()) as pipeline:
        state = ServiceState(Config(), pipeline=pipeline, draining=True)
        with pytest.raises(ApiError) as info:
            state.open_pipeline()
        assert (info.value.status, info.value.code, info.value.retry_after) == (503, "draining", 1)
        assert not state.ready()
