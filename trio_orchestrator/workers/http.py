"""HTTP plumbing shared by the provider workers: timeouts, errors, keys, streaming.

Every HTTP call goes through :class:`HTTPProvider`, which

- applies four timeouts as Trio cancel scopes: *connect* (to open the connection, given to
  the transport), *first token* (from sending the request to the first content event),
  *idle* (the longest gap between chunks once content has begun: a stalled stream is cut
  here) and *total*;
- maps HTTP statuses, error bodies and transport exceptions onto
  :mod:`trio_orchestrator.errors`, most specific first, ``raise … from exc``;
- takes keys from a :class:`~trio_orchestrator.workers.keys.KeyPool`, resting a key that got
  a 429 and disabling one that got a 401, and tries the next key while nothing was emitted;
- closes the HTTP stream at once when the request is cancelled (deadline, caller gone), so
  nobody pays for tokens nobody reads.

It uses only the API that ``httpx`` and its fork ``httpx2`` share, so either client can be
injected; transport exceptions are recognised by the module they come from. A call goes
straight to the transport the client picks for its URL unless the client has event hooks,
auth or redirects to follow (then through ``AsyncClient.send``; see ``_direct_transport``).
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import attrs
import httpx
import orjson
import trio

from ..config.secret import Secret
from ..errors import (
    AuthenticationError,
    BadRequest,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    ModelNotFound,
    Overloaded,
    PermissionDenied,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from ..observability.spans import inject_headers
from ..types import RequestTiming
from ._sse import ServerSentEvent, SSEDecoder
from .config import ProviderConfig, Timeouts
from .keys import KeyPool
from .transport import pool_limits

__all__ = [
    "ErrorMaker",
    "HTTPProvider",
    "StreamDecoder",
    "StreamParser",
    "Timeouts",
    "error_from_body",
    "error_from_response",
    "parse_retry_after",
    "transport_error",
]

T = TypeVar("T")

#: The most of an error body read (and quoted); error bodies are small.
MAX_ERROR_BODY = 64 * 1024

_CONTEXT_PATTERNS = re.compile(
    r"context[ _]length|context window|maximum context|prompt is too long|"
    r"exceed(s|ed)? (the )?context|too many tokens|input length and `?max_tokens`? exceed",
    re.IGNORECASE,
)
_KEYISH = re.compile(r"\b(sk|key)-[A-Za-z0-9_\-*]{6,}")


class StreamDecoder(Protocol):
    """Turns a streamed body's bytes into events, incrementally (see :class:`SSEDecoder`)."""

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Take the next chunk; return the events it completed."""

    def close(self) -> list[ServerSentEvent]:
        """The body ended: return what is left, or raise if it was cut mid-event."""


class ErrorMaker(Protocol):
    """Makes the typed error for an HTTP error answer (see :func:`error_from_response`)."""

    def __call__(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        provider: str,
        secrets: Sequence[Secret] = (),
    ) -> ProviderError:
        """The error for ``status``, ``headers`` and ``body``."""


class StreamParser(Protocol):
    """Turns one provider's SSE events into stream events (see the workers)."""

    @property
    def started(self) -> bool:
        """Whether content (the first token) has arrived."""

    @property
    def finished(self) -> bool:
        """Whether the answer is complete, so reading can stop."""

    async def event(self, event: ServerSentEvent) -> None:
        """Take one SSE event; emit what it carries or raise a ProviderError."""

    async def end(self) -> None:
        """The stream ended: emit ``Done``, or raise if the answer was cut short."""


# ------------------------------------------------------------------ errors


def redact(text: str, secrets: Sequence[Secret] = ()) -> str:
    """Remove every revealed key and anything key-shaped from ``text``."""
    for secret in secrets:
        value = secret.reveal()
        if value:
            text = text.replace(value, "***")
    return _KEYISH.sub("***", text)


