"""API keys, admin endpoints, per-key labels and priorities, CORS."""

from __future__ import annotations

import hashlib

import httpx
from service_helpers import RecordingWorker, make_config, running_service

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig
from trio_orchestrator.types import Priority

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "user": "alice"}
APP_KEY = "app-key-123"
ADMIN_KEY = "admin-key-456"
KEYS = (
    ApiKeyConfig("app", sha256=hashlib.sha256(APP_KEY.encode()).hexdigest(), priority="normal"),
    ApiKeyConfig("ops", key=Secret(ADMIN_KEY), admin=True),
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_requests_without_a_key_are_refused_with_401() -> None:
    """With keys configured, a request without Authorization gets 401 and WWW-Authenticate."""
    async with (
        running_service(make_config(api_keys=KEYS)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "invalid_api_key"


async def test_health_and_readiness_need_no_key() -> None:
    """/healthz and /readyz answer without a key, even when keys are configured."""
    async with (
        running_service(make_config(api_keys=KEYS)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        statuses = [(await client.get(path)).status_code for path in ("/healthz", "/readyz")]
    assert statuses == [200, 200]


async def test_a_key_given_by_its_digest_is_accepted() -> None:
    """A key configured only as its SHA-256 digest authenticates the key itself."""
    async with (
        running_service(make_config(api_keys=KEYS)) as url,
        httpx.AsyncClient(base_url=url, headers=bearer(APP_KEY)) as client,
    ):
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200


async def test_admin_endpoints_refuse_a_non_admin_key_with_403() -> None:
    """Dead letters need an admin key: an ordinary key gets 403."""
    async with (
        running_service(make_config(api_keys=KEYS)) as url,
        httpx.AsyncClient(base_url=url, headers=bearer(APP_KEY)) as client,
    ):
        response = await client.get("/v1/dead-letters")
    assert (response.status_code, response.json()["error"]["code"]) == (403, "admin_required")


async def test_admin_endpoints_accept_an_admin_key() -> None:
    """An admin key may list dead letters."""
    async with (
        running_service(make_config(api_keys=KEYS)) as url,
        httpx.AsyncClient(base_url=url, headers=bearer(ADMIN_KEY)) as client,
    ):
        response = await client.get("/v1/dead-letters")
    assert (response.status_code, response.json()["data"]) == (200, [])


async def test_requests_carry_the_key_fingerprint_and_user() -> None:
    """The worker sees meta api_key_id (the key's fingerprint) and user (OpenAI `user`)."""
    worker = RecordingWorker()
    async with (
        running_service(make_config(api_keys=KEYS), worker) as url,
        httpx.AsyncClient(base_url=url, headers=bearer(APP_KEY)) as client,
    ):
        await client.post("/v1/chat/completions", json=CHAT)
    meta = dict(worker.seen[0].meta)
    assert meta == {"api_key_id": Secret(APP_KEY).fingerprint(), "user": "alice"}


async def test_a_key_cannot_raise_its_priority_above_its_cap() -> None:
    """A key capped at normal asking for critical priority gets normal."""
    worker = RecordingWorker()
    body = {"model": "echo", "input": "hi", "priority": "critical"}
    async with (
        running_service(make_config(api_keys=KEYS), worker) as url,
        httpx.AsyncClient(base_url=url, headers=bearer(APP_KEY)) as client,
    ):
        await client.post("/v1/prompt", json=body)
    assert worker.seen[0].priority is Priority.NORMAL


async def test_without_keys_priority_is_as_asked() -> None:
    """With no keys configured, a request's own priority stands."""
    worker = RecordingWorker()
    async with running_service(worker=worker) as url, httpx.AsyncClient(base_url=url) as client:
        await client.post(
            "/v1/prompt", json={"model": "echo", "input": "hi", "priority": "critical"}
        )
    assert worker.seen[0].priority is Priority.CRITICAL


async def test_cors_is_off_by_default() -> None:
    """Without cors_origins, a cross-origin request gets no Access-Control headers."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/models", headers={"Origin": "https://example.com"})
    assert "access-control-allow-origin" not in response.headers


async def test_a_cors_preflight_admits_the_anthropic_sdks_headers() -> None:
    """A browser's preflight for /v1/messages with the Anthropic SDK's headers (x-api-key,
    anthropic-version) is allowed, so a browser client can call the Anthropic ingress."""
    config = make_config(cors_origins=("https://example.com",))
    headers = {
        "Origin": "https://example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, anthropic-version, content-type",
    }
    async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.options("/v1/messages", headers=headers)
    assert response.status_code == 200
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"x-api-key", "anthropic-version"} <= {h.strip() for h in allowed.split(",")}


async def test_cors_allows_configured_origins() -> None:
    """A configured origin gets Access-Control-Allow-Origin."""
    config = make_config(cors_origins=("https://example.com",))
    async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/models", headers={"Origin": "https://example.com"})
    assert response.headers["access-control-allow-origin"] == "https://example.com"
