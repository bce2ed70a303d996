"""A worker for Google's ``generateContent`` API: the Gemini API (``x-goog-api-key``) and,
with an OAuth access token and a project/location path, Vertex AI (:mod:`.vertex`).

Answers are folded into the gateway's events in OpenAI's terms:

- text parts are ``TextDelta``; ``thought`` parts (a thinking model's summary) go on as the
  message's ``reasoning_content`` (:class:`~..events.Passthrough`);
- ``functionCall`` parts arrive whole: each is a ``ToolCallStart`` and one
  ``ToolCallDelta`` with its arguments, under the call's own ``id`` when the model gave one,
  else a stable invented one (:func:`.gemini_request.call_id`);
- ``usageMetadata``: ``promptTokenCount`` (plus ``toolUsePromptTokenCount``) is the input,
  ``cachedContentTokenCount`` the cached part of it, ``candidatesTokenCount`` plus
  ``thoughtsTokenCount`` the output, the thoughts its reasoning tokens;
- ``finishReason`` by :data:`FINISH_REASONS` (``STOP`` with function calls is ``tool_calls``);
  a prompt blocked by ``promptFeedback.blockReason`` is :class:`~..errors.ContentFiltered`;
- errors are Google's ``{"error": {"code", "message", "status", "details"}}``, typed by
  ``status`` (:data:`ERROR_STATUSES`); a 429's ``RetryInfo.retryDelay`` is its wait; an
  invalid key (``API_KEY_INVALID``, sent as a 400) is an authentication error.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol
from urllib.parse import quote

import attrs
import httpx
import orjson

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
from ..events import (
    Done,
    Embeddings,
    Passthrough,
    TextDelta,
    TextPieces,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from ..types import PromptRequest, ToolCall
from ._sse import ServerSentEvent, parse_event_data
from .base import EventSink
from .gemini_request import call_id, embed_body, generate_body, predict_body
from .http import (
    MAX_ERROR_BODY,
    HTTPProvider,
    Timeouts,
    parse_retry_after,
    redact,
    wire_format_guard,
)
from .keys import KeyPool

__all__ = ["ERROR_STATUSES", "FINISH_REASONS", "AccessTokens", "GeminiWorker", "gemini_error"]

#: Gemini's finish reasons, in OpenAI's words (others pass through lower-cased).
FINISH_REASONS: Mapping[str, str] = {
    "STOP": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}

#: Google's canonical error statuses → the gateway's errors.
ERROR_STATUSES: Mapping[str, type[ProviderError]] = {
    "INVALID_ARGUMENT": BadRequest,
    "FAILED_PRECONDITION": BadRequest,
    "OUT_OF_RANGE": BadRequest,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": PermissionDenied,
    "NOT_FOUND": ModelNotFound,
    "RESOURCE_EXHAUSTED": RateLimited,
    "INTERNAL": ServerError,
    "UNKNOWN": ServerError,
    "UNAVAILABLE": Overloaded,
    "DEADLINE_EXCEEDED": ProviderTimeout,
}
_BY_HTTP = {400: BadRequest, 401: AuthenticationError, 403: PermissionDenied, 404: ModelNotFound,
            429: RateLimited, 503: Overloaded, 504: ProviderTimeout}  # fmt: skip
_TOO_LONG = re.compile(r"input token count .* exceeds the maximum|context (length|window)", re.I)
_DELAY = re.compile(r"(\d+(?:\.\d+)?)s")


class AccessTokens(Protocol):
    """Where a worker gets a bearer token (Vertex AI's service-account tokens)."""

    async def token(self) -> str:
        """A token valid now (refreshed when it is about to expire)."""

    def invalidate(self) -> None:
        """Forget the cached token (the upstream rejected it)."""


def _retry_delay(details: Any) -> float | None:
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.fullmatch(str(detail.get("retryDelay", "")))
            if match:
                return float(match[1])
    return None


def _reasons(details: Any) -> set[str]:
    return {
        str(d.get("reason"))
        for d in (details if isinstance(details, list) else ())
        if isinstance(d, Mapping) and d.get("reason")
    }


def gemini_error(
    body: Any,
    *,
    provider: str,
    http_status: int | None = None,
    retry_after: float | None = None,
    secrets: list[Secret] | None = None,
) -> ProviderError:
    """The typed error for Google's error object (an HTTP error body or one mid-stream).

    Args:
        body: the parsed JSON (``{"error": {"code", "message", "status", "details"}}``) or
            raw text.
        provider: the provider's name.
        http_status: the HTTP status, when the error came with one.
        retry_after: seconds the headers asked to wait (``RetryInfo`` wins over them).
        secrets: keys to scrub from the message.
    """
    error = body.get("error", body) if isinstance(body, Mapping) else {"message": str(body)}
    error = error if isinstance(error, Mapping) else {"message": str(error)}
    status = str(error.get("status") or "")
    message = str(error.get("message") or "no message")
    details = error.get("details")
    code = http_status if http_status is not None else error.get("code")
    cls = ERROR_STATUSES.get(status) or _BY_HTTP.get(code if isinstance(code, int) else 0)
    if cls is None:
        cls = ServerError if not isinstance(code, int) or code >= 500 else BadRequest
    if "API_KEY_INVALID" in _reasons(details):
        cls = AuthenticationError
    elif cls is BadRequest and _TOO_LONG.search(message):
        cls = ContextLengthExceeded
    said = redact(message, secrets or [])[:500]
    where = f"HTTP {http_status}" if http_status is not None else "an error in the stream"
    return cls(
        f"{provider or 'the provider'} answered {where} ({status or code or 'error'}): {said}",
        provider=provider,
        status=http_status,
        retry_after=_retry_delay(details) or retry_after,
    )


@attrs.define(eq=False, repr=False)
class _GoogleHTTP(HTTPProvider):
    """:class:`HTTPProvider` reading Google's error bodies."""

    async def _read(self, response: httpx.Response) -> bytes:
        if response.status_code < 400:
            return await super()._read(response)
        data = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) >= MAX_ERROR_BODY:
                    break
        except Exception:  # the status says enough; a cut error body is not worth more
            pass
        try:
            parsed: Any = orjson.loads(bytes(data))
        except ValueError:
            parsed = bytes(data[:500]).decode("utf-8", "replace")
        status = response.status_code
        wait = parse_retry_after(response.headers) if status in (429, 503) else None
        raise gemini_error(
            parsed, provider=self.name, http_status=status, retry_after=wait, secrets=self.secrets
        )


