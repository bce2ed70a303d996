"""A worker for AWS Bedrock's Converse and ConverseStream APIs (and InvokeModel for
embeddings: :mod:`.bedrock_embed`).

``POST {base_url}/model/{modelId}/converse`` answers with one JSON document;
``…/converse-stream`` with the binary ``application/vnd.amazon.eventstream`` framing, decoded
here by botocore's :class:`botocore.eventstream.EventStreamBuffer` (each message's
``:event-type`` header names its event, its payload is the event's JSON). Requests are
signed with AWS Signature Version 4 by botocore's :class:`botocore.auth.SigV4Auth` over the
exact bytes sent (a subclass keeping what does not change between requests, such as the
day's signing key), or carry a Bedrock API key as a bearer token (``api_keys``, a key pool).
botocore is imported only when a Bedrock provider is built (``pip install
'trio-orchestrator[bedrock]'``).

Answers in OpenAI's terms:

- usage: Converse's ``inputTokens`` leaves out the prompt tokens read from or written to
  the cache (``cacheReadInputTokens``, ``cacheWriteInputTokens``; ``totalTokens`` counts
  all three); :class:`~..events.Usage` holds their sum as ``input_tokens``, the reads as
  ``cached_input_tokens``, as for Anthropic.
- ``reasoningContent`` text goes on as the message's ``reasoning_content``.
- ``stopReason``: mapped by :data:`STOP_REASONS`.
- errors: the exception name (``x-amzn-ErrorType`` header, or ``__type`` in the body, or an
  ``:exception-type`` message inside the stream) picks the typed error (:data:`EXCEPTIONS`).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
import httpx
import orjson
import trio

from ..config.secret import Secret
from ..errors import (
    AuthenticationError,
    BadRequest,
    ConfigError,
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
from ._sse import ServerSentEvent
from .base import EventSink
from .bedrock_embed import Family, invoke_bodies, read_answer
from .bedrock_request import converse_body
from .config import DEFAULT_BASE_URLS, Timeouts
from .http import HTTPProvider, parse_retry_after, redact, wire_format_guard
from .keys import KeyPool

if TYPE_CHECKING:
    from .config import ProviderConfig

__all__ = [
    "EXCEPTIONS",
    "STOP_REASONS",
    "AWSCredentials",
    "BedrockWorker",
    "EventStreamDecoder",
    "bedrock_error",
    "bedrock_worker",
    "converse_body",
]

#: The most InvokeModel calls one embedding request has in flight (Titan embeds one text a
#: call: a request of many inputs is many calls).
EMBED_CONCURRENCY = 16

#: The name AWS signs Bedrock Runtime requests for (the SigV4 scope's service).
SIGNING_NAME = "bedrock"

#: Converse's stop reasons, in OpenAI's words (others pass through unchanged).
STOP_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

#: Bedrock Runtime's exceptions (HTTP answers and ``:exception-type`` stream messages).
EXCEPTIONS: Mapping[str, type[ProviderError]] = {
    "ThrottlingException": RateLimited,
    "ServiceQuotaExceededException": RateLimited,
    "ModelNotReadyException": Overloaded,
    "ServiceUnavailableException": Overloaded,
    "ValidationException": BadRequest,
    "ConflictException": BadRequest,
    "AccessDeniedException": PermissionDenied,
    "ResourceNotFoundException": ModelNotFound,
    "UnrecognizedClientException": AuthenticationError,
    "InvalidSignatureException": AuthenticationError,
    "IncompleteSignatureException": AuthenticationError,
    "ExpiredTokenException": AuthenticationError,
    "ModelTimeoutException": ProviderTimeout,
    "ModelErrorException": ServerError,
    "ModelStreamErrorException": ServerError,
    "InternalServerException": ServerError,
}
_BY_LOWER = {name.lower(): cls for name, cls in EXCEPTIONS.items()}
_BY_STATUS: Mapping[int, type[ProviderError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: ModelNotFound,
    408: ProviderTimeout,
    429: RateLimited,
    503: Overloaded,
}
_ADVICE: Mapping[type[ProviderError], str] = {
    RateLimited: "retry later, or raise the account's Bedrock quota",
    Overloaded: "retry later or route to another provider",
    ServerError: "retry; this is the provider's fault",
    ProviderTimeout: "retry, or raise the timeout",
    AuthenticationError: "check the AWS credentials (or Bedrock API key) and the region",
    PermissionDenied: "check that the credentials may invoke this model (IAM, model access)",
    ModelNotFound: "check the model id (or inference profile) and the region",
    ContentFiltered: "change the prompt; retrying will not help",
    ContextLengthExceeded: "shorten the prompt or lower max_tokens",
    BadRequest: "fix the request; retrying will not help",
}
_ENDPOINT = re.compile(r"bedrock-runtime(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com")
_CONTEXT = re.compile(r"input is too long|too many (input )?tokens|context (length|window)", re.I)


# ------------------------------------------------------------------ errors


def _exception_name(raw: str) -> str:
    """``ThrottlingException`` from ``ThrottlingException:http://…`` or ``com.x#Throttling…``."""
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def _error(
    name: str, message: str, *, provider: str, status: int | None, retry_after: float | None
) -> ProviderError:
    cls = _BY_LOWER.get(name.lower())
    if cls is None:
        fallback = _BY_STATUS.get(status or 0)
        cls = fallback or (BadRequest if status is not None and status < 500 else ServerError)
    if cls is BadRequest and _CONTEXT.search(message):
        cls = ContextLengthExceeded
    if "guardrail" in message.lower() and cls is BadRequest:
        cls = ContentFiltered
    where = f"HTTP {status}" if status is not None else "an error in the stream"
    said = message[:500] or "no message"
    return cls(
        f"{provider or 'Bedrock'} answered {where} ({name or 'error'}): {said}; "
        f"{_ADVICE.get(cls, 'see the provider message')}",
        provider=provider,
        status=status,
        retry_after=retry_after,
    )


