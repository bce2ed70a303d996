"""An incremental parser for Server-Sent Events (the WHATWG ``text/event-stream`` format).

Bytes go in as they arrive from the network, in chunks split anywhere (inside a line, inside a
UTF-8 sequence, between the ``\\r`` and ``\\n`` of a CRLF); complete events come out.
Providers stream their answers this way::

    event: content_block_delta
    data: {"type": "content_block_delta", ...}

    : a comment, ignored
    data: {"choices": [...]}

    data: [DONE]

Malformed input (a line too long, bytes that are not UTF-8) raises
:class:`~trio_orchestrator.errors.MalformedResponse`; the parser never waits for more than it
was given, so a broken stream cannot make it hang.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from ..errors import MalformedResponse

__all__ = ["SSEDecoder", "ServerSentEvent", "parse_event_data"]

#: A single line longer than this is not an answer but a runaway stream.
MAX_LINE_BYTES = 4 * 1024 * 1024


@attrs.define
class ServerSentEvent:
    """One dispatched event (mutable only to be cheap to make: one per streamed token).

    Attributes:
        event: the ``event:`` name, ``"message"`` when the event named none.
        data: the ``data:`` lines joined with ``\\n``.
        id: the last ``id:`` seen, when any.
        retry: the ``retry:`` reconnection time in milliseconds, when given.
    """

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


@attrs.define(eq=False)
class SSEDecoder:
    """Turns chunks of bytes into :class:`ServerSentEvent` objects, incrementally.

    Args:
        provider: the provider's name, for error messages.
        max_line_bytes: the longest line accepted.
    """

    provider: str = ""
    max_line_bytes: int = MAX_LINE_BYTES
    _buffer: bytearray = attrs.field(factory=bytearray, init=False)
    _event: str = attrs.field(default="", init=False)
    _data: list[str] = attrs.field(factory=list, init=False)  # non-empty: an event pending
    _last_id: str | None = attrs.field(default=None, init=False)
    _retry: int | None = attrs.field(default=None, init=False)

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Take the next chunk and return the events it completed (maybe none).

        Raises:
            MalformedResponse: a line is too long or is not UTF-8.
        """
        buffer = self._buffer
        buffer += chunk
        if b"\r" in buffer:
            lines = [self._decode(line) for line in self._complete_lines()]
        else:
            # The common case, lines ended by LF alone: decode every complete line at once
            # (a complete line never ends inside a UTF-8 sequence).
            end = buffer.rfind(b"\n")
            lines = [] if end == -1 else self._decode(buffer[:end]).split("\n")
            del buffer[: end + 1]
        if len(buffer) > self.max_line_bytes:
            raise self._malformed(f"an event-stream line exceeded {self.max_line_bytes} bytes")
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if line[:5] == "data:":
                data.append(line[6:] if line[5:6] == " " else line[5:])
            elif line:
                self._field(line)  # appends to data for a bare "data" line
            elif data:
                name = self._event or "message"
                events.append(ServerSentEvent(name, "\n".join(data), self._last_id, self._retry))
                data = self._data = []
                self._event = ""
            else:
                self._event = ""  # a blank line with no data dispatches nothing
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream: dispatch what is pending, even without its closing blank line.

        A truncated last event is still returned, so that its caller can tell a complete
        answer that merely lacked the final newline from a cut one (whose JSON will not
        parse).

        Raises:
            MalformedResponse: the pending bytes are not UTF-8.
        """
        events: list[ServerSentEvent] = []
        if self._buffer:
            rest = bytes(self._buffer.rstrip(b"\r"))
            self._buffer.clear()
            event = self._line(self._decode(rest))
            if event is not None:
                events.append(event)
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def _complete_lines(self) -> list[bytes]:
        lines: list[bytes] = []
        buffer = self._buffer
        start = 0
        while True:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if lf != -1 and (cr == -1 or lf < cr):
                lines.append(bytes(buffer[start:lf]))
                start = lf + 1
            elif cr == len(buffer) - 1:
                break  # a CR at the end of the chunk may be the first half of a CRLF
            else:
                lines.append(bytes(buffer[start:cr]))
                start = cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
        del buffer[:start]
        return lines

    def _decode(self, raw: bytes | bytearray) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._malformed("an event-stream line is not valid UTF-8") from exc

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        self._field(line)
        return None

    def _field(self, line: str) -> None:
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event, self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(event or "message", "\n".join(data), self._last_id, self._retry)

    def _malformed(self, what: str) -> MalformedResponse:
        name = self.provider or "the provider"
        return MalformedResponse(
            f"{name} sent a malformed event stream: {what}; this is a provider bug, "
            "retrying may help",
            provider=self.provider,
        )


def parse_event_data(data: str | bytes, provider: str) -> dict[str, Any]:
    """An event's ``data`` (or a whole answer body) as the JSON object it must be.

    Args:
        data: the JSON text.
        provider: the provider's name, for the error.

    Returns:
        The object.

    Raises:
        MalformedResponse: the text is not JSON, or not a JSON object.
    """
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse(
            f"{provider or 'the provider'} sent an event that is not JSON; retrying may help",
            provider=provider,
        ) from exc
    if not isinstance(parsed, dict):
        raise MalformedResponse(
            f"{provider or 'the provider'} sent JSON that is not an object; retrying may help",
            provider=provider,
        )
    return parsed
