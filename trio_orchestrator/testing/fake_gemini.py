"""The fake provider's Google wire format: the Gemini API and Vertex AI ``generateContent``,
``streamGenerateContent?alt=sse``, ``embedContent`` / ``batchEmbedContents`` (Vertex AI's
embedding models: ``predict``), Google's error
bodies, and a service-account token endpoint.

Shapes follow Google's API reference: a ``GenerateContentResponse`` per chunk (each with
``usageMetadata``; the last with ``finishReason``), function calls whole in one part, errors
as ``{"error": {"code", "message", "status", "details"}}`` with a ``RetryInfo`` detail on a
429, and an invalid key as a 400 ``INVALID_ARGUMENT`` with reason ``API_KEY_INVALID``.

Routes (:func:`google_call` recognises them):

- ``POST /v1beta/models/{model}:{method}``: the Gemini API; needs ``x-goog-api-key``;
- ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}``: Vertex
  AI; needs ``Authorization: Bearer <a token this fake issued>``;
- ``POST /token``: the OAuth token exchange (``grant_type`` jwt-bearer): the JWT assertion's
  signature is checked (google-auth) against the public keys of :meth:`GoogleAuth.trust`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import attrs
import trio

from ..workers.echo import split_tokens

__all__ = [
    "GoogleAuth",
    "GoogleCall",
    "answer",
    "google_call",
    "service_account_file",
    "token_exchange",
]

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# The fake's default answer words, as its other formats generate them.
_LOREM = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()  # noqa: SIM905
_GEMINI = re.compile(r"/v1beta/models/(?P<model>[^/:]+):(?P<method>\w+)")
_VERTEX = re.compile(
    r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<method>\w+)"
)
_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
#: The audience of a service account's JWT assertion (google-auth's, and Google's check).
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
_FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}


@attrs.frozen
class GoogleCall:
    """A request to one of the Google routes.

    Attributes:
        model: the model named in the path.
        method: ``generateContent``, ``streamGenerateContent``, ``embedContent``,
            ``batchEmbedContents`` or (Vertex AI) ``predict``.
        vertex: a Vertex AI path (bearer token) rather than the Gemini API's (API key).
    """

    model: str
    method: str
    vertex: bool


def google_call(path: str) -> GoogleCall | None:
    """The Google call ``path`` names, or None when it is not one."""
    if match := _GEMINI.fullmatch(path):
        return GoogleCall(match["model"], match["method"], False)
    if match := _VERTEX.fullmatch(path):
        return GoogleCall(match["model"], match["method"], True)
    return None


@attrs.define(eq=False)
class GoogleAuth:
    """The fake's OAuth side: which service accounts it trusts, the tokens it issued.

    Attributes:
        expires_in: the lifetime of the tokens it issues, in seconds.
        exchanges: token exchanges answered with a token.
    """

    expires_in: int = 3600
    exchanges: int = 0
    _keys: dict[str, str] = attrs.field(factory=dict)
    _tokens: set[str] = attrs.field(factory=set)

    def trust(self, email: str, public_key_pem: str) -> None:
        """Accept JWT assertions from ``email`` signed by this key's private half."""
        self._keys[email] = public_key_pem

    def revoke_tokens(self) -> None:
        """Forget every issued token (the next Vertex call gets a 401)."""
        self._tokens.clear()

    def valid(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header carries a token this fake issued."""
        return authorization.removeprefix("Bearer ") in self._tokens

    def exchange(self, form: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Answer a token request: ``(status, JSON body)`` as Google's OAuth server does (the
        assertion's audience is Google's token endpoint, wherever it was posted)."""
        from google.auth import exceptions, jwt

        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 400, {"error": "unsupported_grant_type"}
        assertion = str(form.get("assertion") or "")
        try:
            claims = jwt.decode(assertion, verify=False)  # type: ignore[no-untyped-call]
            key = self._keys.get(str(claims.get("iss")))
            if key is None:
                return 400, {"error": "invalid_grant", "error_description": "Invalid issuer"}
            jwt.decode(assertion, certs=key, audience=TOKEN_AUDIENCE)  # type: ignore[no-untyped-call]
        except (exceptions.GoogleAuthError, ValueError) as exc:
            return 400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}
        token = "ya29." + secrets.token_urlsafe(24)
        self._tokens.add(token)
        self.exchanges += 1
        return 200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}


async def token_exchange(auth: GoogleAuth, form: Any, send: Send) -> None:
    """Answer ``POST /token`` (form fields already parsed into ``form``)."""
    status, payload = auth.exchange(form if isinstance(form, Mapping) else {})
    await _json(send, status, payload)


def _error_body(status: int, message: str, kind: str | None, retry: Any) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    name = kind or _STATUSES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    if kind == "API_KEY_INVALID":
        name = "INVALID_ARGUMENT"
        info = {"reason": "API_KEY_INVALID", "domain": "googleapis.com"}
        details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", **info})
    if status == 429 and isinstance(retry, int | float):
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry}s"}
        )
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    if details:
        error["details"] = details
    return {"error": error}


