"""A fault-injecting fake LLM provider: a real HTTP server speaking OpenAI's and Anthropic's
wire formats, for tests and benchmarks.

::

    async with open_fake_provider(Behaviour(text="Hello there")) as fake:
        worker = OpenAIWorker(client, base_url=fake.openai_base_url)
        fake.script(Behaviour(status=429, retry_after=2))   # the next request gets a 429
        fake.set_model("slow", Behaviour(token_delay=0.5))   # every request for "slow"

It runs under hypercorn's Trio worker on ``127.0.0.1`` and a free port. Which behaviour a
request gets: the next scripted one (:meth:`FakeProvider.script`), else the one for its API
key, else the one for its model, else the default. With a :class:`FaultMix`, a seeded share
of the requests then get a fault instead (a 500, a 429, a reset, a malformed event, a stall or
a hang). It counts the requests it saw, the faults it injected and the connections clients
closed before their answer was complete.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/responses``, ``GET /v1/models``,
``POST /v1/embeddings`` (OpenAI), ``POST /v1/messages`` (Anthropic), Azure OpenAI's
deployment and v1 paths (:mod:`.fake_azure`),
``POST /model/{modelId}/converse[-stream]`` and ``…/invoke`` for embeddings (AWS Bedrock,
:mod:`.fake_bedrock`, which checks SigV4 signatures) and Google's Gemini API and Vertex AI
routes with an OAuth ``POST /token`` (:mod:`.fake_gemini`), streaming and not. An
embeddings request takes its behaviour's ``status``, ``body``, ``headers`` and ``hang``; the
rest is for chats and responses (a streamed response's ``error_after`` sends an ``error``
event).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import math
import random
import signal
import struct
import sys
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast

import attrs
import trio

from ..workers.echo import split_tokens
from . import fake_azure, fake_bedrock, fake_gemini

__all__ = [
    "FAULT_KINDS",
    "Behaviour",
    "FakeProvider",
    "FakeProviderStatistics",
    "FaultMix",
    "RecordedRequest",
    "open_fake_provider",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_LOREM = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
]


@attrs.frozen
class Behaviour:
    """How the fake answers one request.

    Token positions (``stall_after`` and the rest) count content tokens already sent: 0 means
    before the first token.

    Attributes:
        text: the answer; ``None`` generates ``tokens`` words.
        tokens: how many words to generate when ``text`` is ``None``.
        token_delay: seconds between tokens (between pieces when ``drip`` is set).
        first_token_delay: seconds before the first token (after the headers when streaming).
        status: the HTTP status; ≥ 400 sends the format's error body.
        retry_after: the ``Retry-After`` header value (seconds or an HTTP-date).
        error_type: the error's ``type`` (and OpenAI ``code``); a default per status.
        error_message: the error's message.
        headers: extra response headers.
        hang: accept the request and never answer (no headers).
        stall_after: stop sending after this many tokens, keeping the stream open.
        disconnect_after: drop the connection after this many tokens.
        malformed_after: send an event that is not JSON after this many tokens.
        error_after: send an error object in the stream after this many tokens, then end.
        omit_done: end without OpenAI's ``[DONE]`` / Anthropic's ``message_stop``.
        drip: send the stream in pieces of this many bytes (a slow drip).
        tool_calls: ``(name, arguments JSON)`` pairs; they stream in parallel, interleaved.
        finish_reason: the finish reason (``stop``/``end_turn`` by default).
        body: answer a non-streaming request with exactly this JSON (a recorded answer, such
            as one from the provider's API reference); the fields above other than
            ``status``, ``headers`` and ``hang`` are then unused. With an error ``status``,
            it is the error body, streaming or not.
        events: answer a streaming request with exactly these event payloads, each as
            ``data: <JSON>`` (Anthropic and Responses: with ``event: <its type>``), then
            (Chat Completions only) ``data: [DONE]``.
    """

    text: str | None = None
    tokens: int = 8
    token_delay: float = 0.0
    first_token_delay: float = 0.0
    status: int = 200
    retry_after: float | str | None = None
    error_type: str | None = None
    error_message: str = "the fake provider was told to fail"
    headers: Mapping[str, str] = attrs.field(factory=dict)
    hang: bool = False
    stall_after: int | None = None
    disconnect_after: int | None = None
    malformed_after: int | None = None
    error_after: int | None = None
    omit_done: bool = False
    drip: int | None = None
    tool_calls: tuple[tuple[str, str], ...] = ()
    finish_reason: str | None = None
    body: Any = None
    events: tuple[Any, ...] = ()


FAULT_KINDS = ("500", "429", "reset", "malformed", "stall", "hang")
"""The faults a :class:`FaultMix` draws from."""


def _fault_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown or not kinds:
        raise ValueError(f"fault kinds must be among {FAULT_KINDS}, got {list(kinds)}")
    return kinds


@attrs.frozen
class FaultMix:
    """A seeded share of requests that fail, each in a way drawn from ``kinds``.

    A faulty request keeps the behaviour it would have had, with one fault added: ``500`` and
    ``429`` (with ``Retry-After: retry_after``) answer at once with that status; ``reset``
    drops the connection, ``malformed`` sends an event that is not JSON, ``stall`` stops
    sending and keeps the stream open, each after a position drawn from 0 to the answer's
    token count (before the first token included); ``hang`` never answers. The same seed
    gives the same faults to the same sequence of requests.

    Attributes:
        rate: the share of requests that get a fault, in [0, 1].
        kinds: the faults to draw from, equally likely (:data:`FAULT_KINDS`).
        seed: the seed of the draws.
        retry_after: the ``Retry-After`` of a ``429``, in seconds.
        weights: how likely each of ``kinds`` is (equally, when None).
    """

    rate: float = attrs.field(default=0.2)
    kinds: tuple[str, ...] = attrs.field(default=FAULT_KINDS, converter=_fault_kinds)
    seed: int = 0
    retry_after: float = 1.0
    weights: tuple[float, ...] | None = None

    @classmethod
    def parse(cls, spec: str, *, seed: int = 0, retry_after: float = 1.0) -> FaultMix:
        """A mix from ``KIND=SHARE`` pairs, such as ``"500=0.05,429=0.05,reset=0.02"``:
        each kind fails that share of all requests (an empty spec: none fail).

        Raises:
            ValueError: an unknown kind, a share that is not a number in [0, 1], a kind
                named twice, or shares summing past 1.
        """
        shares: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            kind, equals, share = item.partition("=")
            try:
                value = float(share) if equals else math.nan
            except ValueError:
                value = math.nan
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{item!r}: write KIND=SHARE, a share in [0, 1] (500=0.05)")
            if kind in shares:
                raise ValueError(f"{kind!r} is named twice")
            shares[kind] = value
        if not shares:
            return cls(0.0, seed=seed, retry_after=retry_after)  # no faults
        total = sum(shares.values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"the shares sum to {total:g}, more than every request")
        kinds, weights = tuple(shares), tuple(shares.values())
        return cls(min(total, 1.0), kinds, seed, retry_after, weights if total else None)

    @rate.validator
    def _check_rate(self, _attribute: object, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"a fault rate is a fraction in [0, 1], got {value}")

    def fault(self, behaviour: Behaviour, rng: random.Random) -> tuple[str, Behaviour] | None:
        """Draw whether the next request fails and how: the fault's kind and the behaviour
        with it, or None for a request answered as ``behaviour`` says."""
        if rng.random() >= self.rate:
            return None
        if self.weights is None:
            kind = rng.choice(self.kinds)
        else:
            (kind,) = rng.choices(self.kinds, self.weights)
        tokens = len(split_tokens(behaviour.text)) if behaviour.text else behaviour.tokens
        at = rng.randint(0, max(0, tokens - 1))
        changes: dict[str, dict[str, Any]] = {
            "500": {"status": 500},
            "429": {"status": 429, "retry_after": self.retry_after},
            "reset": {"disconnect_after": at},
            "malformed": {"malformed_after": at},
            "stall": {"stall_after": at},
            "hang": {"hang": True},
        }
        return kind, attrs.evolve(behaviour, **changes[kind])


@attrs.frozen
class RecordedRequest:
    """A request the fake received.

    Attributes:
        method: the HTTP method.
        path: the URL path.
        headers: the request headers, names lower-cased (keys included: this is a test tool).
        body: the parsed JSON body, or ``None``.
        query: the URL's query string (``api-version=…``), or ``""``.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    query: str = ""


@attrs.frozen
class FakeProviderStatistics:
    """What the fake has seen.

    Attributes:
        requests: requests received.
        client_disconnects: connections the client closed before its answer was complete.
        active: requests being answered now.
        faults: requests given a fault by the :class:`FaultMix`, by kind.
        queued: model calls waiting for capacity now (see :meth:`FakeProvider.set_capacity`).
        over_capacity: model calls refused for want of capacity (``overflow`` 429 or 503).
    """

    requests: int
    client_disconnects: int
    active: int
    faults: Mapping[str, int] = attrs.field(factory=dict)
    queued: int = 0
    over_capacity: int = 0


class _Disconnect(Exception):
    """Raised inside the app to make hypercorn drop the connection mid-answer."""


_OPENAI_ERRORS = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "model_not_found",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _words(body: Any) -> int:
    messages = body.get("messages") if isinstance(body, Mapping) else None
    total = 0
    for message in messages or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        total += len(str(content or "").split())
    return total


@attrs.define(eq=False)
class _Answer:
    """One answer being written: its tokens, its fault plan, and the ASGI ``send``."""

    behaviour: Behaviour
    send: Send
    model: str
    tokens: list[str]
    finish: str
    input_tokens: int
    _pending: bytearray = attrs.field(factory=bytearray)

    @property
    def instant(self) -> bool:
        """No delays and no faults: the whole answer can go in one write."""
        b = self.behaviour
        faults = (b.stall_after, b.disconnect_after, b.malformed_after, b.error_after, b.drip)
        return not (b.token_delay or b.first_token_delay) and all(f is None for f in faults)

    async def write(self, data: bytes) -> None:
        if self.instant:
            # Buffered to the end: a benchmark's floor should not be the fake's send calls.
            self._pending += data
            return
        drip = self.behaviour.drip
        if not drip:
            await self.send({"type": "http.response.body", "body": data, "more_body": True})
            return
        for start in range(0, len(data), drip):
            if start:
                await trio.sleep(self.behaviour.token_delay)
            piece = data[start : start + drip]
            await self.send({"type": "http.response.body", "body": piece, "more_body": True})

    async def fault(self, sent: int, error_event: bytes) -> bool:
        """Apply the faults planned at position ``sent``; ``True`` ends the answer."""
        b = self.behaviour
        if b.stall_after == sent:
            await trio.sleep_forever()
        if b.disconnect_after == sent:
            raise _Disconnect
        if b.malformed_after == sent:
            await self.write(b'data: {"choices": [{"delta": {"content": "cut\n\n')
        if b.error_after == sent:
            await self.write(error_event)
            return True
        return False


_OVERFLOWS = ("queue", "429", "503")


def _is_model_call(scope: Scope) -> bool:
    """Whether capacity applies: a ``POST`` other than the OAuth token exchange."""
    return bool(scope["method"] == "POST" and scope["path"] != "/token")


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


@attrs.define(eq=False)
class FakeProvider:
    """The fake's state and its ASGI application. Start it with :func:`open_fake_provider`
    or ``await nursery.start(fake.serve)``.

    Args:
        default: the behaviour when nothing more specific applies.
        models: the model ids ``/v1/models`` lists.
        record: keep every request in :attr:`requests`. Off for a long benchmark run, where
            the list only grows (and the fake's garbage collections slow down with it); the
            counts in :meth:`statistics` are kept either way.
        faults: a seeded share of requests that fail (applied to whichever behaviour a
            request gets), or None.
        port: the loopback port to listen on (0: a free one).
        openai_root: the path the OpenAI-compatible API is served under: ``/v1``, or a
            service's own root (Groq's ``/openai/v1``, OpenRouter's ``/api/v1``), so that a
            preset's base URL path is exercised as it is; requests keep their real path.
        capacity: model calls (every ``POST`` but the OAuth token exchange) answered at
            once; None for no limit. Change it while running with :meth:`set_capacity`.
        overflow: what happens to a call beyond ``capacity``: ``"queue"`` (it waits, first
            come first served, for a call to finish: latency climbs, as a saturated
            inference server's does), or ``"429"`` / ``"503"`` (refused at once with that
            status and ``Retry-After: 1``).
        check_sigv4: check each SigV4-signed Bedrock request's signature by signing it
            again with botocore (as Bedrock does). Off, any ``AWS4-`` authorization from a
            known key id is taken: for benchmarks of the gateway, where the check would cost
            the fake, on the same cores, several times what signing costs the gateway.
    """

    default: Behaviour = attrs.field(factory=Behaviour)
    models: tuple[str, ...] = ("fake-model",)
    record: bool = True
    faults: FaultMix | None = None
    port: int = 0
    openai_root: str = "/v1"
    capacity: int | None = None
    overflow: str = attrs.field(default="queue")
    check_sigv4: bool = True
    base_url: str = attrs.field(default="", init=False)
    requests: list[RecordedRequest] = attrs.field(factory=list, init=False)
    _queue: deque[Behaviour] = attrs.field(factory=deque, init=False)
    _by_model: dict[str, Behaviour] = attrs.field(factory=dict, init=False)
    _by_key: dict[str, Behaviour] = attrs.field(factory=dict, init=False)
    _seen: int = attrs.field(default=0, init=False)
    _disconnects: int = attrs.field(default=0, init=False)
    _active: int = attrs.field(default=0, init=False)
    _disconnected: trio.Event = attrs.field(factory=trio.Event, init=False)
    _fault_rng: random.Random = attrs.field(init=False)
    _injected: dict[str, int] = attrs.field(factory=dict, init=False)
    _slots: trio.CapacityLimiter = attrs.field(init=False)
    _over_capacity: int = attrs.field(default=0, init=False)
    #: The Google routes' OAuth side (Vertex AI tokens); see :mod:`.fake_gemini`.
    google: fake_gemini.GoogleAuth = attrs.field(factory=fake_gemini.GoogleAuth, init=False)

    def __attrs_post_init__(self) -> None:
        self._fault_rng = random.Random(self.faults.seed if self.faults else 0)
        self._slots = trio.CapacityLimiter(math.inf)
        self.set_capacity(self.capacity, self.overflow)

    @overflow.validator
    def _check_overflow(self, _attribute: object, value: str) -> None:
        if value not in _OVERFLOWS:
            raise ValueError(f"overflow must be one of {_OVERFLOWS}, got {value!r}")

    def set_capacity(self, capacity: int | None, overflow: str | None = None) -> None:
        """Answer at most ``capacity`` model calls at once (None: no limit) from now on;
        calls already being answered finish. ``overflow`` as the class says (unchanged when
        None)."""
        if overflow is not None:
            self._check_overflow(None, overflow)
            self.overflow = overflow
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be at least 1 or None, got {capacity}")
        self.capacity = capacity
        self._slots.total_tokens = math.inf if capacity is None else capacity

    @property
    def openai_base_url(self) -> str:
        """The base URL for OpenAI-style clients (with ``/v1``, or :attr:`openai_root`)."""
        return self.base_url + self.openai_root

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, one each, in order."""
        self._queue.extend(behaviours)

    def set_model(self, model: str, behaviour: Behaviour) -> None:
        """Answer every request for ``model`` with ``behaviour``."""
        self._by_model[model] = behaviour

    def set_key(self, api_key: str, behaviour: Behaviour) -> None:
        """Answer every request made with ``api_key`` with ``behaviour``."""
        self._by_key[api_key] = behaviour

    def statistics(self) -> FakeProviderStatistics:
        """Counts of requests seen, client disconnects and answers in progress."""
        return FakeProviderStatistics(
            self._seen,
            self._disconnects,
            self._active,
            dict(self._injected),
            self._slots.statistics().tasks_waiting,
            self._over_capacity,
        )

    async def wait_for_disconnects(self, count: int) -> None:
        """Wait until clients have closed ``count`` connections mid-answer (in all)."""
        while self._disconnects < count:
            await self._disconnected.wait()

    async def serve(self, *, task_status: trio.TaskStatus[FakeProvider]) -> None:
        """Serve until cancelled; ``task_status.started`` gives this fake, its URL set."""
        from hypercorn.config import Config
        from hypercorn.trio import serve

        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]  # loopback only: it is a test double
        config.errorlog = None  # a scripted disconnect is not an error worth a traceback
        config.accesslog = None
        config.graceful_timeout = 0.0
        config.backlog = 4096  # benchmarks open a thousand connections at once
        # A loaded benchmark leaves pooled connections idle for seconds; closing them then
        # races the client's reuse and fails requests that did nothing wrong.
        config.keep_alive_timeout = 600.0
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, cast(Any, self), config, mode="asgi"))
            self.base_url = str(binds[0])
            task_status.started(self)

    # ----------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            body = dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace")))  # OAuth
        if self.record:
            query = scope.get("query_string", b"").decode()
            request = RecordedRequest(scope["method"], scope["path"], headers, body, query)
            self.requests.append(request)
        self._seen += 1
        self._active += 1
        try:
            await self._answer_watching(scope, headers, body, receive, send, raw)
        finally:
            self._active -= 1

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _answer_watching(
        self,
        scope: Scope,
        headers: Mapping[str, str],
        body: Any,
        receive: Receive,
        send: Send,
        raw: bytes = b"",
    ) -> None:
        done = False

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not done:
                self._disconnects += 1
                self._disconnected.set()
                self._disconnected = trio.Event()
            nursery.cancel_scope.cancel()

        async def send_marking_done(message: MutableMapping[str, Any]) -> None:
            nonlocal done
            # Marked before sending: hypercorn reports the stream closed during this send.
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done = True
            await send(message)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            query = scope.get("query_string", b"").decode()
            borrower = object()  # the slot's holder (an ASGI scope is not hashable)
            if not await self._take_slot(scope, send_marking_done, borrower):
                nursery.cancel_scope.cancel()
                return
            try:
                await self._route(
                    scope["method"],
                    scope["path"],
                    headers,
                    body,
                    send_marking_done,
                    (scope, raw),
                    query,
                )
            finally:
                if _is_model_call(scope):
                    self._slots.release_on_behalf_of(borrower)
            nursery.cancel_scope.cancel()

    async def _take_slot(self, scope: Scope, send: Send, borrower: object) -> bool:
        """Take a capacity slot for a model call (False: refused, the answer sent)."""
        if not _is_model_call(scope):
            return True
        if self.overflow == "queue":
            await self._slots.acquire_on_behalf_of(borrower)
            return True
        try:
            self._slots.acquire_on_behalf_of_nowait(borrower)
        except trio.WouldBlock:
            self._over_capacity += 1
            status = int(self.overflow)
            behaviour = Behaviour(status=status, retry_after=1, error_message="over capacity")
            await self._error(behaviour, send, anthropic=scope["path"] == "/v1/messages")
            return False
        return True

    def _pick(self, headers: Mapping[str, str], body: Any) -> Behaviour:
        behaviour = self._planned(headers, body)
        if self.faults is None:
            return behaviour
        drawn = self.faults.fault(behaviour, self._fault_rng)
        if drawn is None:
            return behaviour
        kind, faulty = drawn
        self._injected[kind] = self._injected.get(kind, 0) + 1
        return faulty

    def _planned(self, headers: Mapping[str, str], body: Any) -> Behaviour:
        if self._queue:
            return self._queue.popleft()
        key = (
            headers.get("x-api-key")
            or headers.get("x-goog-api-key")
            or headers.get("api-key")  # Azure OpenAI's
            or headers.get("authorization", "").removeprefix("Bearer ")
        )
        if key in self._by_key:
            return self._by_key[key]
        model = body.get("model") if isinstance(body, Mapping) else None
        return self._by_model.get(str(model), self.default)

    async def _route(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: Any,
        send: Send,
        received: tuple[Scope, bytes] | None = None,
        query: str = "",
    ) -> None:
        if self.openai_root != "/v1" and path.startswith(self.openai_root + "/"):
            path = "/v1" + path.removeprefix(self.openai_root)  # served as if under /v1
        if fake_azure.is_azure_path(path):
            await fake_azure.route(self, method, path, query, headers, body, send)
        elif method == "GET" and path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models
            ]
            await _json(send, 200, {"object": "list", "data": data})
        elif method == "POST" and path == "/v1/embeddings" and isinstance(body, Mapping):
            await self._embeddings(self._pick(headers, body), body, send)
        elif method == "POST" and path == "/v1/chat/completions" and isinstance(body, Mapping):
            await self._chat(self._pick(headers, body), body, send, anthropic=False)
        elif method == "POST" and path == "/v1/responses" and isinstance(body, Mapping):
            await self._responses(self._pick(headers, body), body, send)
        elif method == "POST" and path == "/v1/messages" and isinstance(body, Mapping):
            if "anthropic-version" not in headers:
                error = {"type": "invalid_request_error", "message": "anthropic-version missing"}
                await _json(send, 400, {"type": "error", "error": error})
                return
            await self._chat(self._pick(headers, body), body, send, anthropic=True)
        elif method == "POST" and fake_bedrock.is_bedrock(path) and isinstance(body, Mapping):
            await self._bedrock(path, headers, body, send, received)
        elif method == "POST" and path == "/token":
            await fake_gemini.token_exchange(self.google, body, send)
        elif (
            method == "POST"
            and isinstance(body, Mapping)
            and (call := fake_gemini.google_call(path))
        ):
            b = self._pick(headers, {"model": call.model})
            await fake_gemini.answer(b, call, headers, body, send, self.google)
        else:
            error = {"message": f"no route for {method} {path}", "type": "not_found"}
            await _json(send, 404, {"error": error})

    async def _chat(
        self, b: Behaviour, body: Mapping[str, Any], send: Send, *, anthropic: bool
    ) -> None:
        if b.hang:
            await trio.sleep_forever()
        if b.status >= 400:
            await self._error(b, send, anthropic=anthropic)
            return
        stream = bool(body.get("stream"))
        if b.body is not None and not stream:
            await _json(send, b.status, b.body, b.headers)
            return
        if b.events and stream:
            await _recorded_stream(send, b, anthropic=anthropic)
            return
        answer = self._plan(b, body, send, anthropic=anthropic)
        if anthropic:
            await (_anthropic_stream(answer) if stream else _anthropic_json(answer))
        else:
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            await (_openai_stream(answer, usage) if stream else _openai_json(answer))

    async def _bedrock(
        self,
        path: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any],
        send: Send,
        received: tuple[Scope, bytes] | None,
    ) -> None:
        scope, raw = received or ({"raw_path": path.encode(), "method": "POST"}, b"")
        refused = fake_bedrock.refusal(headers, scope, raw, check_sigv4=self.check_sigv4)
        if refused is not None:
            await fake_bedrock.error(send, 403, *refused)
            return
        model = fake_bedrock.invoke_model(path)
        if model is not None:
            await fake_bedrock.invoke(self._pick(headers, {"model": model}), body, send)
            return
        planning = fake_bedrock.planning_body(path, body)
        b = self._pick(headers, planning)
        answer = self._plan(b, planning, send, anthropic=True)
        await fake_bedrock.converse(answer, stream=path.endswith("/converse-stream"))

    async def _responses(self, b: Behaviour, body: Mapping[str, Any], send: Send) -> None:
        if b.hang:
            await trio.sleep_forever()
        if b.status >= 400:
            await self._error(b, send, anthropic=False)
            return
        stream = body.get("stream") is True
        if b.body is not None and not stream:
            await _json(send, b.status, b.body, b.headers)
        elif b.events and stream:
            # Named events and no [DONE] sentinel, as Anthropic's stream has them.
            await _recorded_stream(send, b, anthropic=True)
        else:
            limit = body.get("max_output_tokens")
            chat = {"max_tokens": limit, "model": body.get("model", "fake-model")}
            answer = self._plan(b, chat, send, anthropic=False)
            answer.input_tokens = _input_words(body)
            await (_responses_stream(answer) if stream else _responses_json(answer))

    async def _embeddings(self, b: Behaviour, body: Mapping[str, Any], send: Send) -> None:
        if b.hang:
            await trio.sleep_forever()
        if b.status >= 400:
            await self._error(b, send, anthropic=False)
        elif b.body is not None:
            await _json(send, b.status, b.body, b.headers)
        else:
            await _json(send, 200, _embeddings(body), b.headers)

    def _plan(
        self, b: Behaviour, body: Mapping[str, Any], send: Send, *, anthropic: bool
    ) -> _Answer:
        text = (
            b.text
            if b.text is not None
            else " ".join(itertools.islice(itertools.cycle(_LOREM), b.tokens))
        )
        tokens = split_tokens(text)
        finish = b.finish_reason or ("end_turn" if anthropic else "stop")
        if b.tool_calls:
            finish = b.finish_reason or ("tool_use" if anthropic else "tool_calls")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int) and len(tokens) > limit:
            tokens, finish = tokens[:limit], ("max_tokens" if anthropic else "length")
        model = str(body.get("model", "fake-model"))
        return _Answer(b, send, model, tokens, finish, _words(body))

    async def _error(self, b: Behaviour, send: Send, *, anthropic: bool) -> None:
        headers = dict(b.headers)
        if b.retry_after is not None:
            headers["retry-after"] = str(b.retry_after)
        if b.body is not None:  # a recorded error body, sent as it is
            await _json(send, b.status, b.body, headers)
            return
        if anthropic:
            kind = b.error_type or _ANTHROPIC_ERRORS.get(b.status, "api_error")
            payload: Any = {"type": "error", "error": {"type": kind, "message": b.error_message}}
        else:
            kind = b.error_type or _OPENAI_ERRORS.get(b.status, "server_error")
            error = {"message": b.error_message, "type": kind, "param": None, "code": kind}
            payload = {"error": error}
        await _json(send, b.status, payload, headers)


async def _json(
    send: Send, status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> None:
    data = json.dumps(payload).encode()
    pairs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    pairs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": pairs})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def _recorded_stream(send: Send, b: Behaviour, *, anthropic: bool) -> None:
    pairs = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    pairs += [(k.encode(), v.encode()) for k, v in b.headers.items()]
    await send({"type": "http.response.start", "status": b.status, "headers": pairs})
    frames = [_sse(data, data.get("type") if anthropic else None) for data in b.events]
    if not anthropic:
        frames.append(b"data: [DONE]\n\n")
    await send({"type": "http.response.body", "body": b"".join(frames), "more_body": False})


async def _start_stream(answer: _Answer) -> None:
    pairs = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    pairs += [(k.encode(), v.encode()) for k, v in answer.behaviour.headers.items()]
    await answer.send({"type": "http.response.start", "status": 200, "headers": pairs})


async def _end_stream(answer: _Answer) -> None:
    body = bytes(answer._pending)
    await answer.send({"type": "http.response.body", "body": body, "more_body": False})


async def _text_tokens(answer: _Answer, event: Callable[[str], bytes], error: bytes) -> bool:
    """Send the text tokens with their delays and faults; ``True``: the answer was ended."""
    b = answer.behaviour
    await trio.sleep(b.first_token_delay)
    for i, token in enumerate(answer.tokens):
        if await answer.fault(i, error):
            return True
        if i and b.token_delay and not b.drip:
            await trio.sleep(b.token_delay)
        await answer.write(event(token))
    return await answer.fault(len(answer.tokens), error)


def _pieces(arguments: str) -> list[str]:
    size = max(1, math.ceil(len(arguments) / 3))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


# ------------------------------------------------------------------ OpenAI


def _chunk(answer: _Answer, cid: str, delta: Any, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": answer.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _openai_usage(answer: _Answer) -> dict[str, int]:
    out = len(answer.tokens) + len(answer.behaviour.tool_calls)
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": out,
        "total_tokens": answer.input_tokens + out,
    }


async def _openai_stream(answer: _Answer, include_usage: bool) -> None:
    cid = "chatcmpl-fake"
    error = _sse({"error": {"message": "mid-stream failure", "type": "server_error", "code": None}})

    def chunk(delta: Any, finish: str | None = None) -> dict[str, Any]:
        out = _chunk(answer, cid, delta, finish)
        if include_usage:
            out["usage"] = None
        return out

    await _start_stream(answer)
    await answer.write(_sse(chunk({"role": "assistant", "content": ""})))
    if await _text_tokens(answer, lambda t: _sse(chunk({"content": t})), error):
        await _end_stream(answer)
        return
    calls = answer.behaviour.tool_calls
    for i, (name, _) in enumerate(calls):
        start = {
            "index": i,
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        await answer.write(_sse(chunk({"tool_calls": [start]})))
    split = [_pieces(arguments) for _, arguments in calls]
    for round_ in itertools.zip_longest(*split):  # interleaved: calls stream in parallel
        for i, piece in enumerate(round_):
            if piece:
                delta = {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
                await answer.write(_sse(chunk(delta)))
    await answer.write(_sse(chunk({}, answer.finish)))
    if include_usage:
        final = _chunk(answer, cid, {}, None)
        final["choices"], final["usage"] = [], _openai_usage(answer)
        await answer.write(_sse(final))
    if not answer.behaviour.omit_done:
        await answer.write(b"data: [DONE]\n\n")
    await _end_stream(answer)


async def _openai_json(answer: _Answer) -> None:
    b = answer.behaviour
    await _nonstream_faults(answer)
    calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
        for i, (n, a) in enumerate(b.tool_calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(answer.tokens) or None}
    if calls:
        message["tool_calls"] = calls
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": answer.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish}
        ],
        "usage": _openai_usage(answer),
    }
    await _json(answer.send, 200, payload, b.headers)


async def _nonstream_faults(answer: _Answer) -> None:
    b = answer.behaviour
    await trio.sleep(b.first_token_delay + b.token_delay * max(0, len(answer.tokens) - 1))
    if b.stall_after is not None:
        await trio.sleep_forever()
    if b.disconnect_after is not None:
        raise _Disconnect
    if b.malformed_after is not None:
        await answer.send({"type": "http.response.start", "status": 200, "headers": []})
        await answer.send(
            {"type": "http.response.body", "body": b'{"choices": [', "more_body": False}
        )
        raise _Disconnect


def _embeddings(body: Mapping[str, Any]) -> dict[str, Any]:
    """One vector per input from the input's SHA-256 (``dimensions`` values, default 8, at
    most 32), as floats or, with ``encoding_format: "base64"``, as OpenAI encodes them."""
    inputs = body.get("input")
    items = [inputs] if isinstance(inputs, str) else list(inputs or ())
    if items and all(isinstance(t, int) for t in items):
        items = [items]  # one token array
    dimensions = body.get("dimensions")
    size = dimensions if isinstance(dimensions, int) and 1 <= dimensions <= 32 else 8
    data = []
    for i, text in enumerate(items):
        digest = hashlib.sha256(str(text).encode()).digest()
        vector: Any = [b / 255 for b in digest[:size]]
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
    return {"object": "list", "data": data, "model": body.get("model"), "usage": usage}


# ------------------------------------------------------------------ OpenAI Responses


def _input_words(body: Mapping[str, Any]) -> int:
    value = body.get("input")
    items = [{"content": value}] if isinstance(value, str) else list(value or ())
    words = len(str(body.get("instructions") or "").split())
    for item in items:
        content = item.get("content") if isinstance(item, Mapping) else None
        if isinstance(content, list):
            content = " ".join(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
        words += len(str(content or "").split())
    return words


def _response_items(answer: _Answer) -> list[dict[str, Any]]:
    text = "".join(answer.tokens)
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    items: list[dict[str, Any]] = []
    if text or not answer.behaviour.tool_calls:
        items.append(
            {
                "id": "msg_fake",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        )
    for i, (name, arguments) in enumerate(answer.behaviour.tool_calls):
        call = {"id": f"fc_{i}", "type": "function_call", "status": "completed"}
        items.append(call | {"call_id": f"call_{i}", "name": name, "arguments": arguments})
    return items


def _response(answer: _Answer, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``response`` object in ``status``, as the Responses API reference shows one."""
    out = len(answer.tokens) + len(answer.behaviour.tool_calls)
    usage = {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + out,
    }
    incomplete = status == "completed" and answer.finish == "length"
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": 0,
        "status": "incomplete" if incomplete else status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "model": answer.model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage if status == "completed" else None,
    }