def bedrock_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str,
    secrets: Sequence[Secret] = (),
) -> ProviderError:
    """The typed error for a Bedrock HTTP error answer.

    Args:
        status: the HTTP status.
        headers: the answer's headers (``x-amzn-ErrorType`` names the exception).
        body: the answer's body (``{"message": …}``, sometimes with ``__type``).
        provider: the provider's name.
        secrets: keys to scrub from the message.

    Returns:
        The error, of the class :data:`EXCEPTIONS` gives the exception (else by status).
    """
    try:
        parsed: Any = orjson.loads(body)
    except ValueError:
        parsed = {"message": body[:500].decode("utf-8", "replace")}
    if not isinstance(parsed, dict):
        parsed = {"message": str(parsed)}
    lower = {k.lower(): v for k, v in headers.items()}
    name = _exception_name(lower.get("x-amzn-errortype") or str(parsed.get("__type") or ""))
    message = str(parsed.get("message") or parsed.get("Message") or "")
    retry_after = parse_retry_after(headers) if status in (429, 503) else None
    return _error(
        name,
        redact(message, secrets),
        provider=provider,
        status=status,
        retry_after=retry_after,
    )


# ------------------------------------------------------------ event stream


def _botocore(what: str) -> Any:
    """Import ``botocore.<what>``, or say which extra installs it."""
    try:
        module = __import__(f"botocore.{what}", fromlist=["_"])
    except ImportError as exc:
        raise ConfigError(
            "a 'bedrock' provider needs botocore (SigV4 signing, the event stream); "
            "pip install 'trio-orchestrator[bedrock]'"
        ) from exc
    return module


#: Header blocks botocore has parsed, by their exact bytes (shared by every decoder: the
#: blocks seen are few, one per event type and content type, so the memory is bounded).
_HEADER_BLOCKS: dict[bytes, Mapping[str, Any]] = {}


@attrs.define(eq=False)
class _RememberedHeaders:
    """botocore's header parser, remembering what it parsed: a ConverseStream answer repeats
    the same header block (``:event-type contentBlockDelta``, ``:content-type``,
    ``:message-type event``) on almost every frame, and parsing it is most of botocore's
    work per frame. Keyed by the block's exact bytes, a remembered answer is the one the
    parser would give.
    """

    parser: Any

    def parse(self, data: bytes) -> Mapping[str, Any]:
        headers = _HEADER_BLOCKS.get(data)
        if headers is None:
            headers = self.parser.parse(data)
            if len(_HEADER_BLOCKS) < 256:
                _HEADER_BLOCKS[data] = headers
        return headers


