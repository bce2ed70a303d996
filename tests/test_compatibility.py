"""The compatibility table: it names every Chat Completions member, and docs/compatibility.md
is what it generates today."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import get_type_hints

import pytest
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from starlette.routing import Route, WebSocketRoute

from trio_orchestrator.compatibility import (
    CHAT_COMPLETIONS,
    ENDPOINTS,
    MemberRule,
    is_no_op,
    render_markdown,
)
from trio_orchestrator.service.app import ROUTES

SCRIPT = Path(__file__).parent.parent / "docs" / "gen_compatibility.py"


def generator() -> ModuleType:
    """docs/gen_compatibility.py, imported as a module."""
    spec = importlib.util.spec_from_file_location("gen_compatibility", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_is_up_to_date() -> None:
    """docs/compatibility.md holds the tables the code generates today."""
    script = generator()
    page = script.PAGE.read_text(encoding="utf-8")
    assert script.updated(page) == page, "run: python docs/gen_compatibility.py"


# Routes that never reach a provider: operational, or the gateway's own state.
NOT_MODEL_ROUTES = {
    "/v1/models",
    "/v1/models/{model:path}",
    "/v1/stats",
    "/v1/dead-letters",
    "/v1/dead-letters/{id}/replay",
    "/metrics",
    "/healthz",
    "/readyz",
    "/v1/admin/keys",
    "/v1/admin/keys/{id}",
    "/v1/admin/keys/{id}/rotate",
    "/v1/admin/spend",
    "/v1/admin/requests",
    "/v1/admin/requests/{id}",
    "/v1/experiments",
    "/v1/experiments/{id}",
    "/v1/admin/experiments/{id}/stop",
    "/v1/admin/experiments/{id}/resume",
    "/v1/feedback",
}


def test_the_endpoints_table_names_every_model_route() -> None:
    """Every route of the service that reaches a provider has a row, and every row a route:
    a new endpoint cannot ship without saying how it reaches each kind of upstream."""
    routes = {route.path for route in ROUTES if isinstance(route, Route | WebSocketRoute)}
    routes -= NOT_MODEL_ROUTES
    rows = {
        path.strip().removeprefix("POST ") for row, _, _ in ENDPOINTS for path in row.split(",")
    }
    assert routes == rows


def test_the_table_names_every_member_the_openai_sdk_sends() -> None:
    """The table's members are exactly the official SDK's request parameters (and stream)."""
    sdk = set(get_type_hints(CompletionCreateParamsBase)) | {"stream"}
    assert set(CHAT_COMPLETIONS) == sdk


def test_the_table_names_every_member_the_service_parses() -> None:
    """The table's members are exactly the service's CHAT_MEMBERS, once that exists."""
    chat = pytest.importorskip("trio_orchestrator.service.chat")
    members = getattr(chat, "CHAT_MEMBERS", None)
    if members is None:
        pytest.skip("service.chat has no CHAT_MEMBERS yet (the chat-request helper adds it)")
    assert set(CHAT_COMPLETIONS) == set(members)


def test_rows_render_with_their_accepted_values() -> None:
    """A refused member's row says which values are accepted as no-ops."""
    assert "| `n` | forwarded unchanged | refused (accepted: `null`, `1`) |" in render_markdown()


@pytest.mark.parametrize(
    ("value", "expected"), [(None, True), (1, True), (1.0, True), (2, False), (True, False)]
)
def test_no_op_values_match_by_value_not_truthiness(value: object, expected: bool) -> None:
    """`n: 1` is a no-op; `n: true` is not 1 for this purpose, nor is 2."""
    assert is_no_op(MemberRule("n", "refused", no_op=(1,)), value) is expected