async def _responses_json(answer: _Answer) -> None:
    await _nonstream_faults(answer)
    payload = _response(answer, "completed", _response_items(answer))
    await _json(answer.send, 200, payload, answer.behaviour.headers)


@attrs.define(eq=False)
class _Numbered:
    """Writes named ``response.*`` events, numbering them."""

    answer: _Answer
    sequence: int = 0

    def frame(self, kind: str, **members: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **members}
        self.sequence += 1
        return _sse(event, kind)

    async def write(self, kind: str, **members: Any) -> None:
        await self.answer.write(self.frame(kind, **members))


async def _responses_stream(answer: _Answer) -> None:
    out = _Numbered(answer)
    await _start_stream(answer)
    for kind in ("response.created", "response.in_progress"):
        await out.write(kind, response=_response(answer, "in_progress", []))
    items = _response_items(answer)
    message = items[0] if items[0]["type"] == "message" else None
    if message is not None:
        await out.write(
            "response.output_item.added", output_index=0, item=message | {"content": []}
        )
        where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        await out.write(
            "response.content_part.added", **where, part=message["content"][0] | {"text": ""}
        )

        def delta(token: str) -> bytes:
            return out.frame("response.output_text.delta", **where, delta=token, logprobs=[])

        error = {"code": "server_error", "message": "mid-stream failure", "param": None}
        if await _text_tokens(answer, delta, b""):
            await out.write("error", **error)
            await _end_stream(answer)
            return
        text = message["content"][0]["text"]
        await out.write("response.output_text.done", **where, text=text, logprobs=[])
        await out.write("response.content_part.done", **where, part=message["content"][0])
        await out.write("response.output_item.done", output_index=0, item=message)
    for index, item in enumerate(items):
        if item["type"] != "function_call":
            continue
        where = {"item_id": item["id"], "output_index": index}
        await out.write(
            "response.output_item.added", output_index=index, item=item | {"arguments": ""}
        )
        for piece in _pieces(item["arguments"]):
            await out.write("response.function_call_arguments.delta", **where, delta=piece)
        await out.write(
            "response.function_call_arguments.done", **where, arguments=item["arguments"]
        )
        await out.write("response.output_item.done", output_index=index, item=item)
    final = _response(answer, "completed", items)
    if not answer.behaviour.omit_done:
        await out.write(f"response.{final['status']}", response=final)
    await _end_stream(answer)


