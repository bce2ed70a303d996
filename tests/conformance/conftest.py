"""The conformance suite's gateway: ``serve`` over real HTTP in front of a recording upstream,
driven by clients nobody here wrote (the official ``openai`` and ``anthropic`` SDKs).

The service and the fake upstream run in a thread of their own, under their own
``trio.run``; the tests are plain synchronous functions calling the SDKs' synchronous clients
with their default transports, as a user's code would. Each test scripts what the upstream
answers (``Behaviour(body=...)`` / ``Behaviour(events=...)`` replay recorded answers
verbatim) and reads what it received.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import anthropic
import attrs
import openai
import pytest
import trio

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.service import serve
from trio_orchestrator.testing.fake_gemini import service_account_file
from trio_orchestrator.testing.fake_provider import (
    Behaviour,
    FakeProvider,
    RecordedRequest,
    open_fake_provider,
)
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig
from trio_orchestrator.workers.presets import PRESETS

#: The upstream kinds every conformance test runs against (``upstream_kind`` fixture).
UPSTREAM_KINDS = ("openai", "anthropic", "azure", "bedrock", "gemini", "vertex")

#: The kinds that speak Google's generateContent format (their bodies have ``contents``).
GOOGLE_KINDS = ("gemini", "vertex")

#: The wire format of each upstream kind whose format is another's (``Gateway.kind``).
WIRE_FORMATS = {"azure": "openai", **dict.fromkeys(PRESETS, "openai")}

#: The key the gateway holds for the upstream; a test can check it was sent.
UPSTREAM_KEY = "sk-upstream-test"

ConfigFactory = Callable[[FakeProvider], Config]

#: Chat Completions sampling members by their name in Bedrock Converse's ``inferenceConfig``.
_CONVERSE_SAMPLING = {
    "max_tokens": "maxTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "stop_sequences": "stopSequences",
}
_GOOGLE_SAMPLING = {**_CONVERSE_SAMPLING, "max_tokens": "maxOutputTokens"}


def sampling(kind: str, body: dict[str, Any], name: str) -> Any:
    """A sampling member (Anthropic's name: ``max_tokens``, ``temperature``, ``top_p``,
    ``stop_sequences``) as the upstream of ``kind`` received it (Bedrock nests them in
    ``inferenceConfig``, Google's API in ``generationConfig``)."""
    if kind == "bedrock":
        return body["inferenceConfig"][_CONVERSE_SAMPLING[name]]
    if kind in GOOGLE_KINDS:
        return body["generationConfig"][_GOOGLE_SAMPLING[name]]
    if kind == "openai" and name == "stop_sequences":
        return body["stop"]
    return body[name]


def upstream_provider(
    fake: FakeProvider, kind: str, name: str = "up", **options: Any
) -> ProviderConfig:
    """A provider of ``kind`` pointing at the fake upstream: with :data:`UPSTREAM_KEY` (a
    test may give its own ``api_keys``, or none), or (Vertex AI) a throwaway service account
    the fake trusts."""
    # OpenAI-compatible kinds take the API root with its /v1; the others the server's.
    base = fake.openai_base_url if kind == "openai" or kind in PRESETS else fake.base_url
    keys: dict[str, Any] = {"api_keys": [UPSTREAM_KEY]}
    if kind == "vertex":
        folder = tempfile.mkdtemp(prefix="vertex-")
        key = service_account_file(fake.google, folder, fake.base_url + "/token")
        keys = {"api_keys": [], "credentials_file": key}
    return ProviderConfig(kind, name, base, **{**keys, **options})  # type: ignore[arg-type]


def single_provider(kind: str, **provider: Any) -> ConfigFactory:
    """A configuration with one provider of ``kind`` pointing at the fake upstream."""

    def make(fake: FakeProvider) -> Config:
        upstream = upstream_provider(fake, kind, **provider)
        return Config(providers=ProvidersConfig([upstream]), service=ServiceConfig(port=0))

    return make


@attrs.define(eq=False)
class Gateway:
    """A running gateway and its recording upstream, for synchronous tests.

    Attributes:
        url: the gateway's base URL (``http://127.0.0.1:<port>``).
        kind: the upstream's wire format, one of :data:`UPSTREAM_KINDS` (Azure OpenAI's
            is ``"openai"``: see ``WIRE_FORMATS``).
        upstream: the upstream provider's kind (``"azure"``…).
    """

    url: str
    kind: str
    _fake: FakeProvider
    _token: trio.lowlevel.TrioToken
    _clients: list[openai.OpenAI | anthropic.Anthropic] = attrs.field(factory=list)
    upstream: str = ""

    def openai(self, **options: Any) -> openai.OpenAI:
        """The official OpenAI SDK's client, pointed at the gateway (no retries); closed
        when the test ends."""
        url = self.url + "/v1"
        client = openai.OpenAI(base_url=url, api_key="sk-client", max_retries=0, **options)
        self._clients.append(client)
        return client

    def anthropic(self, **options: Any) -> anthropic.Anthropic:
        """The official Anthropic SDK's client, pointed at the gateway (no retries); closed
        when the test ends."""
        client = anthropic.Anthropic(
            base_url=self.url, api_key="sk-client", max_retries=0, **options
        )
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close the SDK clients made so far (an open one warns when collected, and warnings
        are errors)."""
        while self._clients:
            self._clients.pop().close()

    def script(self, *behaviours: Behaviour) -> None:
        """Queue how the upstream answers the next requests, one behaviour each."""
        trio.from_thread.run_sync(self._fake.script, *behaviours, trio_token=self._token)

    def received(self) -> list[RecordedRequest]:
        """Every model call the upstream has received, oldest first (a Vertex AI token
        exchange, ``POST /token``, is not one)."""
        requests = trio.from_thread.run_sync(list, self._fake.requests, trio_token=self._token)
        return [r for r in requests if r.path != "/token"]

    def last(self) -> RecordedRequest:
        """The request the upstream received last."""
        received = self.received()
        assert received, "the upstream received no request"
        return received[-1]

    def clear(self) -> None:
        """Forget the requests received so far, and any behaviours still queued."""

        def clear() -> None:
            self._fake.requests.clear()
            self._fake._queue.clear()

        trio.from_thread.run_sync(clear, trio_token=self._token)


@attrs.define(eq=False)
class _Running:
    thread: threading.Thread
    stop: Callable[[], None]
    gateway: Gateway


def start_gateway(kind: str, make_config: ConfigFactory) -> _Running:
    """Start the fake upstream and the service in a thread; return once both listen."""
    ready: queue.Queue[tuple[FakeProvider, str, trio.lowlevel.TrioToken] | BaseException]
    ready = queue.Queue()

    async def main(stopped: trio.Event) -> None:
        async with open_fake_provider() as fake, trio.open_nursery() as nursery:
            server = partial(serve, make_config(fake), shutdown_trigger=stopped.wait)
            url = await nursery.start(server)
            ready.put((fake, url, trio.lowlevel.current_trio_token()))

    stopped: list[trio.Event] = []

    def run() -> None:
        async def entry() -> None:
            stopped.append(trio.Event())
            await main(stopped[0])

        try:
            trio.run(entry)
        except BaseException as exc:  # reported to the waiting test
            ready.put(exc)

    thread = threading.Thread(target=run, name=f"gateway-{kind}", daemon=True)
    thread.start()
    started = ready.get(timeout=60)
    if isinstance(started, BaseException):
        raise started
    fake, url, token = started

    gateway = Gateway(url, WIRE_FORMATS.get(kind, kind), fake, token, upstream=kind)

    def stop() -> None:
        gateway.close_clients()
        trio.from_thread.run_sync(stopped[0].set, trio_token=token)
        thread.join(timeout=30)

    return _Running(thread, stop, gateway)


def running(kind: str, **provider: Any) -> Iterator[Gateway]:
    """A gateway in front of one provider of ``kind`` with these ``ProviderConfig`` options,
    stopped when the generator is closed (``yield from`` it in a fixture, or loop once)."""
    started = start_gateway(kind, single_provider(kind, **provider))
    try:
        yield started.gateway
    finally:
        started.stop()


@pytest.fixture(scope="module", params=UPSTREAM_KINDS)
def upstream_kind(request: pytest.FixtureRequest) -> str:
    """Each upstream wire format in turn."""
    kind: str = request.param
    return kind


@pytest.fixture(scope="module")
def gateway(upstream_kind: str) -> Iterator[Gateway]:
    """The gateway in front of one provider of ``upstream_kind`` (the fake upstream)."""
    running = start_gateway(upstream_kind, single_provider(upstream_kind))
    try:
        yield running.gateway
    finally:
        running.stop()


@pytest.fixture
def gw(gateway: Gateway) -> Iterator[Gateway]:
    """The module's gateway, its upstream's record cleared for this test."""
    gateway.clear()
    yield gateway
    gateway.close_clients()
