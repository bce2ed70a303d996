"""The WebSocket endpoint: concurrent prompts on one connection, cancellation by message."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import httpx
import trio
from service_helpers import make_config, running_service
from trio_websocket import WebSocketConnection, open_websocket_url

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig
from trio_orchestrator.workers import EchoWorker

PROMPTLY = 5


async def send(ws: WebSocketConnection, **message: Any) -> None:
    await ws.send_message(json.dumps(message))


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(PROMPTLY):
        message: dict[str, Any] = json.loads(await ws.get_message())
    return message


async def collect_until_final(ws: WebSocketConnection, ids: set[str]) -> dict[str, list[Any]]:
    """Events by prompt id, until every prompt in ``ids`` has ended."""
    events: dict[str, list[Any]] = defaultdict(list)
    open_ids = set(ids)
    while open_ids:
        event = await receive(ws)
        events[event["id"]].append(event)
        if event["type"] in ("done", "error", "cancelled"):
            open_ids.discard(event["id"])
    return events


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/ws"


async def test_several_prompts_run_concurrently_on_one_connection() -> None:
    """Prompts sent back to back on one socket each end with their own done event."""
    worker = EchoWorker(token_delay=0.01)
    async with running_service(worker=worker) as url, open_websocket_url(ws_url(url)) as ws:
        for i in range(4):
            await send(ws, type="prompt", id=f"p{i}", input=f"prompt {i} says hello")
        events = await collect_until_final(ws, {f"p{i}" for i in range(4)})
    for i in range(4):
        assert events[f"p{i}"][-1]["type"] == "done"
        assert events[f"p{i}"][-1]["text"] == f"prompt {i} says hello"


async def test_a_fast_prompt_is_not_held_up_by_a_slow_one() -> None:
    """A short prompt sent after a long one on the same socket finishes first."""
    worker = EchoWorker(token_delay=0.02)
    finished: list[str] = []
    async with running_service(worker=worker) as url, open_websocket_url(ws_url(url)) as ws:
        await send(ws, type="prompt", id="slow", input=" ".join(["w"] * 50))
        await send(ws, type="prompt", id="fast", input="quick")
        while len(finished) < 2:
            event = await receive(ws)
            if event["type"] == "done":
                finished.append(event["id"])
    assert finished == ["fast", "slow"]


async def test_cancel_message_cancels_only_that_prompt() -> None:
    """A cancel message ends its prompt with `cancelled`; the other prompt completes."""
    worker = EchoWorker(token_delay=0.05)
    long_prompt = " ".join(["w"] * 400)
    async with running_service(worker=worker) as url, open_websocket_url(ws_url(url)) as ws:
        await send(ws, type="prompt", id="long", input=long_prompt)
        await send(ws, type="prompt", id="short", input="done soon")
        while (await receive(ws))["type"] != "text_delta":
            pass
        await send(ws, type="cancel", id="long")
        events = await collect_until_final(ws, {"long", "short"})
    assert events["long"][-1]["type"] == "cancelled"
    assert events["short"][-1]["type"] == "done"


async def test_a_bad_message_gets_an_error_naming_the_field() -> None:
    """A prompt with a bad field gets an error event with the prompt's id and the field."""
    async with running_service() as url, open_websocket_url(ws_url(url)) as ws:
        await send(ws, type="prompt", id="x", input="hi", max_tokens=0)
        event = await receive(ws)
    assert (event["id"], event["type"], event["error"]["param"]) == ("x", "error", "max_tokens")


async def test_cancelling_an_unknown_id_is_an_error() -> None:
    """Cancelling an id with no prompt in flight gets an error event."""
    async with running_service() as url, open_websocket_url(ws_url(url)) as ws:
        await send(ws, type="cancel", id="ghost")
        event = await receive(ws)
    assert (event["id"], event["error"]["code"]) == ("ghost", "unknown_id")


async def test_invalid_json_message_is_an_error_event() -> None:
    """A message that is not JSON gets an error event and the connection stays usable."""
    async with running_service() as url, open_websocket_url(ws_url(url)) as ws:
        await ws.send_message("{not json")
        error = await receive(ws)
        await send(ws, type="prompt", id="ok", input="fine")
        events = await collect_until_final(ws, {"ok"})
    assert error["error"]["code"] == "invalid_json"
    assert events["ok"][-1]["text"] == "fine"


async def test_websocket_needs_a_key_when_keys_are_configured() -> None:
    """Without a valid key, the WebSocket handshake is refused with 401 and the JSON error."""
    config = make_config(api_keys=(ApiKeyConfig("k", key=Secret("s3cret")),))
    handshake = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    # A plain HTTP client: trio-websocket leaks its socket when a handshake is rejected.
    async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/ws", headers=handshake)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_api_key")