@attrs.define(eq=False)
class EventStreamDecoder:
    """ConverseStream's ``application/vnd.amazon.eventstream`` body, as events.

    Each message becomes a :class:`ServerSentEvent` whose ``event`` is its ``:event-type``
    (``contentBlockDelta``…) and ``data`` its JSON payload; an exception message becomes
    ``event="exception"`` with ``id`` its ``:exception-type``, an error message
    ``event="error"`` with ``id`` its ``:error-code`` and ``data`` its ``:error-message``.

    Args:
        provider: the provider's name, for errors.
    """

    provider: str = ""
    _buffer: Any = attrs.field(init=False)
    _parser_error: type[Exception] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        eventstream = _botocore("eventstream")
        self._buffer = eventstream.EventStreamBuffer()
        self._parser_error = eventstream.ParserError
        # The buffer's parser, by the attribute botocore gives it (checked, so a botocore
        # that renames it still decodes, only without the memory).
        parser = getattr(self._buffer, "_header_parser", None)
        if parser is not None:
            self._buffer._header_parser = _RememberedHeaders(parser)

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Take the next chunk; return the messages it completed.

        Raises:
            MalformedResponse: a frame's length or checksum is wrong.
        """
        self._buffer.add_data(chunk)
        try:
            return [self._event(message) for message in self._buffer]
        except self._parser_error as exc:
            raise MalformedResponse(
                f"{self.provider or 'Bedrock'} sent a broken event-stream frame ({exc}); "
                "retrying may help",
                provider=self.provider,
            ) from exc

    def close(self) -> list[ServerSentEvent]:
        """The body ended: nothing is left to decode (a cut frame just ends the stream,
        which the parser reports as an incomplete answer)."""
        return []

    def _event(self, message: Any) -> ServerSentEvent:
        headers: Mapping[str, Any] = message.headers
        kind = headers.get(":message-type", "event")
        payload = bytes(message.payload).decode("utf-8", "replace")
        if kind == "exception":
            return ServerSentEvent("exception", payload, str(headers.get(":exception-type", "")))
        if kind == "error":
            text = json.dumps({"message": str(headers.get(":error-message", ""))})
            return ServerSentEvent("error", text, str(headers.get(":error-code", "")))
        return ServerSentEvent(str(headers.get(":event-type", "")), payload)


# ------------------------------------------------------------------ answers


def _usage(raw: Mapping[str, Any]) -> Usage:
    uncached = int(raw.get("inputTokens") or 0)
    read = int(raw.get("cacheReadInputTokens") or 0)
    written = int(raw.get("cacheWriteInputTokens") or 0)
    return Usage(
        uncached + read + written,
        int(raw.get("outputTokens") or 0),
        cached_input_tokens=read,
        cache_write_tokens=written,
    )


def _reasoning(text: str) -> Passthrough:
    return Passthrough(message={"reasoning_content": text})


@attrs.define(eq=False)
class _ConverseStream:
    """Folds ConverseStream events into stream events."""

    provider: str
    model: str
    emit: EventSink
    started: bool = False
    finished: bool = False
    _text: TextPieces = attrs.field(factory=TextPieces)
    _tools: dict[int, int] = attrs.field(factory=dict)  # content block index -> call index
    _calls: list[list[str]] = attrs.field(factory=list)
    _call_ids: list[tuple[str, str]] = attrs.field(factory=list)
    _usage: Usage | None = None
    _stop: str | None = None

    async def event(self, event: ServerSentEvent) -> None:
        kind = event.event
        if kind in ("exception", "error"):
            data = orjson.loads(event.data or "{}")
            message = str(data.get("message") or data.get("Message") or "")
            error = _error(event.id or kind, message, provider=self.provider, status=None,
                           retry_after=None)  # fmt: skip
            raise error
        data = orjson.loads(event.data or "{}")
        if kind == "contentBlockStart":
            await self._block_start(int(data.get("contentBlockIndex", 0)), data.get("start") or {})
        elif kind == "contentBlockDelta":
            await self._delta(int(data.get("contentBlockIndex", 0)), data.get("delta") or {})
        elif kind == "messageStop":
            stop = str(data.get("stopReason") or "end_turn")
            self._stop = STOP_REASONS.get(stop, stop)
        elif kind == "metadata":
            if isinstance(data.get("usage"), Mapping):
                self._usage = _usage(data["usage"])
                await self.emit(self._usage)
            # The last event: the usage follows messageStop.
            self.finished = self._stop is not None

    async def _block_start(self, index: int, start: Mapping[str, Any]) -> None:
        tool = start.get("toolUse")
        if not isinstance(tool, Mapping):
            return
        self.started = True
        call = len(self._calls)
        self._tools[index] = call
        self._calls.append([])
        self._call_ids.append((str(tool.get("toolUseId", f"tooluse_{call}")), str(tool["name"])))
        await self.emit(ToolCallStart(call, *self._call_ids[call]))

    async def _delta(self, index: int, delta: Mapping[str, Any]) -> None:
        if text := delta.get("text"):
            self.started = True
            self._text.append(text)
            await self.emit(TextDelta(text))
        elif isinstance(tool := delta.get("toolUse"), Mapping):
            call = self._tools.get(index)
            if call is None:
                raise MalformedResponse(
                    f"{self.provider}: a toolUse delta for content block {index}, which no "
                    "toolUse start opened; retrying may help",
                    provider=self.provider,
                )
            part = str(tool.get("input") or "")
            self._calls[call].append(part)
            await self.emit(ToolCallDelta(call, part))
        elif isinstance(reasoning := delta.get("reasoningContent"), Mapping) and (
            thought := reasoning.get("text")
        ):
            # A token all the same: the first-token wait is over while the model thinks.
            self.started = True
            await self.emit(_reasoning(thought))

    async def end(self) -> None:
        if self._stop is None:
            raise ProviderConnectionError(
                f"{self.provider or 'Bedrock'} ended the stream before the answer was complete "
                "(no messageStop); retry",
                provider=self.provider,
            )
        calls = tuple(
            ToolCall(*self._call_ids[i], "".join(parts)) for i, parts in enumerate(self._calls)
        )
        await self.emit(Done(self._stop, self._text.text(), self._usage, calls, self.model))


async def _emit_answer(
    answer: Mapping[str, Any], model: str, provider: str, emit: EventSink
) -> None:
    content = ((answer.get("output") or {}).get("message") or {}).get("content")
    if not isinstance(content, list):
        raise MalformedResponse(
            f"{provider or 'Bedrock'} answered without output.message.content; retrying may help",
            provider=provider,
        )
    text: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if isinstance(reasoning := block.get("reasoningContent"), Mapping):
            thoughts.append(str((reasoning.get("reasoningText") or {}).get("text") or ""))
        elif isinstance(block.get("text"), str) and block["text"]:
            text.append(block["text"])
            await emit(TextDelta(block["text"]))
        elif isinstance(tool := block.get("toolUse"), Mapping):
            arguments = json.dumps(tool.get("input") or {})
            call = ToolCall(str(tool.get("toolUseId")), str(tool.get("name")), arguments)
            await emit(ToolCallStart(len(calls), call.id, call.name))
            await emit(ToolCallDelta(len(calls), call.arguments))
            calls.append(call)
    if any(thoughts):
        await emit(_reasoning("".join(thoughts)))
    usage = _usage(answer.get("usage") or {})
    await emit(usage)
    stop = str(answer.get("stopReason") or "end_turn")
    await emit(Done(STOP_REASONS.get(stop, stop), "".join(text), usage, tuple(calls), model))


# ------------------------------------------------------------------ signing


@attrs.frozen(repr=False)
class AWSCredentials:
    """The credentials that sign Bedrock requests (SigV4).

    Attributes:
        access_key_id: the access key id.
        secret_access_key: the secret access key.
        session_token: the session token of temporary credentials, or None.
    """

    access_key_id: str
    secret_access_key: Secret
    session_token: Secret | None = None

    def __repr__(self) -> str:
        return f"AWSCredentials(access_key_id={self.access_key_id!r})"


#: The headers of a built request that are signed (besides those botocore adds), by their
#: lower-cased raw name: the host, and the content type.
_SIGNED = {b"host": "host", b"content-type": "content-type"}

#: The canonical-request heads a signer keeps for the current second (one per URL and
#: signed-header set: one per model and operation in practice), and canonical URL paths.
_HEADS_KEPT = 256
_PATHS_KEPT = 256

#: A second, the span one ``X-Amz-Date`` timestamp names.
_SECOND = datetime.timedelta(seconds=1)


class _SignedHeaders(dict[str, str]):
    """The headers a request signs, by lower-cased name: what ``SigV4Auth.canonical_headers``
    reads (``get_all``), without ``email.message`` underneath; with their ``SignedHeaders``
    list once botocore has made it (it makes it twice a request)."""

    __slots__ = ("names",)

    def __init__(self) -> None:
        super().__init__()
        self.names: str | None = None

    def get_all(self, name: str) -> list[str]:
        return [self[name]]


@attrs.define(eq=False, slots=True)
class _SigningRequest:
    """The part of botocore's ``AWSRequest`` that ``SigV4Auth.add_auth`` reads and writes:
    building and preparing a real one (``email.message`` headers, a prepared copy to read the
    body) cost more than the signature itself. Its headers are only the host, the content
    type and what ``add_auth`` adds (never ``X-Amz-Content-SHA256``: the payload is hashed)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = attrs.field(factory=dict)
    context: dict[str, Any] = attrs.field(factory=dict)
    signed: _SignedHeaders | None = None