# ------------------------------------------------------------------ Anthropic


async def _anthropic_stream(answer: _Answer) -> None:
    b = answer.behaviour
    error = _sse(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"
    )
    usage = {"input_tokens": answer.input_tokens, "output_tokens": 1}
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    await _start_stream(answer)
    await answer.write(_sse({"type": "message_start", "message": message}, "message_start"))
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    await answer.write(_sse(block, "content_block_start"))
    await answer.write(_sse({"type": "ping"}, "ping"))

    def text_event(token: str) -> bytes:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": token},
        }
        return _sse(delta, "content_block_delta")

    if await _text_tokens(answer, text_event, error):
        await _end_stream(answer)
        return
    await answer.write(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    await _anthropic_tools(answer)
    out = len(answer.tokens) + len(b.tool_calls)
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": answer.finish, "stop_sequence": None},
        "usage": {"output_tokens": out},
    }
    await answer.write(_sse(delta, "message_delta"))
    if not b.omit_done:
        await answer.write(_sse({"type": "message_stop"}, "message_stop"))
    await _end_stream(answer)


async def _anthropic_tools(answer: _Answer) -> None:
    # Anthropic streams content blocks one after another (never interleaved).
    for i, (name, arguments) in enumerate(answer.behaviour.tool_calls, start=1):
        block = {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}}
        start = {"type": "content_block_start", "index": i, "content_block": block}
        await answer.write(_sse(start, "content_block_start"))
        for piece in _pieces(arguments):
            delta = {"type": "input_json_delta", "partial_json": piece}
            event = {"type": "content_block_delta", "index": i, "delta": delta}
            await answer.write(_sse(event, "content_block_delta"))
        await answer.write(_sse({"type": "content_block_stop", "index": i}, "content_block_stop"))