def _duration(text: str) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _seconds_until(text: str, now: datetime) -> float | None:
    """An HTTP-date or an RFC 3339 timestamp, as seconds from ``now`` (never negative)."""
    try:
        # RFC 3339 lets "T" and "Z" be lower-case; fromisoformat (3.11+) reads only "Z".
        when = datetime.fromisoformat(text.strip().upper())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _retry_value(text: str, now: datetime) -> float | None:
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        return _duration(text) or _seconds_until(text, now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the provider asked us to wait, from its headers, or ``None``.

    In order: ``retry-after-ms``, ``retry-after`` (seconds or an HTTP-date), then the reset
    headers (``x-ratelimit-reset-*``, ``anthropic-ratelimit-*-reset``), preferring those whose
    matching ``remaining`` header is 0 and taking the latest of them.

    Args:
        headers: the response headers (case-insensitive mapping, as httpx gives).
        now: the wall-clock time to measure dates from (UTC now by default).
    """
    now = now or datetime.now(UTC)
    lower = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    if "retry-after" in lower and (value := _retry_value(lower["retry-after"], now)) is not None:
        return value
    resets: dict[str, float] = {}
    for name, raw in lower.items():
        if name.startswith("x-ratelimit-reset-") or (
            name.startswith("anthropic-ratelimit-") and name.endswith("-reset")
        ):
            value = _retry_value(raw, now)
            if value is not None:
                resets[name] = value
    exhausted = [v for k, v in resets.items() if lower.get(_remaining_header(k)) == "0"]
    chosen = exhausted or list(resets.values())
    return max(chosen) if chosen else None


def _remaining_header(reset: str) -> str:
    if reset.startswith("x-ratelimit-reset-"):
        return "x-ratelimit-remaining-" + reset.removeprefix("x-ratelimit-reset-")
    return reset.removesuffix("-reset") + "-remaining"


def _error_fields(body: Any) -> tuple[str, str, str]:
    """``(type, code, message)`` from an OpenAI or Anthropic error object."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, str):
        return "", "", error
    if not isinstance(error, dict):
        return "", "", ""
    message = str(error.get("message") or error.get("detail") or "")
    if filtered := _filtered_categories(error):
        message = f"{message} (filtered: {filtered})"
    return str(error.get("type") or ""), str(error.get("code") or ""), message


def _filtered_categories(error: Mapping[str, Any]) -> str:
    """Azure OpenAI's content filter verdict (``innererror.content_filter_result``) as the
    categories it filtered, with their severity: ``"violence (medium)"``."""
    inner = error.get("innererror")
    verdict = inner.get("content_filter_result") if isinstance(inner, Mapping) else None
    if not isinstance(verdict, Mapping):
        return ""
    return ", ".join(
        f"{name} ({result.get('severity') or 'detected'})"
        for name, result in verdict.items()
        if isinstance(result, Mapping) and result.get("filtered")
    )


_BY_TYPE: Mapping[str, type[ProviderError]] = {
    # Anthropic's error types, which also arrive as ``event: error`` mid-stream.
    "invalid_request_error": BadRequest,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDenied,
    "not_found_error": ModelNotFound,
    "request_too_large": BadRequest,
    "rate_limit_error": RateLimited,
    "api_error": ServerError,
    "overloaded_error": Overloaded,
    # OpenAI's.
    "server_error": ServerError,
    "rate_limit_exceeded": RateLimited,
    "insufficient_quota": RateLimited,
    "invalid_api_key": AuthenticationError,
    "model_not_found": ModelNotFound,
    "content_filter": ContentFiltered,
    "content_policy_violation": ContentFiltered,
    # llama.cpp server's prompt-over-the-context-size error.
    "exceed_context_size_error": ContextLengthExceeded,
}

# Types that say less than the status they come with: Ollama's OpenAI-compatible API gives
# ``api_error`` to every status but 400 and 404 (its 401, 429 and 503 included).
_GENERIC_TYPES = frozenset(["api_error"])

_BY_STATUS: Mapping[int, type[ProviderError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: ModelNotFound,
    408: ProviderTimeout,
    413: BadRequest,
    422: BadRequest,
    429: RateLimited,
    503: Overloaded,
    529: Overloaded,
}

_ADVICE: Mapping[type[ProviderError], str] = {
    RateLimited: "retry after the wait it asked for, or add API keys",
    Overloaded: "retry later or route to another provider",
    ServerError: "retry; this is the provider's fault",
    ProviderTimeout: "retry, or raise the timeout",
    AuthenticationError: "check the API key in the configuration",
    PermissionDenied: "check that the key may use this model",
    ModelNotFound: "check the model name and the provider's base_url",
    ContentFiltered: "change the prompt; retrying will not help",
    ContextLengthExceeded: "shorten the prompt or lower max_tokens",
    BadRequest: "fix the request; retrying will not help",
}


def _classify(status: int | None, kind: str, code: str, message: str) -> type[ProviderError]:
    if _CONTEXT_PATTERNS.search(message) or "context_length" in code:
        return ContextLengthExceeded
    for key in (code, kind):
        if key in _BY_TYPE and not (key in _GENERIC_TYPES and status in _BY_STATUS):
            return _BY_TYPE[key]
    if status is None:
        return ServerError
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else BadRequest


def error_from_body(
    body: Any,
    *,
    provider: str,
    status: int | None = None,
    retry_after: float | None = None,
    secrets: Sequence[Secret] = (),
) -> ProviderError:
    """The typed error for a provider's error object (an HTTP error body or one mid-stream).

    Args:
        body: the parsed JSON (OpenAI's ``{"error": {...}}`` or Anthropic's
            ``{"type": "error", "error": {...}}``), or raw text.
        provider: the provider's name.
        status: the HTTP status, when the error came with one.
        retry_after: seconds the provider asked us to wait.
        secrets: keys to scrub from the provider's message.
    """
    kind, code, message = _error_fields(body)
    cls = _classify(status, kind, code, message)
    if status is not None and status >= 500 and cls is BadRequest:
        cls = ServerError
    said = redact(message, secrets)[:500] or "no message"
    where = f"HTTP {status}" if status is not None else "an error in the stream"
    text = f"{provider or 'the provider'} answered {where} ({kind or code or 'error'}): {said}"
    return cls(
        f"{text}; {_ADVICE.get(cls, 'see the provider message')}",
        provider=provider,
        status=status,
        retry_after=retry_after,
    )


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str,
    secrets: Sequence[Secret] = (),
) -> ProviderError:
    """The typed error for an HTTP error answer (status ≥ 400)."""
    try:
        parsed: Any = orjson.loads(body)
    except ValueError:
        parsed = body[:500].decode("utf-8", "replace")
    retry_after = parse_retry_after(headers) if status in (429, 503, 529) else None
    return error_from_body(
        parsed, provider=provider, status=status, retry_after=retry_after, secrets=secrets
    )


def _from_http_library(exc: BaseException) -> bool:
    return any(
        cls.__module__.split(".")[0] in ("httpx", "httpcore", "httpx2", "httpcore2", "h11", "h2")
        for cls in type(exc).__mro__[:-2]
    )


def transport_error(exc: Exception, provider: str) -> ProviderError:
    """The typed error for an exception raised by the HTTP client (httpx or httpx2)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    name = provider or "the provider"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if "TimeoutException" in names:
        phase = "connecting to" if "ConnectTimeout" in names else "talking to"
        return ProviderTimeout(
            f"timed out {phase} {name} ({detail}); retry, or raise the connect timeout",
            provider=provider,
        )
    if "DecodingError" in names:
        return MalformedResponse(
            f"{name} sent a body that could not be decoded ({detail}); retrying may help",
            provider=provider,
        )
    return ProviderConnectionError(
        f"the connection to {name} failed ({detail}); check base_url and that the server "
        "is up, then retry",
        provider=provider,
    )


# ------------------------------------------------------------------ calls


class wire_format_guard:
    """Turn the errors of reading an unexpected JSON shape into :class:`MalformedResponse`.

    Parsers walk the provider's JSON assuming its documented shape; a provider that sends
    another shape must fail typed, never with a stray ``KeyError``. (A class, not a
    ``@contextmanager``: it is entered once per chunk of every stream.)
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is not None and isinstance(
            exc, (KeyError, IndexError, TypeError, ValueError, AttributeError)
        ):
            raise MalformedResponse(
                f"{self.provider or 'the provider'} sent an answer of an unexpected shape "
                f"({type(exc).__name__}: {exc}); retrying may help",
                provider=self.provider,
            ) from exc


@attrs.define(eq=False, repr=False)
class HTTPProvider:
    """One provider's HTTP calls: the shared client, base URL, keys and timeouts.

    Args:
        client: the provider's ``httpx.AsyncClient`` (or an ``httpx2`` one), shared by all calls.
        base_url: prepended to every path.
        name: the provider's name, for errors and statistics.
        keys: the key pool, or ``None`` for servers that need no key.
        timeouts: the four timeouts.
        auth: the headers that carry a key.
        headers: headers sent on every call.
        sign: called with every request as built, to add headers computed from its exact
            bytes (AWS SigV4); None for providers whose key is a header.
        decoder: makes the stream decoder for a provider name: bytes in, events out
            (:class:`SSEDecoder` unless the provider frames its stream another way).
        error: the typed error for an HTTP error answer, for providers whose errors are
            not OpenAI's or Anthropic's shape (:func:`error_from_response` by default).
    """

    client: httpx.AsyncClient
    base_url: str
    name: str
    keys: KeyPool | None
    timeouts: Timeouts
    auth: Callable[[Secret], dict[str, str]]
    headers: Mapping[str, str] = attrs.field(factory=dict)
    sign: Callable[[httpx.Request], None] | None = None
    decoder: Callable[[str], StreamDecoder] = SSEDecoder
    error: ErrorMaker | None = None
    _urls: dict[str, httpx.URL] = attrs.field(factory=dict, init=False)

    def __repr__(self) -> str:
        return f"HTTPProvider(name={self.name!r}, base_url={self.base_url!r})"

    @property
    def secrets(self) -> list[Secret]:
        """The pool's keys (to scrub from error text)."""
        return [] if self.keys is None else self.keys.secrets

    async def get_json(self, path: str) -> Any:
        """GET ``path`` and return its JSON body.

        Raises:
            ProviderError: a typed failure.
        """
        answer, _ = await self._with_keys(lambda h: self._json_once("GET", path, None, h), None)
        return answer

    async def post_json(
        self,
        path: str,
        body: Mapping[str, Any],
        timing: RequestTiming | None = None,
        *,
        model: str | None = None,
        first_token_bounds_answer: bool = True,
    ) -> Any:
        """POST ``body`` to ``path`` and return the JSON answer (no streaming).

        Args:
            path: the path under the base URL.
            body: the JSON body.
            timing: the request's timing, to which each attempt adds its wait, from
                sending the request to its answer read whole.
            model: the model the call is for, when ``body`` does not name it (Gemini's,
                Vertex AI's and Bedrock's URLs do): a 429 rests the key for that model only.
            first_token_bounds_answer: whether ``timeouts.first_token`` bounds the wait for
                the answer (its first content is all of it), as for a provider configured
                not to stream; ``False`` leaves it to ``timeouts.total``, for a call made
                unstreamed only because its caller takes the answer whole.

        Raises:
            ProviderError: a typed failure.
        """
        answer, _ = await self.post_json_headers(
            path, body, timing, model=model, first_token_bounds_answer=first_token_bounds_answer
        )
        return answer

    async def post_json_headers(
        self,
        path: str,
        body: Mapping[str, Any],
        timing: RequestTiming | None = None,
        *,
        model: str | None = None,
        first_token_bounds_answer: bool = True,
    ) -> tuple[Any, httpx.Headers]:
        """:meth:`post_json`, with the answer's headers (Bedrock's InvokeModel reports
        its token count in one).

        Raises:
            ProviderError: a typed failure.
        """
        return await self._with_keys(
            lambda h: self._json_once("POST", path, body, h, timing, first_token_bounds_answer),
            None,
            model or _model_of(body),
        )

    async def post_stream(
        self,
        path: str,
        body: Mapping[str, Any],
        parser: StreamParser,
        timing: RequestTiming | None = None,
        *,
        model: str | None = None,
    ) -> None:
        """POST ``body`` to ``path`` and feed the answer's SSE events to ``parser``.

        Args:
            path: the path under the base URL.
            body: the JSON body.
            parser: takes the answer's events.
            timing: the request's timing, to which each attempt adds its waits (for its
                answer's headers, then each read of its body) until the service has
                answered: a streamed answer's later reads overlap the client's stream.
            model: as :meth:`post_json`'s.

        Raises:
            ProviderError: a typed failure.
        """
        await self._with_keys(
            lambda h: self._stream_once(path, body, h, parser, timing),
            parser,
            model or _model_of(body),
        )

    async def _with_keys(
        self,
        call: Callable[[Mapping[str, str]], Awaitable[T]],
        parser: StreamParser | None,
        model: str | None = None,
    ) -> T:
        """Make ``call`` with a key from the pool: rest the key on a 429 (for ``model``),
        disable it on a 401, and try another key while nothing was emitted and one may be
        tried now; a 429 that ends the attempts says when a key may next be tried."""
        pool = self.keys
        if pool is None:
            return await call({})
        while True:
            key = pool.acquire(model)
            started = trio.current_time()
            try:
                result = await call(self.auth(key))
            except RateLimited as exc:
                pool.rate_limited(key, exc.retry_after, model)
                if (parser is not None and parser.started) or not pool.can_call(model):
                    # The upstream's own figure when the pool keeps to it; past the cap the
                    # key rests less, and the caller (and the retry layer) waits for that.
                    asked = exc.retry_after
                    if asked is None or asked > pool.max_rest:
                        exc.retry_after = pool.wait(model)
                    raise
            except AuthenticationError:
                pool.rejected(key)
                if (parser is not None and parser.started) or not pool.can_call(model):
                    raise
            else:
                pool.succeeded(key, model, started)
                return result

    def reconfigure(self, provider: ProviderConfig | None, /) -> list[str]:
        """Apply this provider's reloaded ``api_keys`` and key settings (``key_rest``,
        ``max_key_rest``, ``key_probe_interval``, ``rejected_key_cooldown``) to its key pool.

        Args:
            provider: this provider's entry in the new ``[[providers]]``, or None when it
                is no longer there.

        Returns:
            Refusals: the provider was removed or renamed, its base URL or timeouts changed,
            or it gained keys where it had none — a restart applies those.
        """
        if provider is None:
            return [f"providers: provider {self.name!r} was removed or renamed; restart to apply"]
        refused = []
        if (
            provider.base_url or self.base_url
        ) != self.base_url or provider.timeouts != self.timeouts:
            refused.append(f"providers.{self.name}: base_url and timeouts change only on a restart")
        limits = pool_limits(self.client)
        if limits is not None and limits != (provider.max_connections, provider.pool_size):
            refused.append(
                f"providers.{self.name}: max_connections and pool_size change only on a restart"
            )
        keys = provider.keys()
        if self.keys is None:
            if keys:
                refused.append(
                    f"providers.{self.name}.api_keys: a provider without keys needs a restart"
                )
        else:
            if keys:
                self.keys.replace_keys(keys)
            self.keys.configure(
                default_rest=provider.key_rest,
                max_rest=provider.max_key_rest,
                probe_interval=provider.key_probe_interval,
                rejected_cooldown=provider.rejected_key_cooldown,
            )
            self.keys.models = provider.models
        return refused

    def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None, auth: Mapping[str, str]
    ) -> httpx.Request:
        t = self.timeouts
        connect = None if math.isinf(t.connect) else t.connect
        # Names lower-cased, so a fixed header and the key's or the body's header of the
        # same name are one header, not two (``headers`` may be a live dict: Vertex AI's).
        headers = {name.lower(): value for name, value in self.headers.items()}
        headers.update(auth)
        if body is not None:
            headers["content-type"] = "application/json"
        inject_headers(headers)  # traceparent of the current attempt; nothing when tracing is off
        url = self._urls.get(path)
        if url is None:
            # Parsed once per path, with the client's own URL class (httpx's or httpx2's).
            url = self._urls[path] = type(self.client.base_url)(self.base_url.rstrip("/") + path)
        request = self.client.build_request(
            method,
            url,
            content=None if body is None else self._encode(body),
            headers=headers,
            # The transport applies the connect (and write) limit; Trio scopes do the rest.
            extensions={
                "timeout": {"connect": connect, "read": None, "write": connect, "pool": None}
            },
        )
        if self.sign is not None:
            self.sign(request)  # last: it signs the headers and bytes that go out
        return request

    def _encode(self, body: Mapping[str, Any]) -> bytes:
        """The body as JSON; what JSON cannot carry is the caller's fault, not the upstream's.

        The service refuses such bodies at its door; a library caller's request (a lone
        surrogate, an integer beyond 64 bits, nesting past orjson's limit) must still not
        crash the worker and count against the provider's breaker.

        Raises:
            BadRequest: the body cannot be encoded (never retried, never trips a breaker).
        """
        try:
            return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError as exc:
            raise BadRequest(
                f"the request cannot be sent to {self.name or 'the provider'} as JSON ({exc}); "
                "remove lone surrogates, integers beyond 64 bits and deep nesting",
                provider=self.name,
            ) from exc

    def _timeout(self, what: str, seconds: float) -> Callable[[], ProviderError]:
        return lambda: ProviderTimeout(
            f"{self.name or 'the provider'} exceeded the {what} timeout ({seconds:g}s); "
            f"retry, or raise timeouts.{what.replace(' ', '_')}",
            provider=self.name,
        )

    async def _json_once(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        auth: Mapping[str, str],
        timing: RequestTiming | None = None,
        first_token_bounds_answer: bool = True,
    ) -> tuple[Any, httpx.Headers]:
        t = self.timeouts
        start = trio.current_time()
        total = start + t.total
        first = start + t.first_token if first_token_bounds_answer else math.inf
        # A whole answer's first content is all of it: both limits bound the same wait, so
        # one scope carries the nearer (entering a scope costs more than comparing two).
        with trio.CancelScope(deadline=min(total, first)) as scope:
            request = self._request(method, path, body, auth)
            if timing is None:
                response = await self._send(request)
                try:
                    content = await self._read(response)
                finally:
                    await _close(response, None)
            else:
                response, content = await self._timed_exchange(request, timing)
        if scope.cancelled_caught:
            if first <= total:
                raise self._timeout("first token", t.first_token)()
            raise self._timeout("total", t.total)()
        try:
            return orjson.loads(content), response.headers
        except ValueError as exc:
            raise MalformedResponse(
                f"{self.name or 'the provider'} answered with a body that is not JSON; "
                "check base_url, or retry",
                provider=self.name,
            ) from exc

    async def _timed_exchange(
        self, request: httpx.Request, timing: RequestTiming
    ) -> tuple[httpx.Response, bytes]:
        """Send ``request`` and read its answer whole, counting that as one wait of
        ``timing`` (giving the connection back to the pool is the gateway's own work)."""
        timing.wait_began(trio.current_time())
        waiting = True
        try:
            response = await self._send(request)
            try:
                content = await self._read(response)
            finally:
                waiting = False
                timing.wait_ended(trio.current_time())
                await _close(response, None)
        finally:
            if waiting:  # the send failed
                timing.wait_ended(trio.current_time())
        return response, content

    async def _stream_once(
        self,
        path: str,
        body: Mapping[str, Any],
        auth: Mapping[str, str],
        parser: StreamParser,
        timing: RequestTiming | None = None,
    ) -> None:
        t = self.timeouts
        start = trio.current_time()
        total, first = start + t.total, start + t.first_token
        # One scope carries all three limits; its deadline is moved rather than nesting a
        # scope per limit (entering a scope costs more than moving a deadline).
        answered = ended = False
        with trio.CancelScope(deadline=min(total, first)) as scope:
            request = self._request("POST", path, body, auth)
            if timing is None:
                response = await self._send(request)
            else:
                response = await _timed(timing, self._send(request))
            chunks = response.aiter_bytes()
            try:
                if response.status_code >= 400:
                    if timing is None:
                        await self._read(response)
                    else:
                        await _timed(timing, self._read(response))
                unread = await self._pump(chunks, parser, scope, total, first, timing)
                answered, ended = True, not unread
                if unread:
                    # Read to the end (a server closes the body right after its last
                    # event): an exhausted response keeps its connection for the next
                    # call. The answer is complete, so a failure or timeout here only
                    # costs the connection.
                    scope.deadline = min(total, trio.current_time() + t.idle)
                    if timing is None or timing.answered:
                        ended = await self._drain(chunks)
                    else:
                        ended = await _timed(timing, self._drain(chunks))
            finally:
                await _close(response, chunks, ended=ended)
        if scope.cancelled_caught and not answered:
            if trio.current_time() >= total:
                raise self._timeout("total", t.total)()
            if parser.started:
                raise self._timeout("idle", t.idle)()
            raise self._timeout("first token", t.first_token)()

    async def _pump(
        self,
        chunks: Any,
        parser: StreamParser,
        scope: trio.CancelScope,
        total: float,
        first: float,
        timing: RequestTiming | None = None,
    ) -> bool:
        """Feed the stream's events to ``parser`` until the answer is complete; each read
        before the service has answered is a wait of ``timing``.

        Returns:
            Whether the body has bytes left after the answer's end.
        """
        decoder = self.decoder(self.name)
        idle = self.timeouts.idle
        chunk: bytes | None = b""
        while not parser.finished and chunk is not None:
            # Each read gets the idle (or, before content, the first-token) limit; while
            # events are emitted only the total applies, so a slow consumer is never
            # mistaken for a stalled provider.
            scope.deadline = min(total, trio.current_time() + idle if parser.started else first)
            if timing is None or timing.answered:
                chunk = await self._next_chunk(chunks)
            else:
                timing.wait_began(trio.current_time())
                try:
                    chunk = await self._next_chunk(chunks)
                finally:
                    timing.wait_ended(trio.current_time())
            scope.deadline = total
            events = decoder.close() if chunk is None else decoder.feed(chunk)
            with wire_format_guard(self.name):
                for event in events:
                    await parser.event(event)
                    if parser.finished:
                        break
        await parser.end()
        return chunk is not None

    async def _drain(self, chunks: Any) -> bool:
        """Read the body to its end; say whether it got there."""
        try:
            while await self._next_chunk(chunks) is not None:
                pass
        except ProviderError:
            return False
        return True

    async def _next_chunk(self, chunks: Any) -> bytes | None:
        try:
            chunk: bytes | None = await anext(chunks, None)
        except Exception as exc:
            if _from_http_library(exc):
                raise transport_error(exc, self.name) from exc
            raise
        return chunk

    async def _send(self, request: httpx.Request) -> httpx.Response:
        client = self.client
        try:
            transport = _direct_transport(client, request.url)
            if transport is None:
                return await client.send(request, stream=True)
            response: httpx.Response = await transport.handle_async_request(request)
            response.request = request
            if "set-cookie" in response.headers:
                client.cookies.extract_cookies(response)  # as the client's send would
            return response
        except Exception as exc:
            if _from_http_library(exc):
                raise transport_error(exc, self.name) from exc
            raise

    async def _read(self, response: httpx.Response) -> bytes:
        """Read the whole body; raise the typed error for an error status."""
        try:
            if response.status_code >= 400:
                content = await _read_some(response, MAX_ERROR_BODY)
                raise (self.error or error_from_response)(
                    response.status_code,
                    response.headers,
                    content,
                    provider=self.name,
                    secrets=self.secrets,
                )
            return await response.aread()
        except Exception as exc:
            if _from_http_library(exc):
                raise transport_error(exc, self.name) from exc
            raise


