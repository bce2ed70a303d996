"""The fake provider's AWS Bedrock wire format: Converse, ConverseStream, and InvokeModel
for the embedding models (:func:`invoke`).

``POST /model/{modelId}/converse`` answers one JSON document; ``…/converse-stream`` answers
``application/vnd.amazon.eventstream`` frames (``messageStart``, ``contentBlockStart`` for a
tool call, ``contentBlockDelta`` text or ``toolUse`` input, ``contentBlockStop``,
``messageStop`` with its ``stopReason``, ``metadata`` with the usage), shaped as Bedrock
Runtime's service model (``bedrock-runtime-2023-09-30``) has them. Errors are Bedrock's:
``{"message": …}`` with the exception's name in ``x-amzn-ErrorType``; an error inside the
stream is an ``:message-type: exception`` frame.

Auth is checked as Bedrock checks it: a Bedrock API key as ``Authorization: Bearer …``, or
an AWS SigV4 signature, which the fake recomputes with botocore from the request it received
(its URL with the query, the signed headers and the exact body bytes) for the access keys in
:data:`CREDENTIALS`, answering 403 ``InvalidSignatureException`` on a mismatch.

The frames are written by :func:`encode_message`, a small encoder of the event-stream format
(prelude, string headers, payload, CRC32s via :mod:`zlib`): botocore only decodes it, and
AWS's maintained encoder (``smithy-aws-event-stream``) needs a newer Python than this
project supports. It is test scaffolding; the worker decodes with botocore.
"""

from __future__ import annotations

import hmac
import importlib
import itertools
import json
import math
import re
import struct
import zlib
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol

import attrs
import trio

from ..workers.embeddings import fake_vector, input_tokens

__all__ = [
    "CREDENTIALS",
    "EXCEPTIONS",
    "PlannedAnswer",
    "converse",
    "converse_model",
    "encode_message",
    "error",
    "event_frame",
    "exception_frame",
    "invoke",
    "invoke_model",
    "is_bedrock",
    "is_converse",
    "planning_body",
    "refusal",
    "verify_sigv4",
]

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Access key id → secret access key: the credentials the fake's SigV4 check accepts.
CREDENTIALS: Mapping[str, str] = {
    "AKIAFAKEBEDROCK00001": "fake/bedrock/secret+access+key/0000000001",
}

#: HTTP status → the Bedrock Runtime exception that answers with it.
EXCEPTIONS: Mapping[int, str] = {
    400: "ValidationException",
    401: "UnrecognizedClientException",  # Bedrock says 403; the fake is told a status
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}

_PATH = re.compile(r"/model/(?P<model>.+)/(?P<op>converse|converse-stream)")
_INVOKE = re.compile(r"/model/(?P<model>.+)/invoke")
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
_EVENTSTREAM = b"application/vnd.amazon.eventstream"


class PlannedAnswer(Protocol):
    """What the fake provider planned for one request (its tokens, finish, behaviour)."""

    behaviour: Any
    send: Send
    model: str
    tokens: list[str]
    finish: str
    input_tokens: int


class _Disconnect(Exception):
    """Raised inside the app to make hypercorn drop the connection mid-answer."""


# -------------------------------------------------------------- framing


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    # Header value type 7: a string, with a 2-byte length.
    return (
        struct.pack("!B", len(raw_name))
        + raw_name
        + struct.pack("!BH", 7, len(raw_value))
        + (raw_value)
    )


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths and their CRC32), headers, payload, CRC32.

    Args:
        headers: string headers (``:event-type``, ``:message-type``…).
        payload: the message's payload.

    Returns:
        The frame's bytes.
    """
    head = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack("!II", total, len(head))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack("!I", zlib.crc32(message))


def event_frame(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """A ConverseStream event frame (``:message-type: event``)."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, json.dumps(payload).encode())


def exception_frame(exception: str, message: str) -> bytes:
    """An exception inside the stream (``:message-type: exception``), as Bedrock sends
    ``modelStreamErrorException``, ``throttlingException``…"""
    headers = {
        ":exception-type": exception,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, json.dumps({"message": message}).encode())


# -------------------------------------------------------------- routing


def is_converse(path: str) -> bool:
    """Whether ``path`` is a Converse or ConverseStream call."""
    return _PATH.fullmatch(path) is not None


def converse_model(path: str) -> str:
    """The model id of a Converse path (its last two segments are the operation)."""
    match = _PATH.fullmatch(path)
    return "" if match is None else match["model"]