@functools.cache
def _sigv4_auth_class() -> Any:
    """botocore's :class:`~botocore.auth.SigV4Auth`, made cheaper where it repeats work.

    The canonical request, the string to sign and every HMAC stay botocore's own methods;
    what is kept instead of redone cannot change the result (the signature is byte-identical
    to plain ``SigV4Auth.add_auth`` for the same request and time: tests/test_bedrock_signer.py
    checks it against botocore and AWS's published test vectors). Together with the minimal
    request this cuts the signer's cost by about 80 % (benchmarks/bench_sigv4.py):

    - the signing key (four HMACs over the secret, the date, the region and the service) is
      derived once a day, not on every request;
    - the timestamp's text is made once a second (``strftime`` cost more than an HMAC);
    - the canonical request is made by botocore once a second for each URL and set of
      signed headers (the timestamp is one of them); every request in that second reuses
      all of it but its last line, the payload's hash (botocore's ``payload``), which is
      all that differs between them;
    - the signed headers are a plain dict, not botocore's ``email.message``-based
      ``HTTPHeaders`` made twice, kept with the canonical request they went into;
    - the canonical path of each URL path is kept (a few: one per model and operation).
    """
    auth = _botocore("auth")

    class _CachingSigV4Auth(auth.SigV4Auth):  # type: ignore[misc,name-defined]
        def __init__(self, credentials: Any, service_name: str, region_name: str) -> None:
            super().__init__(credentials, service_name, region_name)
            self._signing_key: tuple[tuple[str, str, str], bytes] | None = None
            self._paths: dict[str, str] = {}
            self._heads: dict[tuple[str, ...], tuple[str, _SignedHeaders]] = {}
            self._second: datetime.datetime | None = None
            self._next_second: datetime.datetime | None = None
            self._timestamp = ""

        def add_auth(self, request: Any) -> None:
            # SigV4Auth.add_auth's steps, in its order, by its own methods, but for two
            # things: the timestamp's text is kept for the second it names (strftime cost
            # more than the signature's HMAC), and nothing is logged (botocore's debug
            # lines print the canonical request, session token and all).
            now = auth.get_current_datetime()
            if self._second is None or not self._second <= now < self._next_second:
                self._second = now.replace(microsecond=0)
                self._next_second = self._second + _SECOND
                self._timestamp = self._second.strftime(auth.SIGV4_TIMESTAMP)
                self._heads.clear()  # they sign the second that ended
            request.context["timestamp"] = self._timestamp
            self._modify_request_before_signing(request)
            canonical_request = self.canonical_request(request)
            string_to_sign = self.string_to_sign(request, canonical_request)
            self._inject_signature_to_request(request, self.signature(string_to_sign, request))

        def canonical_request(self, request: Any) -> str:
            # Botocore's canonical request is its lines joined by newlines, the payload's
            # hash last; all the others depend only on the method, the URL and the signed
            # headers (X-Amz-Date among them: so at most for a second), the key here.
            key = (request.method, request.url, *request.headers.items())
            kept = self._heads.get(key)
            if kept is None:
                if len(self._heads) >= _HEADS_KEPT:
                    self._heads.clear()  # bounded: an unusual URL mix only costs recomputing
                head = str(super().canonical_request(request)).rpartition("\n")[0]
                kept = self._heads[key] = (head, request.signed)
            else:
                request.signed = kept[1]  # for the Authorization header's SignedHeaders
            return f"{kept[0]}\n{self.payload(request)}"

        def headers_to_sign(self, request: Any) -> _SignedHeaders:
            # What SigV4Auth.headers_to_sign selects (lower-cased, the blacklist left out,
            # the host added), in a dict: the minimal request's header names are distinct.
            # Kept on the request: add_auth asks twice, after its last change to the headers.
            if request.signed is not None:
                return request.signed  # type: ignore[no-any-return]
            selected = request.signed = _SignedHeaders()
            for name, value in request.headers.items():
                lowered = name.lower()
                if lowered not in auth.SIGNED_HEADERS_BLACKLIST:
                    selected[lowered] = value
            if "host" not in selected:
                selected["host"] = auth._host_from_url(request.url)
            return selected

        def signed_headers(self, headers_to_sign: _SignedHeaders) -> str:
            if headers_to_sign.names is None:
                headers_to_sign.names = str(super().signed_headers(headers_to_sign))
            return headers_to_sign.names

        def _normalize_url_path(self, path: str) -> str:
            normalized = self._paths.get(path)
            if normalized is None:
                if len(self._paths) >= _PATHS_KEPT:
                    self._paths.clear()  # bounded: an unusual path mix only costs recomputing
                normalized = self._paths[path] = super()._normalize_url_path(path)
            return normalized

        def signature(self, string_to_sign: str, request: Any) -> str:
            scope = (request.context["timestamp"][0:8], self._region_name, self._service_name)
            cached = self._signing_key
            if cached is None or cached[0] != scope:
                # SigV4Auth.signature's derivation, step for step, with its own _sign.
                k_date = self._sign(f"AWS4{self.credentials.secret_key}".encode(), scope[0])
                k_region = self._sign(k_date, scope[1])
                k_service = self._sign(k_region, scope[2])
                cached = self._signing_key = (scope, self._sign(k_service, "aws4_request"))
            return str(self._sign(cached[1], string_to_sign, hex=True))

    return _CachingSigV4Auth


