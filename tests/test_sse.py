"""The incremental SSE parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator.errors import MalformedResponse
from trio_orchestrator.workers._sse import ServerSentEvent, SSEDecoder, parse_event_data


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder("p")
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    return events + decoder.close()


def test_one_event() -> None:
    """A data line and a blank line make one message event."""
    assert decode(b"data: hello\n\n") == [ServerSentEvent("message", "hello")]


def test_multi_line_data_is_joined() -> None:
    """Several data lines of one event join with newlines."""
    assert decode(b"data: a\ndata: b\n\n")[0].data == "a\nb"


def test_comments_are_ignored() -> None:
    """Lines starting with a colon are comments (keep-alives)."""
    assert decode(b": keep-alive\n\n: ping\ndata: x\n\n") == [ServerSentEvent("message", "x")]


def test_event_names() -> None:
    """The event field names the event; the next event is unnamed again."""
    events = decode(b"event: ping\ndata: {}\n\ndata: y\n\n")
    assert [e.event for e in events] == ["ping", "message"]


def test_crlf_and_cr_line_endings() -> None:
    """CRLF and lone CR end lines like LF, even with the CRLF split across chunks."""
    assert decode(b"data: a\r", b"\n\r\ndata: b\r\r") == [
        ServerSentEvent("message", "a"),
        ServerSentEvent("message", "b"),
    ]


def test_event_without_data_is_not_dispatched() -> None:
    """An event with only a name carries nothing and is dropped, as the spec says."""
    assert decode(b"event: x\n\n") == []


def test_id_and_retry_fields() -> None:
    """id and retry are kept; a non-numeric retry is ignored."""
    [event] = decode(b"id: 7\nretry: 1500\nretry: soon\ndata: d\n\n")
    assert (event.id, event.retry) == ("7", 1500)


def test_truncated_last_event_is_returned_on_close() -> None:
    """A last event without its blank line (or newline) still comes out at close."""
    assert decode(b'data: {"a": 1}') == [ServerSentEvent("message", '{"a": 1}')]


def test_split_utf8_sequence() -> None:
    """A UTF-8 character split across chunks decodes whole."""
    raw = "data: héllo ✓\n\n".encode()
    assert decode(raw[:8], raw[8:13], raw[13:])[0].data == "héllo ✓"


def test_invalid_utf8_is_malformed() -> None:
    """Bytes that are not UTF-8 raise MalformedResponse, not UnicodeDecodeError."""
    with pytest.raises(MalformedResponse):
        decode(b"data: \xff\xfe\n\n")


def test_runaway_line_is_malformed() -> None:
    """A line longer than the limit raises instead of growing the buffer without bound."""
    decoder = SSEDecoder("p", max_line_bytes=16)
    with pytest.raises(MalformedResponse, match="exceeded 16 bytes"):
        decoder.feed(b"data: " + b"x" * 32)


_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\0"))


@given(
    st.lists(st.tuples(st.sampled_from(["message", "a", "b"]), st.lists(_text, min_size=1))),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1),
    st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_any_chunking_gives_the_same_events(
    events: list[tuple[str, list[str]]], sizes: list[int], eol: str
) -> None:
    """However the byte stream is cut into chunks, the same events come out."""
    wire = "".join(
        (f"event: {name}{eol}" if name != "message" else "")
        + "".join(f"data: {line}{eol}" for line in lines)
        + eol
        for name, lines in events
    ).encode()
    chunks: list[bytes] = []
    i = 0
    while i < len(wire):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(wire[i : i + size])
        i += size
    expected = [ServerSentEvent(name, "\n".join(lines)) for name, lines in events]
    assert decode(*chunks) == expected


# Tests that kill mutants the mutation session (scripts/mutation.py) found surviving.


def test_lf_lines_after_a_crlf_in_one_chunk() -> None:
    """A chunk mixing CRLF, LF and CR line ends gives every line, whichever end comes first."""
    wire = b"data: a\r\n\r\ndata: b\n\nevent: e\ndata: c\r\rdata: d\n\r\n"
    assert decode(wire) == [
        ServerSentEvent("message", "a"),
        ServerSentEvent("message", "b"),
        ServerSentEvent("e", "c"),
        ServerSentEvent("message", "d"),
    ]


@given(
    st.lists(
        st.tuples(st.lists(_text, min_size=1), st.sampled_from(["\n", "\r\n", "\r"])), min_size=1
    ),
    st.integers(min_value=1, max_value=7),
)
def test_mixed_line_ends_give_the_same_events(
    events: list[tuple[list[str], str]], size: int
) -> None:
    """Each event with its own line end, cut anywhere, decodes as if all ended with LF."""
    wire = "".join("".join(f"data: {line}{eol}" for line in lines) + eol for lines, eol in events)
    raw = wire.encode()
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    expected = [ServerSentEvent("message", "\n".join(lines)) for lines, _ in events]
    assert decode(raw) == expected
    assert decode(*chunks) == expected


def test_malformed_names_the_provider() -> None:
    """A malformed stream's error names the provider, carries it, and says a retry may help."""
    with pytest.raises(MalformedResponse) as caught:
        SSEDecoder("acme").feed(b"data: \xff\n")
    assert str(caught.value) == (
        "acme sent a malformed event stream: an event-stream line is not valid UTF-8; "
        "this is a provider bug, retrying may help"
    )
    assert caught.value.provider == "acme"