def is_bedrock(path: str) -> bool:
    """Whether ``path`` is a Bedrock Runtime call (Converse, ConverseStream, InvokeModel)."""
    return is_converse(path) or invoke_model(path) is not None


def invoke_model(path: str) -> str | None:
    """The model id of an InvokeModel path, or None for another path."""
    match = _INVOKE.fullmatch(path)
    return None if match is None else match["model"]


def planning_body(path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The members the fake plans an answer from (model, token limit, messages), from a
    Converse request."""
    limit = (body.get("inferenceConfig") or {}).get("maxTokens")
    return {"model": converse_model(path), "max_tokens": limit, "messages": body.get("messages")}


def verify_sigv4(
    method: str, url: str, headers: Mapping[str, str], raw: bytes
) -> tuple[str, str] | None:
    """Check a SigV4 ``Authorization`` by signing the request again with botocore.

    Args:
        method: the request's method.
        url: its URL as received (scheme, host, raw path, query).
        headers: its headers, names lower-cased.
        raw: its exact body bytes.

    Returns:
        None when the signature is right, else ``(exception name, message)``.
    """
    # botocore ships no type hints: its three classes are used as Any.
    auth: Any = importlib.import_module("botocore.auth")
    awsrequest: Any = importlib.import_module("botocore.awsrequest")
    credentials: Any = importlib.import_module("botocore.credentials")
    match = _AUTH.fullmatch(headers.get("authorization", ""))
    if match is None:
        return "IncompleteSignatureException", "Authorization header requires a SigV4 signature"
    secret = CREDENTIALS.get(match["key"])
    if secret is None:
        why = "The security token included in the request is invalid."
        return "UnrecognizedClientException", why
    signed = match["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed or match["service"] != "bedrock":
        return "IncompleteSignatureException", "host and x-amz-date must be signed for bedrock"
    request = awsrequest.AWSRequest(
        method=method, url=url, data=raw, headers={h: headers.get(h, "") for h in signed}
    )
    request.context["timestamp"] = headers.get("x-amz-date", "")
    token = headers.get("x-amz-security-token")
    keys = credentials.Credentials(match["key"], secret, token)
    signer = auth.SigV4Auth(keys, "bedrock", match["region"])
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    if not hmac.compare_digest(expected, match["signature"]):
        return (
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return None


def refusal(
    headers: Mapping[str, str], scope: Mapping[str, Any], raw: bytes, *, check_sigv4: bool = True
) -> tuple[str, str] | None:
    """Why Bedrock would refuse this request's auth (``(exception, message)``), or None.

    Args:
        headers: the request's headers, names lower-cased.
        scope: its ASGI scope (for the raw path and the query).
        raw: its exact body bytes.
        check_sigv4: check a SigV4 signature by signing the request again; without it, a
            SigV4 authorization from a known key id is taken as it is.
    """
    authorization = headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        return None  # a Bedrock API key: any will do here, as any key does for the others
    if not authorization.startswith("AWS4-"):
        return "AccessDeniedException", "Missing Authentication Token"
    if not check_sigv4:
        match = _AUTH.fullmatch(authorization)
        known = match is not None and match["key"] in CREDENTIALS
        return None if known else ("UnrecognizedClientException", "Unknown access key id")
    url = f"http://{headers.get('host', '')}{bytes(scope['raw_path']).decode()}"
    query = bytes(scope.get("query_string", b"")).decode()
    return verify_sigv4(scope["method"], url + (f"?{query}" if query else ""), headers, raw)


# -------------------------------------------------------------- answers


async def error(
    send: Send,
    status: int,
    exception: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """A Bedrock error answer: ``{"message"}`` with ``x-amzn-ErrorType``."""
    data = json.dumps({"message": message}).encode()
    pairs = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"x-amzn-errortype", (exception + _ERROR_TYPE_SUFFIX).encode()),
        (b"x-amzn-requestid", b"00000000-0000-4000-8000-00000000fa4e"),
    ]
    pairs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": pairs})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def _json(send: Send, status: int, payload: Any, headers: Mapping[str, str]) -> None:
    data = json.dumps(payload).encode()
    pairs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    pairs += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": pairs})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def converse(answer: PlannedAnswer, *, stream: bool) -> None:
    """Answer a planned Converse (``stream=False``) or ConverseStream request.

    Args:
        answer: the fake provider's plan for the request.
        stream: whether it came to ``converse-stream``.
    """
    b = answer.behaviour
    if b.hang:
        await trio.sleep_forever()
    if b.status >= 400:
        headers = dict(b.headers)
        if b.retry_after is not None:
            headers["retry-after"] = str(b.retry_after)
        name = b.error_type or EXCEPTIONS.get(b.status, "InternalServerException")
        await error(answer.send, b.status, name, b.error_message, headers)
    elif not stream and b.body is not None:
        await _json(answer.send, b.status, b.body, b.headers)
    elif stream and b.events:
        await _Writer(answer).recorded(b.events)
    elif stream:
        await _Writer(answer).stream()
    else:
        await _answer_json(answer)


def _usage(answer: PlannedAnswer, output: int) -> dict[str, int]:
    return {
        "inputTokens": answer.input_tokens,
        "outputTokens": output,
        "totalTokens": answer.input_tokens + output,
    }


def _pieces(arguments: str) -> list[str]:
    size = max(1, math.ceil(len(arguments) / 3))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


async def _answer_json(answer: PlannedAnswer) -> None:
    b = answer.behaviour
    await trio.sleep(b.first_token_delay + b.token_delay * max(0, len(answer.tokens) - 1))
    if b.stall_after is not None:
        await trio.sleep_forever()
    if b.disconnect_after is not None:
        raise _Disconnect
    if b.malformed_after is not None:
        await answer.send({"type": "http.response.start", "status": 200, "headers": []})
        cut = {"type": "http.response.body", "body": b'{"output": {', "more_body": False}
        await answer.send(cut)
        raise _Disconnect
    content: list[dict[str, Any]] = []
    if answer.tokens:
        content.append({"text": "".join(answer.tokens)})
    for i, (name, arguments) in enumerate(b.tool_calls, start=1):
        tool = {"toolUseId": f"tooluse_fake{i}", "name": name, "input": json.loads(arguments)}
        content.append({"toolUse": tool})
    payload = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": answer.finish,
        "usage": _usage(answer, len(answer.tokens) + len(b.tool_calls)),
        "metrics": {"latencyMs": 1},
    }
    await _json(answer.send, 200, payload, b.headers)


@attrs.define(eq=False)
class _Writer:
    """Writes one ConverseStream answer with the behaviour's delays and faults."""

    answer: PlannedAnswer
    _pending: bytearray = attrs.field(factory=bytearray)

    @property
    def _instant(self) -> bool:
        b = self.answer.behaviour
        faults = (b.stall_after, b.disconnect_after, b.malformed_after, b.error_after, b.drip)
        return not (b.token_delay or b.first_token_delay) and all(f is None for f in faults)

    async def _start(self) -> None:
        pairs = [(b"content-type", _EVENTSTREAM), (b"x-amzn-requestid", b"fake-request")]
        pairs += [(k.encode(), v.encode()) for k, v in self.answer.behaviour.headers.items()]
        await self.answer.send({"type": "http.response.start", "status": 200, "headers": pairs})

    async def _end(self) -> None:
        body = bytes(self._pending)
        await self.answer.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _write(self, data: bytes) -> None:
        if self._instant:
            self._pending += data  # one write: a benchmark's floor is not the fake's sends
            return
        b = self.answer.behaviour
        step = b.drip or len(data)
        for start in range(0, len(data), step):
            if start:
                await trio.sleep(b.token_delay)
            piece = data[start : start + step]
            await self.answer.send({"type": "http.response.body", "body": piece, "more_body": True})

    async def _fault(self, sent: int) -> bool:
        """Apply the faults planned at token ``sent``; ``True`` ends the answer."""
        b = self.answer.behaviour
        if b.stall_after == sent:
            await trio.sleep_forever()
        if b.disconnect_after == sent:
            raise _Disconnect
        if b.malformed_after == sent:
            await self._write(b"\x00\x00\x00\x20not an event stream frame at all")
        if b.error_after == sent:
            await self._write(
                exception_frame("modelStreamErrorException", "The model stream failed")
            )
            return True
        return False

    async def recorded(self, events: tuple[Any, ...]) -> None:
        """Replay recorded events, each ``{"<eventType>": payload}`` as boto3 yields them."""
        await self._start()
        for event in events:
            ((kind, payload),) = event.items()
            self._pending += event_frame(kind, payload)
        await self._end()

    async def stream(self) -> None:
        """The planned answer as ConverseStream events."""
        a, b = self.answer, self.answer.behaviour
        await self._start()
        await self._write(event_frame("messageStart", {"role": "assistant"}))
        await trio.sleep(b.first_token_delay)
        for i, token in enumerate(a.tokens):
            if await self._fault(i):
                await self._end()
                return
            if i and b.token_delay and not b.drip:
                await trio.sleep(b.token_delay)
            delta = {"contentBlockIndex": 0, "delta": {"text": token}}
            await self._write(event_frame("contentBlockDelta", delta))
        if await self._fault(len(a.tokens)):
            await self._end()
            return
        if a.tokens:
            await self._write(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
        await self._tools(1 if a.tokens else 0)
        if b.omit_done:  # cut short: neither messageStop nor the usage after it
            await self._end()
            return
        await self._write(event_frame("messageStop", {"stopReason": a.finish}))
        usage = _usage(a, len(a.tokens) + len(b.tool_calls))
        await self._write(event_frame("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}))
        await self._end()

    async def _tools(self, first: int) -> None:
        # Content blocks come one after another, as Bedrock streams them.
        calls = self.answer.behaviour.tool_calls
        for index, (i, (name, arguments)) in zip(
            itertools.count(first), enumerate(calls, start=1), strict=False
        ):
            start = {"toolUse": {"toolUseId": f"tooluse_fake{i}", "name": name}}
            frame = {"contentBlockIndex": index, "start": start}
            await self._write(event_frame("contentBlockStart", frame))
            for piece in _pieces(arguments):
                delta = {"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}
                await self._write(event_frame("contentBlockDelta", delta))
            await self._write(event_frame("contentBlockStop", {"contentBlockIndex": index}))


# -------------------------------------------------------------- InvokeModel (embeddings)


def _malformed(why: str) -> tuple[int, str, str]:
    return (
        400,
        "ValidationException",
        f"Malformed input request: {why}, please reformat your input and try again.",
    )


def _embedding(body: Mapping[str, Any]) -> tuple[int, Any] | tuple[int, str, str]:
    """The answer to an embedding model's body: ``(200, answer)``, or ``(status, exception,
    message)`` for a body Bedrock would refuse."""
    if "inputText" in body:  # Amazon Titan Text Embeddings
        text, dimensions = body["inputText"], body.get("dimensions", 1024)
        if not isinstance(text, str) or not text:
            return _malformed("#/inputText: expected minLength: 1")
        if dimensions not in (256, 512, 1024):
            return _malformed(f"#/dimensions: {dimensions} is not a valid enum value")
        vector = list(fake_vector(text, dimensions))
        return 200, {
            "embedding": vector,
            "inputTextTokenCount": input_tokens(text),
            "embeddingsByType": {"float": vector},
        }
    if "texts" in body:  # Cohere Embed
        texts = body["texts"]
        if not isinstance(texts, list) or not 0 < len(texts) <= 96:
            return _malformed("#/texts: expected between 1 and 96 items")
        if body.get("input_type") not in (
            "search_document", "search_query", "classification", "clustering"
        ):  # fmt: skip
            return _malformed("#: required key [input_type] not found")
        return 200, {
            "id": "fake-cohere-embed",
            "embeddings": [list(fake_vector(str(t), 1024)) for t in texts],
            "response_type": "embeddings_floats",
            "texts": texts,
        }
    return _malformed("#: required key [inputText] not found")


async def invoke(b: Any, body: Mapping[str, Any], send: Send) -> None:
    """Answer an InvokeModel call to an embedding model (auth already checked).

    Args:
        b: the fake's behaviour for it: ``hang``, an error ``status`` (answered as
            Bedrock's exception for it), a verbatim ``body``, or else deterministic vectors
            (:func:`~trio_orchestrator.workers.embeddings.fake_vector`, 1024 values unless
            Titan is asked for fewer) in the family's shape, from the body's shape, with the
            input token count in the ``X-Amzn-Bedrock-Input-Token-Count`` header.
        body: the request's JSON body.
        send: the ASGI send.
    """
    if b.hang:
        await trio.sleep_forever()
    if b.status >= 400:
        exception = EXCEPTIONS.get(b.status, "InternalServerException")
        await error(send, b.status, exception, f"fake {exception}", b.headers)
        return
    if b.body is not None:
        await _json(send, b.status, b.body, b.headers)
        return
    answer = _embedding(body)
    if len(answer) == 3:
        await error(send, *answer)
        return
    # Bedrock reports an InvokeModel call's input tokens in a header (the only count a
    # Cohere answer has).
    texts = [body["inputText"]] if "inputText" in body else body["texts"]
    counted = {"X-Amzn-Bedrock-Input-Token-Count": str(sum(input_tokens(str(t)) for t in texts))}
    await _json(send, 200, answer[1], {**counted, **b.headers})