def _usage(raw: Mapping[str, Any]) -> Usage:
    thoughts = int(raw.get("thoughtsTokenCount") or 0)
    prompt = int(raw.get("promptTokenCount") or 0) + int(raw.get("toolUsePromptTokenCount") or 0)
    return Usage(
        prompt,
        int(raw.get("candidatesTokenCount") or 0) + thoughts,
        cached_input_tokens=int(raw.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )


@attrs.define(eq=False)
class _Fold:
    """Folds ``GenerateContentResponse`` objects (streamed chunks, or one whole answer)."""

    provider: str
    emit: EventSink
    started: bool = False
    finished: bool = False  # Gemini's stream just ends: read it to its end
    _text: TextPieces = attrs.field(factory=TextPieces)
    _calls: list[ToolCall] = attrs.field(factory=list)
    _usage: Usage | None = None
    _finish: str | None = None
    _model: str | None = None

    async def event(self, event: ServerSentEvent) -> None:
        await self.take(parse_event_data(event.data, self.provider))

    async def take(self, data: Mapping[str, Any]) -> None:
        if "error" in data:
            raise gemini_error(data, provider=self.provider)
        self._model = data.get("modelVersion") or self._model
        if (usage := data.get("usageMetadata")) is not None:
            self._usage = _usage(usage)
        candidates = data.get("candidates") or ()
        if not candidates:
            blocked = (data.get("promptFeedback") or {}).get("blockReason")
            if blocked:
                raise ContentFiltered(
                    f"{self.provider or 'the provider'} blocked the prompt ({blocked}); "
                    "change the prompt; retrying will not help",
                    provider=self.provider,
                )
            return
        candidate = candidates[0]
        for part in (candidate.get("content") or {}).get("parts") or ():
            await self._part(part)
        if reason := candidate.get("finishReason"):
            self._finish = str(reason)

    async def _part(self, part: Mapping[str, Any]) -> None:
        text = part.get("text")
        if isinstance(text, str) and text:
            self.started = True
            if part.get("thought"):
                await self.emit(Passthrough(message={"reasoning_content": text}))
            else:
                self._text.append(text)
                await self.emit(TextDelta(text))
        elif (call := part.get("functionCall")) is not None:
            self.started = True
            index, name, args = len(self._calls), str(call["name"]), call.get("args") or {}
            cid = str(call.get("id") or call_id(index, name, args))
            arguments = orjson.dumps(args).decode()
            self._calls.append(ToolCall(cid, name, arguments))
            await self.emit(ToolCallStart(index, cid, name))
            await self.emit(ToolCallDelta(index, arguments))

    async def end(self) -> None:
        if self._finish is None:
            raise ProviderConnectionError(
                f"{self.provider or 'the provider'} ended the answer before it was complete "
                "(no finishReason); retry",
                provider=self.provider,
            )
        finish = FINISH_REASONS.get(self._finish, self._finish.lower())
        if finish == "stop" and self._calls:
            finish = "tool_calls"
        if self._usage is not None:
            await self.emit(self._usage)
        text = self._text.text()
        await self.emit(Done(finish, text, self._usage, tuple(self._calls), self._model))


def _x_goog_api_key(key: Secret) -> dict[str, str]:
    return {"x-goog-api-key": key.reveal()}


@attrs.define(eq=False, repr=False)
class GeminiWorker:
    """Generates through Google's ``generateContent`` / ``streamGenerateContent``.

    Args:
        client: the provider's shared ``httpx.AsyncClient`` (or ``httpx2``).
        base_url: the API root (``https://generativelanguage.googleapis.com``).
        keys: the key pool (sent as ``x-goog-api-key``), or None with ``tokens``.
        name: the provider's name, for errors and statistics.
        timeouts: connect, first-token, idle and total timeouts.
        stream: stream the answer with SSE (``False``: one JSON answer).
        models_path: the path of the models under ``base_url``: ``/v1beta/models`` for the
            Gemini API, ``/v1/projects/P/locations/L/publishers/google/models`` for Vertex.
        tokens: bearer tokens (Vertex AI), sent as ``Authorization`` on every call.
        embed_method: how the upstream embeds: ``batchEmbedContents`` (the Gemini API) or
            ``predict`` (Vertex AI's embedding models).
    """

    client: httpx.AsyncClient
    base_url: str = "https://generativelanguage.googleapis.com"
    keys: KeyPool | None = None
    name: str = "gemini"
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    stream: bool = True
    models_path: str = "/v1beta/models"
    tokens: AccessTokens | None = None
    embed_method: Literal["batchEmbedContents", "predict"] = "batchEmbedContents"
    _http: _GoogleHTTP = attrs.field(init=False)
    _headers: dict[str, str] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._http = _GoogleHTTP(
            self.client,
            self.base_url,
            self.name,
            self.keys,
            self.timeouts,
            _x_goog_api_key,
            self._headers,  # the live dict: a bearer token is set in it before each call
        )

    def __repr__(self) -> str:
        return f"GeminiWorker(name={self.name!r}, base_url={self.base_url!r})"

    def reconfigure(self, provider: Any, /) -> list[str]:
        """Apply this provider's reloaded ``api_keys``; other changes need a restart."""
        return self._http.reconfigure(provider)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Generate the answer to ``request``; see :class:`~trio_orchestrator.workers.ModelWorker`.

        Raises:
            UnsupportedParameter: a member Gemini cannot carry; raised before any call.
            ProviderError: a typed failure.
        """
        model = quote(request.params.model.removeprefix("models/"), safe="")
        if request.embed is not None:
            await self._embed(request, model, emit)
            return
        body = generate_body(request, provider=self.name)
        path = f"{self.models_path}/{model}"
        if self.stream and request.streaming:  # a caller taking it whole: one answer
            fold = _Fold(self.name, emit)
            url = f"{path}:streamGenerateContent?alt=sse"
            await self._authorized(
                lambda: self._http.post_stream(
                    url, body, fold, request.timing, model=request.params.model
                )
            )
            return
        url = f"{path}:generateContent"
        # The model is in the URL, not the body: named, so that a 429 rests the key for it only.
        answer = await self._authorized(
            lambda: self._http.post_json(
                url,
                body,
                request.timing,
                model=request.params.model,
                first_token_bounds_answer=not self.stream,
            )
        )
        with wire_format_guard(self.name):
            fold = _Fold(self.name, emit)
            await fold.take(answer)
            await fold.end()

    async def _embed(self, request: PromptRequest, model: str, emit: EventSink) -> None:
        path = f"{self.models_path}/{model}:{self.embed_method}"
        if self.embed_method == "predict":
            body = predict_body(request, provider=self.name)
        else:
            body = embed_body(request, model, provider=self.name)
        answer = await self._authorized(
            lambda: self._http.post_json(path, body, request.timing, model=request.params.model)
        )
        with wire_format_guard(self.name):
            if self.embed_method == "predict":
                items = [p["embeddings"] for p in answer["predictions"]]
                counts = [int((e.get("statistics") or {}).get("token_count") or 0) for e in items]
                usage: Usage | None = Usage(sum(counts), 0)
            else:
                items, usage = answer["embeddings"], None
            vectors = tuple(tuple(map(float, e["values"])) for e in items)
        if len(vectors) != len(request.embed or ()):
            raise MalformedResponse(
                f"{self.name}: {self.embed_method} answered without one vector per input; "
                "retrying may help",
                provider=self.name,
            )
        await emit(Embeddings(vectors))
        if usage is not None:
            await emit(usage)
        await emit(Done("stop", "", usage, (), request.params.model))

    async def _authorized(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """Make ``call`` with a fresh bearer token when the worker has ``tokens``; a token
        the upstream rejects is forgotten, so the next call fetches a new one."""
        if self.tokens is None:
            return await call()
        self._headers["authorization"] = f"Bearer {await self.tokens.token()}"
        try:
            return await call()
        except AuthenticationError:
            self.tokens.invalidate()
            raise
