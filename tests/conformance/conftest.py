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
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any
from urllib.parse import urlsplit

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
from trio_orchestrator.workers.presets import PRESETS, Preset, Refusal

#: The upstream kinds every conformance test runs against (``upstream_kind`` fixture); each
#: test also runs against one preset (:func:`preset_for`).
UPSTREAM_KINDS = ("openai", "anthropic", "azure", "bedrock", "gemini", "vertex")

#: The presets, in the order :func:`preset_for` cycles through them.
PRESET_CYCLE = tuple(sorted(PRESETS))

#: The prefix of the preset run's parameter id (``test_x[preset-groq]``): ``-k preset``.
PRESET_ID = "preset-"

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


def preset_for(nodeid: str) -> str:
    """The preset a test runs against besides :data:`UPSTREAM_KINDS`: the presets cycle over
    the tests by a stable hash of the test's node id, so that every preset meets many tests
    without eight more runs of the whole suite (and a failure's id names its preset)."""
    return PRESET_CYCLE[zlib.crc32(nodeid.encode()) % len(PRESET_CYCLE)]


def api_root(kind: str) -> str:
    """The path of ``kind``'s OpenAI-compatible API root: its preset's own (Groq's
    ``/openai/v1``), or ``/v1``."""
    return urlsplit(PRESETS[kind].base_url).path if kind in PRESETS else "/v1"


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

    @property
    def preset(self) -> Preset | None:
        """The upstream's preset (its quirks), or None for a kind that is not one."""
        return PRESETS.get(self.upstream)

    def refusal(self, member: str, model: str = "fake-model") -> Refusal | None:
        """How the upstream's preset refuses ``member`` for ``model``, or None if it takes it
        (the preset table says so; a test does not keep its own list)."""
        preset = self.preset
        refusals = preset.refuses if preset is not None else ()
        return next((r for r in refusals if r.member == member and r.applies_to(model)), None)

    def refused(self, body: dict[str, Any]) -> str | None:
        """The path of the first member of a Chat Completions ``body`` that the upstream's
        preset refuses (its table's order), or None."""
        preset = self.preset
        model = str(body.get("model", ""))
        for refusal in preset.refuses if preset is not None else ():
            if not refusal.applies_to(model):
                continue
            if refusal.member.startswith("messages[]."):
                name = refusal.member.removeprefix("messages[].")
                named = [i for i, m in enumerate(body.get("messages", ())) if m.get(name)]
                if named:
                    return f"messages[{named[0]}].{name}"
            elif body.get(refusal.member) not in (None, False, refusal.allowed):
                return refusal.member
        return None

    def member(self, name: str) -> str:
        """The name the upstream receives a Chat Completions member by (Mistral's
        ``random_seed`` for ``seed``)."""
        preset = self.preset
        return preset.renames.get(name, name) if preset is not None else name

    def as_received(self, body: dict[str, Any]) -> dict[str, Any]:
        """A Chat Completions ``body`` with its members named as the upstream receives them."""
        return {self.member(name): value for name, value in body.items()}

    @property
    def api_root(self) -> str:
        """The path of the upstream's OpenAI-compatible API root (``/v1``, Groq's
        ``/openai/v1``…)."""
        return api_root(self.upstream)

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
        fake_provider = open_fake_provider(openai_root=api_root(kind))
        async with fake_provider as fake, trio.open_nursery() as nursery:
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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize each test that takes ``upstream_kind`` (this file's, not a module's own)
    with :data:`UPSTREAM_KINDS` and every preset; :func:`pytest_collection_modifyitems` then
    keeps each test case's own preset only."""
    if "upstream_kind" not in metafunc.fixturenames or hasattr(metafunc.module, "upstream_kind"):
        return
    metafunc.parametrize(
        "upstream_kind",
        [*UPSTREAM_KINDS, *PRESET_CYCLE],
        indirect=True,
        scope="module",
        ids=[*UPSTREAM_KINDS, *(PRESET_ID + p for p in PRESET_CYCLE)],
    )


def _cycled_out(item: pytest.Item) -> bool:
    """Whether ``item`` is a preset run that is not its test case's preset."""
    callspec = getattr(item, "callspec", None)
    kind = str(callspec.params.get("upstream_kind")) if callspec is not None else ""
    if kind not in PRESETS:
        return False
    return preset_for(item.nodeid.replace(PRESET_ID + kind, "preset")) != kind


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep, of each test case's preset runs, the one :func:`preset_for` picks (reported as
    deselected, the others)."""
    dropped = [item for item in items if _cycled_out(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        kept = [item for item in items if not _cycled_out(item)]
        items[:] = kept


@pytest.fixture(scope="module")
def upstream_kind(request: pytest.FixtureRequest) -> str:
    """Each upstream kind in turn (parametrized by :func:`pytest_generate_tests`)."""
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