def test_malformed_without_a_provider_name() -> None:
    """With no provider name the error says "the provider"."""
    with pytest.raises(MalformedResponse, match=r"^the provider sent a malformed event stream"):
        SSEDecoder().feed(b"data: \xff\n")


def test_parse_event_data_returns_the_object() -> None:
    """An event's JSON object comes back as a dict, from text or bytes."""
    assert parse_event_data('{"a": [1, 2]}', "p") == {"a": [1, 2]}
    assert parse_event_data(b'{"b": null}', "p") == {"b": None}


@pytest.mark.parametrize(
    ("data", "provider", "message"),
    [
        ("{not json", "acme", "acme sent an event that is not JSON; retrying may help"),
        ("{not json", "", "the provider sent an event that is not JSON; retrying may help"),
        ("[1, 2]", "acme", "acme sent JSON that is not an object; retrying may help"),
        ('"text"', "", "the provider sent JSON that is not an object; retrying may help"),
    ],
)
def test_parse_event_data_refuses_what_is_not_an_object(
    data: str, provider: str, message: str
) -> None:
    """Text that is not JSON, or JSON that is not an object, is a MalformedResponse naming who."""
    with pytest.raises(MalformedResponse) as caught:
        parse_event_data(data, provider)
    assert str(caught.value) == message
    assert caught.value.provider == provider


def test_an_event_cut_at_close_keeps_its_id_and_retry() -> None:
    """The event close() dispatches carries the last id and retry like any other."""
    assert decode(b"id: 7\nretry: 100\nevent: e\ndata: x") == [ServerSentEvent("e", "x", "7", 100)]


def test_close_strips_only_a_carriage_return() -> None:
    """At close a trailing CR (half a CRLF) is dropped; spaces and other text are data."""
    assert decode(b"data: a X \r") == [ServerSentEvent("message", "a X ")]
    assert decode(b"data: a X\r") == [ServerSentEvent("message", "a X")]


def test_close_leaves_the_decoder_fresh() -> None:
    """After close() dispatched a named event, the next event is a plain message again."""
    decoder = SSEDecoder("p")
    assert decoder.feed(b"event: e\ndata: x\r") == []
    assert decoder.close() == [ServerSentEvent("e", "x")]
    assert decoder.feed(b"data: y\n\n") == [ServerSentEvent("message", "y")]


def test_an_id_with_nul_is_ignored() -> None:
    """An id containing NUL is not taken (WHATWG); the previous id stays."""
    assert decode(b"id: 1\ndata: a\n\nid: x\0y\ndata: b\n\n") == [
        ServerSentEvent("message", "a", "1"),
        ServerSentEvent("message", "b", "1"),
    ]


def test_data_without_a_space_after_the_colon() -> None:
    """`data:xy` (no space) is the data `xy`: only one optional space is dropped."""
    assert decode(b"data:xy\ndata:  z\n\n") == [ServerSentEvent("message", "xy\n z")]


def test_a_pending_line_of_exactly_the_limit_is_accepted() -> None:
    """A line of max_line_bytes bytes still waiting for its end is not yet a runaway."""
    decoder = SSEDecoder("p", max_line_bytes=16)
    assert decoder.feed(b"data: " + b"x" * 10) == []
    assert decoder.feed(b"\n\n") == [ServerSentEvent("message", "x" * 10)]