@attrs.define(eq=False, repr=False)
class _SigV4Signer:
    """Signs a built request with botocore's SigV4 over its exact URL, headers and body.

    Args:
        credentials: the credentials to sign with.
        region: the SigV4 region.
        service: the SigV4 service (Bedrock's, but for AWS's published test vectors).
    """

    credentials: AWSCredentials
    region: str
    service: str = SIGNING_NAME
    _auth: Any = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        token = self.credentials.session_token
        credentials = _botocore("credentials").Credentials(
            self.credentials.access_key_id,
            self.credentials.secret_access_key.reveal(),
            None if token is None else token.reveal(),
        )
        self._auth = _sigv4_auth_class()(credentials, self.service, self.region)

    def __call__(self, request: httpx.Request) -> None:
        # Signed: the host, the content type and the body's hash (always, for every scheme:
        # SigV4Auth hashes the payload), with the date and token headers botocore adds.
        headers = {}
        for raw_name, raw_value in request.headers.raw:  # one pass, not a lookup per name
            lowered = raw_name.lower()
            if lowered in _SIGNED:
                headers[_SIGNED[lowered]] = raw_value.decode()
        aws = _SigningRequest(request.method, str(request.url), headers, request.content)
        self._auth.add_auth(aws)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            value = headers.get(name)
            if value is not None:
                request.headers[name] = value