async def _anthropic_json(answer: _Answer) -> None:
    b = answer.behaviour
    await _nonstream_faults(answer)
    content: list[dict[str, Any]] = []
    if answer.tokens:
        content.append({"type": "text", "text": "".join(answer.tokens)})
    for i, (name, arguments) in enumerate(b.tool_calls, start=1):
        content.append(
            {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": json.loads(arguments)}
        )
    payload = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": answer.finish,
        "stop_sequence": None,
        "usage": {
            "input_tokens": answer.input_tokens,
            "output_tokens": len(answer.tokens) + len(b.tool_calls),
        },
    }
    await _json(answer.send, 200, payload, b.headers)


@asynccontextmanager
async def open_fake_provider(
    default: Behaviour | None = None,
    *,
    models: tuple[str, ...] = ("fake-model",),
    record: bool = True,
    faults: FaultMix | None = None,
    port: int = 0,
    openai_root: str = "/v1",
    capacity: int | None = None,
    overflow: str = "queue",
    check_sigv4: bool = True,
) -> AsyncIterator[FakeProvider]:
    """Start a fake provider on a free loopback port; stop it on exit.

    Args:
        default: the behaviour when nothing more specific applies.
        models: the model ids ``/v1/models`` lists.
        record: keep every request in :attr:`FakeProvider.requests`.
        faults: a seeded share of requests that fail (:class:`FaultMix`).
        port: the loopback port to listen on (0: a free one).
        openai_root: the path the OpenAI-compatible API is served under (see
            :class:`FakeProvider`).
        capacity: model calls answered at once (None: no limit; see :class:`FakeProvider`).
        overflow: ``"queue"``, ``"429"`` or ``"503"``: what a call beyond capacity gets.
        check_sigv4: re-sign SigV4 Bedrock requests to check them (see
            :class:`FakeProvider`).

    Returns:
        An async context manager giving the running :class:`FakeProvider`.
    """
    fake = FakeProvider(
        default or Behaviour(),
        models,
        record,
        faults,
        port,
        openai_root,
        capacity,
        overflow,
        check_sigv4,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()


async def _serve_until_stdin_closes(
    default: Behaviour,
    faults: FaultMix | None = None,
    vertex_key_dir: str | None = None,
    check_sigv4: bool = True,
) -> None:
    # Benchmarks send it tens of thousands of requests: a record of each would only grow.
    fake_provider = open_fake_provider(
        default, record=False, faults=faults, check_sigv4=check_sigv4
    )
    async with fake_provider as fake:
        if vertex_key_dir is not None:  # a key this process trusts, written before the URL
            fake_gemini.service_account_file(fake.google, vertex_key_dir, fake.base_url + "/token")
        print(fake.base_url, flush=True)
        # Serve until the parent closes our stdin (or kills us).
        await trio.to_thread.run_sync(sys.stdin.read)
        # The last line: what it saw, for the benchmark that started it.
        stats = fake.statistics()
        print(json.dumps({"requests": stats.requests, "faults": dict(stats.faults)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run a fake provider in its own process (for benchmarks): prints its base URL on the
    first line of stdout, serves until stdin closes.

    Once stdin closes it prints a last line of JSON: the requests it saw and the faults it
    injected by kind.

    Args:
        argv: ``[--tokens N] [--token-delay SECONDS] [--fault-rate R] [--fault-seed S]
            [--fault-kinds K,K…] [--fault-retry-after SECONDS] [--vertex-key-dir DIR]
            [--no-sigv4-check]`` (``--vertex-key-dir``: write a service-account key file
            the fake trusts, ``DIR/service-account.json``, for a Vertex AI provider in
            another process; ``--no-sigv4-check``: see :class:`FakeProvider`'s
            ``check_sigv4``).
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--fault-kinds", default=",".join(FAULT_KINDS))
    parser.add_argument("--fault-retry-after", type=float, default=1.0)
    parser.add_argument("--vertex-key-dir", default=None)
    parser.add_argument("--no-sigv4-check", dest="check_sigv4", action="store_false")
    args = parser.parse_args(argv)
    faults = None
    if args.fault_rate > 0:
        kinds = tuple(args.fault_kinds.split(","))
        faults = FaultMix(args.fault_rate, kinds, args.fault_seed, args.fault_retry_after)
    default = Behaviour(tokens=args.tokens, token_delay=args.token_delay)
    trio.run(_serve_until_stdin_closes, default, faults, args.vertex_key_dir, args.check_sigv4)


# ----------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fake provider's command-line flags (``trio-orchestrator fake-provider``)."""
    answer = parser.add_argument_group("the answer")
    answer.add_argument("--text", help="the answer's text (default: --tokens lorem-ipsum words)")
    answer.add_argument("--tokens", type=int, default=8, help="words when no --text (8)")
    answer.add_argument("--token-delay", type=float, default=0.0, metavar="SECONDS")
    answer.add_argument("--first-token-delay", type=float, default=0.0, metavar="SECONDS")
    answer.add_argument(
        "--tool-call",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="answer with a call of tool NAME with these JSON arguments (repeatable)",
    )
    answer.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="a model /v1/models lists (repeatable; default fake-model)",
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument(
        "--faults",
        default="",
        metavar="KIND=SHARE,...",
        help=f"the share of requests failing each way, kinds {', '.join(FAULT_KINDS)} "
        "(for example 500=0.05,429=0.05,reset=0.02,stall=0.01)",
    )
    faults.add_argument("--seed", type=int, default=0, help="the faults' seed (0)")
    faults.add_argument(
        "--retry-after", type=float, default=1.0, metavar="SECONDS", help="a 429's (1)"
    )
    parser.add_argument("--port", type=int, default=0, help="loopback port (0: any free one)")


def _tool_call(text: str) -> tuple[str, str]:
    name, equals, arguments = text.partition("=")
    try:
        parsed = json.loads(arguments) if equals else None
    except ValueError:
        parsed = None
    if not name or not isinstance(parsed, dict):
        raise ValueError(f"--tool-call {text!r}: write NAME=JSON, the JSON an object")
    return name, arguments


def from_arguments(args: argparse.Namespace) -> tuple[Behaviour, FaultMix | None]:
    """The default behaviour and the fault mix the flags describe.

    Raises:
        ValueError: a flag's value is not usable (the message says which).
    """
    calls = tuple(_tool_call(text) for text in args.tool_call)
    behaviour = Behaviour(
        text=args.text,
        tokens=args.tokens,
        token_delay=args.token_delay,
        first_token_delay=args.first_token_delay,
        tool_calls=calls,
    )
    mix = FaultMix.parse(args.faults, seed=args.seed, retry_after=args.retry_after)
    return behaviour, mix if mix.rate > 0 else None


async def serve_until_signal(
    default: Behaviour, faults: FaultMix | None, models: tuple[str, ...], port: int
) -> None:
    """Serve until SIGINT or SIGTERM, printing where at the start and what it did at the end."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_fake_provider(
            default, models=models, record=False, faults=faults, port=port
        ) as fake:
            print(f"fake provider: serving on {fake.base_url} (Ctrl+C to stop)")
            print(f"  OpenAI-compatible clients: base_url = {fake.openai_base_url}")
            print(f"  Anthropic clients:         base_url = {fake.base_url}")
            print(f"  models: {', '.join(models)}", flush=True)
            async for _ in signals:
                break
            stats = fake.statistics()
    print(f"fake provider: {stats.requests} requests, faults {dict(stats.faults)}", flush=True)


def tool(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m trio_orchestrator.testing.fake_provider``: serve a fake provider on a
    loopback port until Ctrl+C; return the exit status."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A fake LLM provider speaking the OpenAI and Anthropic wire formats, "
        "with a seeded fault mix, on a loopback port.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_arguments(args)


def run_arguments(args: argparse.Namespace) -> int:
    """Serve as the flags ``add_arguments`` added say; return the exit status."""
    try:
        default, faults = from_arguments(args)
    except ValueError as exc:
        print(f"fake provider: {exc}", file=sys.stderr)
        return 2
    models = tuple(args.model or ("fake-model",))
    try:
        trio.run(serve_until_signal, default, faults, models, args.port)
    except BaseExceptionGroup as group:  # the server's nursery wraps a failed bind
        cause: BaseException | None = group.subgroup(OSError)
        if cause is None:
            raise
        while isinstance(cause, BaseExceptionGroup):  # nurseries nest: find the error itself
            cause = cause.exceptions[0]
        print(f"fake provider: cannot listen on port {args.port}: {cause}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(tool(prog="python -m trio_orchestrator.testing.fake_provider"))
