"""Every built-in worker and every resilience layer keeps the worker contract.

Each class is the one-line contract of ``trio_orchestrator.testing`` (event grammar, typed
errors, prompt cancellation, deadlines, concurrent use), run over a built-in; those that
need a nursery or a server get it from an async fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import httpx
import pytest
import trio
from hypothesis import strategies as st
from test_contract import EXAMPLES, contract

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.resilience import (
    BreakerConfig,
    CacheConfig,
    CacheLayer,
    CircuitBreakerLayer,
    CoalescingConfig,
    CoalescingLayer,
    LimitConfig,
    RateLimitLayer,
    RateLimitsConfig,
    RetryConfig,
    RetryLayer,
)
from trio_orchestrator.routing import ModelDeployment, RoutingConfig, build_router
from trio_orchestrator.testing import FakeBehaviour, WorkerContract, open_fake_provider
from trio_orchestrator.testing.fake_bedrock import CREDENTIALS
from trio_orchestrator.testing.strategies import generation_params, prompt_requests
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import EchoWorker, ModelWorker
from trio_orchestrator.workers.anthropic import AnthropicWorker
from trio_orchestrator.workers.azure import AzureOpenAIWorker
from trio_orchestrator.workers.balance import LoadBalancedWorker
from trio_orchestrator.workers.bedrock import AWSCredentials, BedrockWorker
from trio_orchestrator.workers.keys import KeyPool
from trio_orchestrator.workers.openai import OpenAIWorker
from trio_orchestrator.workers.preset import PresetWorker
from trio_orchestrator.workers.presets import PRESETS

GENEROUS = RateLimitsConfig(
    enabled=True, limits=(LimitConfig(scope="provider", requests_per_second=1e6, burst=1e6),)
)

TestRetryLayer = contract(
    lambda: RetryLayer(EchoWorker(), RetryConfig(enabled=True)), deterministic=True
)
TestCircuitBreakerLayer = contract(
    lambda: CircuitBreakerLayer(EchoWorker(), BreakerConfig(enabled=True)), deterministic=True
)
TestRateLimitLayer = contract(lambda: RateLimitLayer(EchoWorker(), GENEROUS), deterministic=True)
TestCacheLayer = contract(
    lambda: CacheLayer(EchoWorker(), CacheConfig(enabled=True, cache_sampled=True)),
    deterministic=True,
)
TestLoadBalancedWorker = contract(
    lambda: LoadBalancedWorker([EchoWorker(), EchoWorker()], "least_loaded"), deterministic=True
)
TestRouterWorker = contract(
    lambda: build_router(
        RoutingConfig(
            deployments=(
                ModelDeployment("one", "m", "echo", upstream_model="echo"),
                ModelDeployment("two", "m", "echo", upstream_model="echo"),
            )
        ),
        {"echo": EchoWorker()},
    ),
    deterministic=True,
)


class TestCoalescingLayer(WorkerContract):
    """The coalescing layer runs upstream calls in a nursery of its own."""

    deterministic = True
    max_examples = EXAMPLES

    @pytest.fixture
    async def contract_worker_factory(self, nursery: trio.Nursery) -> Callable[[], ModelWorker]:
        config = CoalescingConfig(enabled=True, coalesce_sampled=True)
        return lambda: CoalescingLayer(EchoWorker(), config, nursery)


@pytest.fixture
async def fake_upstream() -> AsyncIterator[Any]:
    """A fake provider on a free loopback port, and an HTTP client for it."""
    async with open_fake_provider(FakeBehaviour(tokens=6)) as fake, httpx.AsyncClient() as client:
        yield fake, client


class HTTPWorkerContract(WorkerContract):
    """The contract for a worker over real HTTP to the fake provider (real time: the fake
    runs on real sockets)."""

    virtual_time = False
    call_timeout = 20.0
    max_examples = EXAMPLES


class TestOpenAIWorker(HTTPWorkerContract):
    """The OpenAI-compatible worker over real HTTP to the fake provider."""

    @pytest.fixture
    async def contract_worker_factory(self, fake_upstream: Any) -> Callable[[], ModelWorker]:
        fake, client = fake_upstream
        return lambda: OpenAIWorker(client, fake.openai_base_url)


class TestAzureOpenAIWorker(HTTPWorkerContract):
    """The Azure OpenAI worker over real HTTP to the fake's Azure deployment URLs."""

    @pytest.fixture
    async def contract_worker_factory(self, fake_upstream: Any) -> Callable[[], ModelWorker]:
        fake, client = fake_upstream
        return lambda: AzureOpenAIWorker(
            client, fake.base_url, KeyPool([Secret("azure-key-0123456789")], "azure")
        )


class TestPresetWorker(HTTPWorkerContract):
    """A preset's worker (Groq's: the one with refusals) over real HTTP to the fake."""

    @pytest.fixture
    async def contract_worker_factory(self, fake_upstream: Any) -> Callable[[], ModelWorker]:
        fake, client = fake_upstream
        return lambda: PresetWorker(client, fake.openai_base_url, preset=PRESETS["groq"])


class TestAnthropicWorker(HTTPWorkerContract):
    """The Anthropic Messages worker over real HTTP to the fake provider."""

    @pytest.fixture
    async def contract_worker_factory(self, fake_upstream: Any) -> Callable[[], ModelWorker]:
        fake, client = fake_upstream
        return lambda: AnthropicWorker(client, fake.base_url)

    def requests(self) -> st.SearchStrategy[PromptRequest]:
        """Requests Anthropic can carry: no seed, temperature at most 1 (the rest is refused
        before any call, which would leave the contract little to check)."""
        return prompt_requests(params=generation_params().map(_anthropic_params))


def _anthropic_params(params: GenerationParams) -> GenerationParams:
    temperature = None if params.temperature is None else min(params.temperature, 1.0)
    return attrs.evolve(params, seed=None, temperature=temperature)


class TestBedrockWorker(WorkerContract):
    """The Bedrock Converse worker over real HTTP to the fake provider, every request
    signed with SigV4 (which the fake checks)."""

    virtual_time = False
    call_timeout = 20.0
    max_examples = EXAMPLES

    @pytest.fixture
    async def contract_worker_factory(self, fake_upstream: Any) -> Callable[[], ModelWorker]:
        fake, client = fake_upstream
        ((key_id, secret),) = CREDENTIALS.items()
        credentials = AWSCredentials(key_id, Secret(secret))
        return lambda: BedrockWorker(
            client, fake.base_url, credentials=credentials, region="us-east-1"
        )

    def requests(self) -> st.SearchStrategy[PromptRequest]:
        """Requests Converse can carry: no seed (refused before any call)."""
        return prompt_requests(params=generation_params().map(_bedrock_params))


def _bedrock_params(params: GenerationParams) -> GenerationParams:
    return attrs.evolve(params, seed=None)