async def _timed(timing: RequestTiming, call: Awaitable[T]) -> T:
    """Await ``call`` as one wait on the upstream, counted in ``timing``."""
    timing.wait_began(trio.current_time())
    try:
        return await call
    finally:
        timing.wait_ended(trio.current_time())


def _model_of(body: Mapping[str, Any]) -> str | None:
    """The model a call is for (its key rests are per model), or None."""
    model = body.get("model")
    return model if isinstance(model, str) and model else None


def _direct_transport(client: httpx.AsyncClient, url: httpx.URL) -> Any | None:
    """The transport to hand a request to directly, or None when ``client.send`` must run.

    ``AsyncClient.send`` wraps the transport in event hooks, an auth flow, redirect handling
    and cookie bookkeeping, and costs a provider call more CPU than the transport itself.
    A client with hooks, auth or redirects to follow goes through ``send`` as usual (so does
    a closed one, for its error); any other goes straight to the transport the client
    itself would pick for ``url`` (its mounts and proxies included), and keeps the cookies
    it is sent.
    """
    hooks = client.event_hooks
    if (
        hooks["request"]
        or hooks["response"]
        or client.auth is not None
        or client.follow_redirects
        or client.is_closed
    ):
        return None
    # The client's own choice of transport; httpx and httpx2 share this method.
    pick = getattr(client, "_transport_for_url", None)
    return None if pick is None else pick(url)


