"""How provider calls reach the transport: straight, unless the client has something to add."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import httpx2
import pytest

from trio_orchestrator.testing.fake_provider import Behaviour, open_fake_provider
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import OpenAIWorker, collect

REQUEST = PromptRequest(input="hi", params=GenerationParams(model="fake-model"))
SSE = (
    b'data: {"choices":[{"index":0,"delta":{"content":"mounted"},"finish_reason":"stop"}]}'
    b"\n\ndata: [DONE]\n\n"
)
LIBRARIES = pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])


def count_sends(client: Any) -> list[int]:
    """Count the calls of ``client.send`` (still sending)."""
    calls = [0]
    send = client.send

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await send(*args, **kwargs)

    client.send = counted
    return calls


@LIBRARIES
async def test_a_plain_client_hands_the_call_to_its_transport(module: Any) -> None:
    """Without hooks, auth or redirects the call skips AsyncClient.send and still answers."""
    async with open_fake_provider(Behaviour(text="direct")) as fake, module.AsyncClient() as c:
        sends = count_sends(c)
        completion = await collect(OpenAIWorker(c, fake.openai_base_url), REQUEST)
    assert completion.text == "direct"
    assert sends == [0]


@LIBRARIES
@pytest.mark.parametrize("kind", ["request", "response"])
async def test_event_hooks_still_see_every_call(module: Any, kind: str) -> None:
    """A client's request hook, or its response hook, runs for the worker's calls."""
    seen: list[str] = []

    async def on_request(request: Any) -> None:
        seen.append(request.url.path)

    async def on_response(response: Any) -> None:
        seen.append(str(response.status_code))

    hooks = {kind: [on_request if kind == "request" else on_response]}
    async with open_fake_provider() as fake, module.AsyncClient(event_hooks=hooks) as client:
        sends = count_sends(client)
        await collect(OpenAIWorker(client, fake.openai_base_url), REQUEST)
    assert seen == (["/v1/chat/completions"] if kind == "request" else ["200"])
    assert sends == [1]


@LIBRARIES
async def test_client_auth_still_applies(module: Any) -> None:
    """A client's auth flow signs the worker's calls."""
    async with open_fake_provider() as fake, module.AsyncClient(auth=("user", "pw")) as client:
        await collect(OpenAIWorker(client, fake.openai_base_url), REQUEST)
    assert fake.requests[-1].headers["authorization"] == "Basic " + base64.b64encode(
        b"user:pw"
    ).decode("ascii")


@LIBRARIES
async def test_cookies_a_provider_sets_are_sent_back(module: Any) -> None:
    """A cookie from one answer goes with the next call, as through AsyncClient.send."""
    behaviour = Behaviour(headers={"set-cookie": "balancer=b7; Path=/"})
    async with open_fake_provider(behaviour) as fake, module.AsyncClient() as client:
        worker = OpenAIWorker(client, fake.openai_base_url)
        await collect(worker, REQUEST)
        await collect(worker, REQUEST)
    assert "cookie" not in fake.requests[0].headers
    assert fake.requests[1].headers["cookie"] == "balancer=b7"


@LIBRARIES
async def test_the_transport_is_the_one_the_client_mounts_for_the_url(module: Any) -> None:
    """A mounted transport (a proxy, say) still carries the calls to its URLs."""
    mock = module.MockTransport(lambda request: module.Response(200, content=SSE))
    async with module.AsyncClient(mounts={"http://llm.test": mock}) as client:
        completion = await collect(OpenAIWorker(client, "http://llm.test/v1"), REQUEST)
    assert completion.text == "mounted"


@LIBRARIES
async def test_a_client_that_follows_redirects_still_does(module: Any) -> None:
    """With follow_redirects the client's send follows a provider's redirect."""

    def handler(request: Any) -> Any:
        if request.url.path == "/v1/chat/completions":
            return module.Response(307, headers={"location": "http://llm.test/v2/chat"})
        return module.Response(200, content=SSE)

    transport = module.MockTransport(handler)
    async with module.AsyncClient(transport=transport, follow_redirects=True) as client:
        completion = await collect(OpenAIWorker(client, "http://llm.test/v1"), REQUEST)
    assert completion.text == "mounted"


@LIBRARIES
async def test_a_closed_client_fails_as_through_send(module: Any) -> None:
    """A call on a closed client raises the client's own error, not a connection error."""
    client = module.AsyncClient()
    await client.aclose()
    with pytest.raises(RuntimeError, match="client has been closed"):
        await collect(OpenAIWorker(client, "http://127.0.0.1:9/v1"), REQUEST)
