"""Members the OpenAPI document types are held to it on every endpoint that takes them, the
way Chat Completions holds them (found by the OpenAPI fuzz test, pinned here one by one)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from service_helpers import running_service

MESSAGES = [{"role": "user", "content": "hi"}]

CASES = [
    ("/v1/completions", {"prompt": "hi", "presence_penalty": 3}, "presence_penalty"),
    ("/v1/completions", {"prompt": "hi", "frequency_penalty": -2.5}, "frequency_penalty"),
    ("/v1/responses", {"input": "hi", "parallel_tool_calls": {}}, "parallel_tool_calls"),
    ("/v1/responses", {"input": "hi", "service_tier": 7}, "service_tier"),
    (
        "/v1/responses",
        {"input": "hi", "text": {"format": {"type": "text", "description": {}}}},
        "text.format.description",
    ),
    (
        "/v1/responses",
        {"input": "hi", "text": {"format": {"type": "text", "schema": [1]}}},
        "text.format.schema",
    ),
    ("/v1/messages/count_tokens", {"messages": MESSAGES, "tool_choice": {}}, "tool_choice.type"),
    (
        "/v1/messages/count_tokens",
        {"messages": MESSAGES, "stop_sequences": [None]},
        "stop_sequences",
    ),
    ("/v1/messages/count_tokens", {"messages": MESSAGES, "stream": {}}, "stream"),
    ("/v1/messages/count_tokens", {"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    ("/v1/messages/count_tokens", {"messages": MESSAGES, "temperature": 3}, "temperature"),
]


@pytest.mark.parametrize(("path", "members", "param"), CASES)
async def test_a_member_outside_its_documented_type_is_a_400(
    path: str, members: dict[str, Any], param: str
) -> None:
    """The member outside its documented type or range is refused with a 400 naming it."""
    body = {"model": "echo", **members}
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert param in (error.get("param") or error.get("message", "")), error


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/prompt"],
)
async def test_a_body_that_is_not_an_object_has_an_error_code(path: str) -> None:
    """A JSON array as the body is a 400 with a machine-readable code (it had ``code: null``)."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post(path, json=[1, 2])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_value"
    assert "must be a JSON object, got an array" in error["message"]


async def test_a_user_message_without_content_is_a_400_naming_it() -> None:
    """A user message with no ``content`` is refused (it was forwarded as an empty string)."""
    body = {"model": "echo", "messages": [{"role": "user"}]}
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages[0].content", "missing_field")


async def test_a_string_where_a_content_part_belongs_is_described_as_a_string() -> None:
    """The content-part error describes what was sent: a string, not "an object"."""
    parts = [{"type": "text", "text": "a"}, "plain"]
    body = {"model": "echo", "messages": [{"role": "user", "content": parts}]}
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages[0].content[1]"
    assert "got the string 'plain'" in error["message"]