def _bearer(key: Secret) -> dict[str, str]:
    return {"authorization": f"Bearer {key.reveal()}"}


def _scrubbing_error(
    credentials: AWSCredentials | None,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str,
    secrets: Sequence[Secret] = (),
) -> ProviderError:
    """:func:`bedrock_error` scrubbing the signing secret and session token too: AWS's
    signature errors quote the canonical request, session token header included."""
    if credentials is not None:
        secrets = [*secrets, credentials.secret_access_key]
        if credentials.session_token is not None:
            secrets.append(credentials.session_token)
    return bedrock_error(status, headers, body, provider=provider, secrets=secrets)


@attrs.define(eq=False, repr=False)
class BedrockWorker:
    """Generates through AWS Bedrock's Converse / ConverseStream APIs.

    Args:
        client: the provider's shared ``httpx.AsyncClient`` (or ``httpx2``).
        base_url: the endpoint, ``https://bedrock-runtime.{region}.amazonaws.com``.
        keys: Bedrock API keys (bearer tokens), or None to sign with ``credentials``.
        name: the provider's name, for errors and statistics.
        timeouts: connect, first-token, idle and total timeouts.
        stream: use ConverseStream (``False``: Converse, one JSON answer).
        max_tokens: ``inferenceConfig.maxTokens`` when a request names none.
        credentials: the SigV4 credentials (needed when ``keys`` is None).
        region: the SigV4 region (needed with ``credentials``).
        settings: the provider's ``region`` and ``aws_*`` keys as configured, so that a
            reload changing them is refused rather than ignored.

    Raises:
        ConfigError: neither keys nor credentials, or botocore is not installed.
    """

    client: httpx.AsyncClient
    base_url: str
    keys: KeyPool | None = None
    name: str = "bedrock"
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    stream: bool = True
    max_tokens: int = 4096
    credentials: AWSCredentials | None = None
    region: str = ""
    settings: tuple[object, ...] = ()
    _http: HTTPProvider = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        sign = None
        if self.keys is None:
            if self.credentials is None:
                raise ConfigError(
                    f"providers.{self.name}: a 'bedrock' provider needs a Bedrock API key "
                    "(api_keys, AWS_BEARER_TOKEN_BEDROCK) or AWS credentials "
                    "(aws_access_key_id and aws_secret_access_key, AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY)"
                )
            sign = _SigV4Signer(self.credentials, self.region)
        EventStreamDecoder()  # botocore is there, or a ConfigError says so now
        self._http = HTTPProvider(
            self.client,
            self.base_url,
            self.name,
            self.keys,
            self.timeouts,
            _bearer,
            sign=sign,
            decoder=EventStreamDecoder,
            error=functools.partial(_scrubbing_error, self.credentials),
        )

    def __repr__(self) -> str:
        return f"BedrockWorker(name={self.name!r}, base_url={self.base_url!r})"

    def reconfigure(self, provider: ProviderConfig | None, /) -> list[str]:
        """Apply this provider's reloaded ``api_keys``; other changes need a restart.

        Returns:
            Refusals, a changed ``region`` or ``aws_*`` key among them (the signer keeps
            the credentials it was built with).
        """
        refused = self._http.reconfigure(provider)
        if provider is not None and _settings(provider) != self.settings:
            refused.append(
                f"providers.{self.name}: region and the aws_* credentials change only on a restart"
            )
        return refused

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Generate the answer to ``request``; see :class:`~trio_orchestrator.workers.ModelWorker`.

        Raises:
            UnsupportedParameter: a request member Converse cannot carry, or an embedding
                request this model's family cannot take; raised before any call.
            ProviderError: a typed failure.
        """
        if request.embed is not None:
            await self._embed(request, emit)
            return
        model = request.params.model
        body = converse_body(request, max_tokens=self.max_tokens, provider=self.name)
        path = f"/model/{quote(model, safe='')}/converse"
        if self.stream and request.streaming:  # a caller taking it whole: one answer
            parser = _ConverseStream(self.name, model, emit)
            # The model is in the URL, not the body: named, so a 429 rests the key for it only.
            await self._http.post_stream(
                path + "-stream", body, parser, request.timing, model=model
            )
            return
        answer = await self._http.post_json(
            path, body, request.timing, model=model, first_token_bounds_answer=not self.stream
        )
        with wire_format_guard(self.name):
            await _emit_answer(answer, model, self.name, emit)

    async def _embed(self, request: PromptRequest, emit: EventSink) -> None:
        """An embedding request through InvokeModel: its bodies sent concurrently (at most
        :data:`EMBED_CONCURRENCY` at a time), the vectors emitted in input order."""
        model = request.params.model
        family, bodies = invoke_bodies(request, provider=self.name)
        path = f"/model/{quote(model, safe='')}/invoke"
        answers: list[Any] = [None] * len(bodies)
        failed: list[ProviderError] = []
        limiter = trio.CapacityLimiter(EMBED_CONCURRENCY)

        async def call(i: int, body: dict[str, Any], cancel: trio.CancelScope) -> None:
            async with limiter:
                try:
                    answers[i] = await self._http.post_json_headers(
                        path, body, request.timing, model=model
                    )
                except ProviderError as exc:
                    # The first failure is the request's; the other calls are cancelled, and
                    # the typed error is raised as itself, not inside an exception group.
                    failed.append(exc)
                    cancel.cancel()

        async with trio.open_nursery() as nursery:
            for i, body in enumerate(bodies):
                nursery.start_soon(call, i, body, nursery.cancel_scope)
        if failed:
            raise failed[0]
        await _emit_embeddings(family, answers, request, self.name, emit)


async def _emit_embeddings(
    family: Family, answers: list[Any], request: PromptRequest, provider: str, emit: EventSink
) -> None:
    vectors: list[tuple[float, ...]] = []
    tokens: int | None = None
    with wire_format_guard(provider):
        for answer, headers in answers:
            more, count = read_answer(family, answer, headers)
            vectors.extend(more)
            if count is not None:
                tokens = (tokens or 0) + count
    if len(vectors) != len(request.embed or ()):
        raise MalformedResponse(
            f"{provider}: InvokeModel answered without one vector per input; retrying may help",
            provider=provider,
        )
    await emit(Embeddings(tuple(vectors)))
    usage = None if tokens is None else Usage(tokens, 0)
    if usage is not None:
        await emit(usage)
    await emit(Done("stop", "", usage, (), request.params.model))


def _settings(provider: ProviderConfig) -> tuple[object, ...]:
    return (
        provider.region,
        provider.aws_access_key_id,
        provider.aws_secret_access_key,
        provider.aws_session_token,
    )


def _credentials(provider: ProviderConfig) -> AWSCredentials | None:
    key_id = provider.aws_access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = provider.aws_secret_access_key
    if secret is None and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        secret = Secret(os.environ["AWS_SECRET_ACCESS_KEY"])
    token = provider.aws_session_token
    if token is None and os.environ.get("AWS_SESSION_TOKEN"):
        token = Secret(os.environ["AWS_SESSION_TOKEN"])
    if not key_id or secret is None:
        return None
    return AWSCredentials(key_id, secret, token)


def bedrock_worker(
    provider: ProviderConfig, client: httpx.AsyncClient, keys: KeyPool | None
) -> BedrockWorker:
    """The worker for a ``kind = "bedrock"`` provider.

    Auth, first found: the provider's ``api_keys`` / ``api_key_env`` (``keys``, bearer);
    its ``aws_*`` credentials; ``AWS_BEARER_TOKEN_BEDROCK``; ``AWS_ACCESS_KEY_ID`` with
    ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``). The region: ``region``, else
    ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else the one in ``base_url``'s host; a
    bearer key sent to a given ``base_url`` needs none.

    Raises:
        ConfigError: no region, no credentials, or botocore is not installed.
    """
    region = provider.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and provider.base_url:
        endpoint = _ENDPOINT.search(provider.base_url)
        region = endpoint["region"] if endpoint else None
    credentials = None
    if keys is None:
        configured = provider.aws_access_key_id is not None
        credentials = _credentials(provider) if configured else None
        token = os.environ.get("AWS_BEARER_TOKEN_BEDROCK")
        if credentials is None and token:
            keys = KeyPool([Secret(token)], provider.label, provider.key_rest,
                           provider.max_key_rest, provider.key_probe_interval,
                           provider.rejected_key_cooldown, provider.models)  # fmt: skip
        elif credentials is None:
            credentials = _credentials(provider)
    if not region and (credentials is not None or not provider.base_url):
        # The endpoint and the signature's scope name it; a bearer key to a given
        # base_url needs none.
        raise ConfigError(
            f"providers.{provider.label}.region: a 'bedrock' provider needs its AWS region; "
            "set region (or AWS_REGION)"
        )
    base_url = provider.base_url or DEFAULT_BASE_URLS["bedrock"].format(region=region)
    return BedrockWorker(
        client,
        base_url,
        keys,
        provider.label,
        provider.timeouts,
        provider.stream,
        provider.max_tokens,
        credentials,
        region or "",
        _settings(provider),
    )
