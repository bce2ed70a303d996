"""Errors the gateway's own parts raise reach the official SDK with a deliberate status."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.testing.fake_provider import FakeProvider

from .conftest import Gateway, start_gateway

# An echo deployment so dear that a zero budget refuses any request for it.
BUDGETED = """
[[providers.providers]]
kind = "echo"
name = "local"
models = ["echo"]

[[routing.deployments]]
name = "echo-paid"
model = "echo"
provider = "local"
input_price = 1000.0
output_price = 1000.0

[routing.budgets]
per_model = { echo = 0.0 }

[service]
port = 0
"""


def _budgeted(_fake: FakeProvider) -> Config:
    return parse_config(BUDGETED)


@pytest.fixture(scope="module")
def budgeted() -> Iterator[Gateway]:
    """A gateway routing to an echo deployment whose model has a zero budget."""
    running = start_gateway("echo", _budgeted)
    try:
        yield running.gateway
    finally:
        running.stop()


def test_a_budget_refusal_is_a_429_insufficient_quota(budgeted: Gateway) -> None:
    """The router's BudgetExceeded is OpenAI's 429 insufficient_quota, not a 500."""
    with budgeted.openai() as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 429
    assert caught.value.code == caught.value.type == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_an_unknown_model_through_the_router_is_a_404(budgeted: Gateway) -> None:
    """A model no deployment serves is a 404 model_not_found naming `model`."""
    with budgeted.openai() as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="nobody-serves-this", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