async def error(send: Send, behaviour: Any) -> None:
    """Answer with ``behaviour``'s error status, in Google's error body."""
    b = behaviour
    headers = dict(b.headers)
    if b.retry_after is not None and not isinstance(b.retry_after, int | float):
        headers["retry-after"] = str(b.retry_after)  # an HTTP-date: only a header can say it
    body = _error_body(b.status, b.error_message, b.error_type, b.retry_after)
    await _json(send, b.status, body, headers)


async def answer(
    behaviour: Any, call: GoogleCall, headers: Mapping[str, str], body: Any, send: Send,
    auth: GoogleAuth,
) -> None:  # fmt: skip
    """Answer one Google call with ``behaviour`` (a :class:`~.fake_provider.Behaviour`).

    Args:
        behaviour: how to answer.
        call: the route.
        headers: the request headers (lower-cased names).
        body: the parsed JSON body.
        send: the ASGI send.
        auth: the fake's OAuth state, for Vertex calls.
    """
    b = behaviour
    if call.vertex and not auth.valid(headers.get("authorization", "")):
        message = "Request had invalid authentication credentials."
        await _json(send, 401, _error_body(401, message, None, None))
        return
    if not call.vertex and not headers.get("x-goog-api-key"):
        message = "Method doesn't allow unregistered callers. Please use an API Key."
        await _json(send, 403, _error_body(403, message, None, None))
        return
    if b.hang:
        await trio.sleep_forever()
    if b.status >= 400:
        await error(send, b)
    elif call.method in ("embedContent", "batchEmbedContents", "predict"):
        await _json(send, 200, b.body if b.body is not None else _embeddings(call, body), b.headers)
    elif call.method == "streamGenerateContent" and b.events:
        await _start(send, b.headers)
        frames = b"".join(_sse(event) for event in b.events)
        await send({"type": "http.response.body", "body": frames, "more_body": False})
    elif call.method == "streamGenerateContent":
        await _Writer(b, send, _plan(b, call, body)).stream()
    elif b.body is not None:
        await _json(send, b.status, b.body, b.headers)
    else:
        await _Writer(b, send, _plan(b, call, body)).whole()


# -------------------------------------------------------------- the answer


@attrs.frozen
class _Plan:
    model: str
    tokens: list[str]
    finish: str
    prompt_tokens: int
    calls: tuple[tuple[str, str], ...]

    def usage(self, sent: int | None = None) -> dict[str, int]:
        out = len(self.tokens) + len(self.calls) if sent is None else sent
        return {
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": out,
            "totalTokenCount": self.prompt_tokens + out,
        }

    def response(self, parts: list[dict[str, Any]], *, final: bool, sent: int) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if final:
            candidate["finishReason"] = self.finish
        return {
            "candidates": [candidate],
            "usageMetadata": self.usage(None if final else sent),
            "modelVersion": self.model,
            "responseId": "fake-response",
        }

    def call_parts(self) -> list[dict[str, Any]]:
        return [{"functionCall": {"name": n, "args": json.loads(a)}} for n, a in self.calls]


def _plan(b: Any, call: GoogleCall, body: Any) -> _Plan:
    text = (
        b.text
        if b.text is not None
        else " ".join(itertools.islice(itertools.cycle(_LOREM), b.tokens))
    )
    tokens = split_tokens(text)
    finish = b.finish_reason or "stop"
    config = (body.get("generationConfig") if isinstance(body, Mapping) else None) or {}
    limit = config.get("maxOutputTokens")
    if isinstance(limit, int) and len(tokens) > limit:
        tokens, finish = tokens[:limit], "length"
    words = 0
    for content in (body.get("contents") if isinstance(body, Mapping) else None) or ():
        for part in content.get("parts") or ():
            words += len(str(part.get("text") or "").split())
    return _Plan(call.model, tokens, _FINISH.get(finish, finish), words, tuple(b.tool_calls))


