"""Schemathesis over /openapi.json against the served gateway: no 5xx, and every answer is one
the document describes (its status, its content type, its body's schema).

The service runs under ``serve`` (hypercorn's Trio worker, a real loopback socket) in a thread
of its own with the echo worker and one admin API key, so every operation is reachable and
authenticated as a client would be. Schemathesis generates valid and invalid requests from the
document the service serves; Hypothesis runs derandomized (a fixed seed) with a bounded number
of examples per operation, so the run is the same on every machine and stays short.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, seed, settings
from schemathesis import Case, checks

from trio_orchestrator.config import Config
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig, ServiceConfig
from trio_orchestrator.service import serve
from trio_orchestrator.service.openapi import openapi_document
from trio_orchestrator.storage import StorageConfig

KEY = "sk-fuzz"
AUTH = {"authorization": f"Bearer {KEY}"}
#: Examples per operation: enough to reach every member's edge cases, few enough for CI.
MAX_EXAMPLES = 10

#: What every answer must satisfy. Left out: ``positive_data_acceptance``, since the door
#: enforces rules between members that OpenAPI 3.0 cannot state (``top_logprobs`` needs
#: ``logprobs: true``, ``n`` > 1 cannot stream with tools…), and the checks that need state
#: or resources (``use_after_free``, ``ensure_resource_availability``).
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


#: The document the service serves when the echo worker is its one model.
schema = schemathesis.openapi.from_dict(openapi_document(("echo",)))


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    """``serve`` on 127.0.0.1 (a free port) in a thread, with one admin key and the echo
    worker; its base URL."""
    key = ApiKeyConfig(name="fuzz", key=Secret(KEY), admin=True)
    # Storage in memory: the admin key and spend routes are fuzzed for real.
    storage = StorageConfig(backend="sqlite")
    config = Config(service=ServiceConfig(port=0, api_keys=(key,)), storage=storage)
    started: queue.Queue[str | BaseException] = queue.Queue()
    stop: list[tuple[trio.Event, trio.lowlevel.TrioToken]] = []

    async def main() -> None:
        stopped = trio.Event()
        stop.append((stopped, trio.lowlevel.current_trio_token()))
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve, config, shutdown_trigger=stopped.wait))
            started.put(url)

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the waiting fixture
            started.put(exc)

    thread = threading.Thread(target=run, name="fuzzed-gateway", daemon=True)
    thread.start()
    url = started.get(timeout=60)
    if isinstance(url, BaseException):
        raise url
    try:
        yield url
    finally:
        stopped, token = stop[0]
        trio.from_thread.run_sync(stopped.set, trio_token=token)
        thread.join(timeout=30)


def test_the_fuzzed_document_is_the_one_served(service_url: str) -> None:
    """The document fuzzed here is exactly what GET /openapi.json serves."""
    served = httpx.get(service_url + "/openapi.json", headers=AUTH, timeout=30)
    assert served.json() == openapi_document(("echo",))


@schema.parametrize()
@seed(16)
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_below_500_and_as_documented(case: Case[Any], service_url: str) -> None:
    """Every generated request, valid or not, is answered below 500 with a status, content
    type and body that the OpenAPI document describes."""
    case.call_and_validate(base_url=service_url, headers=AUTH, checks=CHECKS, timeout=30)
