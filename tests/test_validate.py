"""The door's JSON parser: exactly what every upstream encoder can carry gets through."""

from __future__ import annotations

import orjson
import pytest

from trio_orchestrator.service.errors import ApiError
from trio_orchestrator.service.validate import MAX_DEPTH, parse_json_object


def nested(depth: int) -> bytes:
    """A JSON object nested ``depth`` levels deep, the outermost object included."""
    return b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def test_the_deepest_body_allowed_is_accepted_and_encodable() -> None:
    """A body exactly MAX_DEPTH deep passes, and orjson (the workers' encoder) can send it."""
    fields = parse_json_object(nested(MAX_DEPTH))
    assert orjson.loads(orjson.dumps(fields.data)) == fields.data


def test_one_level_deeper_is_a_400() -> None:
    """A body MAX_DEPTH + 1 deep is refused, not parsed."""
    with pytest.raises(ApiError) as caught:
        parse_json_object(nested(MAX_DEPTH + 1))
    assert caught.value.status == 400
    assert "nested deeper" in caught.value.message


@pytest.mark.parametrize("value", [2**64 - 1, -(2**63), 1e19, 2.0**70])
def test_integers_within_64_bits_and_large_floats_pass(value: float) -> None:
    """Every 64-bit integer, and floats however large, reach the reader unchanged."""
    body = b'{"x": ' + str(value).encode() + b"}"
    assert parse_json_object(body).data["x"] == value


@pytest.mark.parametrize("literal", [b"18446744073709551616", b"-9223372036854775809"])
def test_an_integer_beyond_64_bits_is_a_400_naming_it(literal: bytes) -> None:
    """orjson would read it as a float, silently; the door refuses it by path instead."""
    with pytest.raises(ApiError) as caught:
        parse_json_object(b'{"a": [{"b": ' + literal + b"}]}")
    assert caught.value.param == "a[0].b"