async def _read_some(response: httpx.Response, limit: int) -> bytes:
    """The body's first ``limit`` bytes; a longer body is closed where it was cut."""
    data = bytearray()
    chunks = response.aiter_bytes()
    async for chunk in chunks:
        data += chunk
        if len(data) >= limit:
            break
    else:
        return bytes(data)
    # Leaving the loop early leaves httpx's nested body generators open, for the garbage
    # collector (Trio reports that as a ResourceWarning): unwind them on the closed response.
    await _aclose(response)
    await _finish_iteration(chunks)
    return bytes(data[:limit])


async def _close(response: httpx.Response, chunks: Any, *, ended: bool = False) -> None:
    if ended:
        # A body read to its end only gives its connection back to the pool (httpcore
        # shields that itself): the common case needs no scope of its own.
        await _aclose(response)
    else:
        # Shielded, so that a cancelled request still closes its connection (and the server
        # sees it go) instead of leaving it for the garbage collector; bounded, so a close
        # can never hang a cancellation.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
            await _aclose(response)
            if chunks is not None:
                await _finish_iteration(chunks)
    # A cancel that arrived during the close still ends the call as cancelled.
    await trio.lowlevel.checkpoint_if_cancelled()


async def _aclose(response: httpx.Response) -> None:
    try:
        await response.aclose()
    except Exception as exc:
        if not _from_http_library(exc):
            raise


async def _finish_iteration(chunks: Any) -> None:
    """Run the body iterator to its end on the closed response.

    httpx reads bodies through nested async generators; closing only the outer one leaves
    the inner ones for the garbage collector, which Trio reports as a ResourceWarning. On a
    closed response the next read fails (or ends) at once, unwinding every level.
    """
    try:
        async for _ in chunks:
            pass
    except Exception as exc:
        if not _from_http_library(exc) and not isinstance(exc, trio.ClosedResourceError):
            raise