@attrs.define(eq=False)
class _Writer:
    """Writes one answer, with the behaviour's delays and faults."""

    b: Any
    send: Send
    plan: _Plan
    _pending: bytearray = attrs.field(factory=bytearray)

    @property
    def _instant(self) -> bool:
        b = self.b
        faults = (b.stall_after, b.disconnect_after, b.malformed_after, b.error_after, b.drip)
        return not (b.token_delay or b.first_token_delay) and all(f is None for f in faults)

    async def _write(self, data: bytes) -> None:
        if self._instant:
            self._pending += data  # one write at the end, as the fake's other formats do
            return
        drip = self.b.drip or len(data) or 1
        for start in range(0, len(data), drip):
            if start:
                await trio.sleep(self.b.token_delay)
            piece = data[start : start + drip]
            await self.send({"type": "http.response.body", "body": piece, "more_body": True})

    async def _fault(self, sent: int) -> bool:
        b = self.b
        if b.stall_after == sent:
            await trio.sleep_forever()
        if b.disconnect_after == sent:
            raise _disconnect()
        if b.malformed_after == sent:
            await self._write(b'data: {"candidates": [{"content": {"parts": [{"text": "cut\n\n')
        if b.error_after == sent:
            await self._write(_sse(_error_body(500, "mid-stream failure", None, None)))
            return True
        return False

    async def stream(self) -> None:
        plan, b = self.plan, self.b
        await _start(self.send, b.headers)
        await trio.sleep(b.first_token_delay)
        for i, token in enumerate(plan.tokens):
            if await self._fault(i):
                return await self._end()
            if i and b.token_delay and not b.drip:
                await trio.sleep(b.token_delay)
            await self._write(_sse(plan.response([{"text": token}], final=False, sent=i + 1)))
        if await self._fault(len(plan.tokens)):
            return await self._end()
        if not b.omit_done:
            parts = plan.call_parts() or [{"text": ""}]
            await self._write(_sse(plan.response(parts, final=True, sent=0)))
        return await self._end()

    async def _end(self) -> None:
        body = bytes(self._pending)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def whole(self) -> None:
        b, plan = self.b, self.plan
        await trio.sleep(b.first_token_delay + b.token_delay * max(0, len(plan.tokens) - 1))
        if b.stall_after is not None:
            await trio.sleep_forever()
        if b.disconnect_after is not None:
            raise _disconnect()
        if b.malformed_after is not None:
            await _start(self.send, {}, "application/json")
            await self.send({"type": "http.response.body", "body": b'{"candidates": ['})
            raise _disconnect()
        parts: list[dict[str, Any]] = [{"text": "".join(plan.tokens)}] if plan.tokens else []
        await _json(
            self.send, 200, plan.response(parts + plan.call_parts(), final=True, sent=0), b.headers
        )


class _Disconnect(Exception):
    """Raised inside the app to make hypercorn drop the connection mid-answer."""


def _disconnect() -> Exception:
    return _Disconnect()


def _embeddings(call: GoogleCall, body: Any) -> dict[str, Any]:
    """A vector per text from its SHA-256 (``outputDimensionality`` values, default 8, at
    most 32), as ``embedContent``, ``batchEmbedContents`` or Vertex's ``predict`` answer."""
    if call.method == "predict":
        size = (body.get("parameters") or {}).get("outputDimensionality")
        texts = [str(i.get("content") or "") for i in body.get("instances") or ()]
        predictions = [
            {
                "embeddings": {
                    "values": _vector(text, size),
                    "statistics": {"token_count": len(text.split()), "truncated": False},
                }
            }
            for text in texts
        ]
        billable = sum(len(text) for text in texts)
        return {"predictions": predictions, "metadata": {"billableCharacterCount": billable}}
    requests = body.get("requests") if call.method == "batchEmbedContents" else [body]
    vectors = []
    for request in requests or ():
        parts = (request.get("content") or {}).get("parts") or ()
        text = " ".join(str(p.get("text") or "") for p in parts)
        vectors.append({"values": _vector(text, request.get("outputDimensionality"))})
    if call.method == "embedContent":
        return {"embedding": vectors[0] if vectors else {"values": []}}
    return {"embeddings": vectors}


def _vector(text: str, size: Any) -> list[float]:
    size = size if isinstance(size, int) and 1 <= size <= 32 else 8
    return [b / 255 for b in hashlib.sha256(text.encode()).digest()[:size]]


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data)}\r\n\r\n".encode()


async def _start(send: Send, headers: Mapping[str, str], kind: str = "text/event-stream") -> None:
    pairs = [(b"content-type", kind.encode())]
    pairs += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": 200, "headers": pairs})


async def _json(
    send: Send, status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> None:
    data = json.dumps(payload).encode()
    pairs = [(b"content-type", b"application/json; charset=UTF-8")]
    pairs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": pairs})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def service_account_file(auth: GoogleAuth, directory: str, token_uri: str) -> str:
    """Write a throwaway service-account key file whose ``token_uri`` is the fake's and
    whose public key ``auth`` trusts; return its path. Needs ``cryptography``.

    Args:
        auth: the fake's OAuth side (``fake.google``).
        directory: where to write ``service-account.json``.
        token_uri: the fake's token endpoint (``fake.base_url + "/token"``).
    """
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    email = f"fake-{secrets.token_hex(4)}@fake-project.iam.gserviceaccount.com"
    auth.trust(email, public.decode())
    data = {
        "type": "service_account",
        "project_id": "fake-project",
        "private_key_id": secrets.token_hex(20),
        "private_key": private,
        "client_email": email,
        "client_id": "1",
        "token_uri": token_uri,
    }
    path = os.path.join(directory, "service-account.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file)
    return path
