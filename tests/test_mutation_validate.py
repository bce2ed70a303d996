"""What ``service/validate.py`` gives back and refuses, field kind by field kind: the reader's
result, and each 400's status, code, message and ``param``. The door's refusals (bad UTF-8,
lone surrogates, ``NaN``, nesting, 64-bit range) and their messages. Written for the mutation
session (scripts/mutation.py), which found these unpinned."""

from __future__ import annotations

from typing import Any

import pytest

from trio_orchestrator.service.errors import ApiError
from trio_orchestrator.service.validate import MAX_DEPTH, Fields, invalid, parse_json_object

INT_RANGE = "[-9223372036854775808, 18446744073709551615]"


def refusal(error: ApiError) -> tuple[int, str | None, str | None, str]:
    """The parts of a 400 a client reads: status, code, param and message."""
    return error.status, error.code, error.param, error.message


def refused(body: bytes | str, what: str = "the request body") -> ApiError:
    """The error :func:`parse_json_object` raises for ``body``."""
    with pytest.raises(ApiError) as caught:
        parse_json_object(body, what)
    return caught.value


def bad(read: Any) -> tuple[int, str | None, str | None, str]:
    """What a reader call (a zero-argument function) refuses with."""
    with pytest.raises(ApiError) as caught:
        read()
    return refusal(caught.value)


# --- invalid(): the 400 every reader raises ---------------------------------------------


def test_a_missing_field_is_named_as_required() -> None:
    """``missing=True`` says the field is required and what it must be, code missing_field."""
    error = invalid("messages[0].role", "a string", missing=True)
    assert refusal(error) == (
        400,
        "missing_field",
        "messages[0].role",
        "`messages[0].role` is required: a string",
    )
    assert error.type == "invalid_request_error"


def test_a_wrong_value_is_named_with_what_was_found() -> None:
    """Without ``missing`` the message says what was expected and what came, code invalid_value."""
    error = invalid("n", "an integer", "two")
    assert refusal(error) == (
        400,
        "invalid_value",
        "n",
        "`n` must be an integer, got the string 'two'",
    )


def test_a_value_left_out_is_described_as_null() -> None:
    """``invalid(path, expected)`` with no value reports it as null."""
    assert invalid("x", "a string").message == "`x` must be a string, got null"


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (None, "null"),
        (True, "a boolean"),
        (False, "a boolean"),
        (0, "the number 0"),
        (2.5, "the number 2.5"),
        ("", "the string ''"),
        ("a" * 40, f"the string {'a' * 40!r}"),
        ("a" * 41, f"the string {'a' * 40 + '…'!r}"),
        ([], "an array"),
        ({}, "an object"),
    ],
)
def test_what_was_found_is_described_by_kind(value: object, found: str) -> None:
    """Each JSON kind is described in words; a string past 40 characters is cut with an ellipsis."""
    assert invalid("x", "something", value).message == f"`x` must be something, got {found}"


# --- parse_json_object(): the door ------------------------------------------------------


def test_an_object_body_is_read_as_fields_at_the_top() -> None:
    """A JSON object (bytes or str) comes back as its members, at the empty path."""
    for body in (b'{"a": [1, {"b": null}], "c": "\xc3\xa9"}', '{"a": [1, {"b": null}], "c": "é"}'):
        fields = parse_json_object(body)
        assert fields.data == {"a": [1, {"b": None}], "c": "é"}
        assert fields.path == ""
        assert fields.path_of("a") == "a"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"a": "\xff"}', "str is not valid UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', "str is not valid UTF-8"),
        (b'{"a": "\\ud800"}', "no low surrogate in string"),
        (b'{"a": NaN}', "unexpected character"),
        (b'{"a": Infinity}', "unexpected character"),
        (b'{"a": -Infinity}', "no digit after sign"),
        (b'{"a": 1e400}', "number is infinity"),
        (b'{"a": ', "unexpected end of data"),
    ],
)
def test_what_no_upstream_can_carry_is_invalid_json(body: bytes, reason: str) -> None:
    """Invalid UTF-8, lone surrogates, NaN and infinities are a 400 invalid_json, param unset."""
    with pytest.raises(ApiError) as caught:
        parse_json_object(body)  # what defaults to "the request body"
    error = caught.value
    status, code, param, message = refusal(error)
    assert (status, code, param) == (400, "invalid_json", None)
    assert message.startswith(f"the request body is not valid JSON ({reason}")
    assert message.endswith("); send a JSON object")
    assert error.__cause__ is None


def test_invalid_json_names_what_the_body_is() -> None:
    """``what`` names the body in the message (a WebSocket message, say)."""
    message = refused(b"{nope", "a WebSocket message").message
    assert message.startswith("a WebSocket message is not valid JSON (")


@pytest.mark.parametrize(
    ("body", "found"),
    [(b"[1]", "an array"), (b'"s"', "the string 's'"), (b"3", "the number 3"), (b"null", "null")],
)
def test_a_body_that_is_not_an_object_is_refused(body: bytes, found: str) -> None:
    """Any other JSON value is a 400 invalid_value saying what came."""
    assert refusal(refused(body)) == (
        400,
        "invalid_value",
        None,
        f"the request body must be a JSON object, got {found}",
    )
    assert refused(body, "the message").message.startswith("the message must be a JSON object")


def nested(depth: int, kind: str = "object") -> bytes:
    """A body nested ``depth`` levels deep: objects, or arrays inside the outer object."""
    if kind == "object":
        return b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("kind", ["object", "array"])
def test_the_depth_limit_counts_objects_and_arrays(kind: str) -> None:
    """MAX_DEPTH levels pass, one more is a 400 invalid_json naming the limit."""
    assert parse_json_object(nested(MAX_DEPTH, kind)).data
    assert refusal(refused(nested(MAX_DEPTH + 1, kind))) == (
        400,
        "invalid_json",
        None,
        f"the request body is nested deeper than {MAX_DEPTH} levels",
    )
    assert refused(nested(MAX_DEPTH + 1, kind), "the frame").message.startswith("the frame is")


def test_the_depth_limit_looks_at_every_branch() -> None:
    """A deep member after shallow ones, and an array after an object, are both measured."""
    deep = nested(MAX_DEPTH)  # MAX_DEPTH levels of its own, one more below the body
    body = b'{"x": 1, "y": {"z": [2]}, "w": [{"v": 3}, ' + deep + b"]}"
    assert "nested deeper" in refused(body).message
    shallow = b'{"x": 1, "y": {"z": [2]}, "w": [{"v": 3}, ' + nested(MAX_DEPTH - 2) + b"]}"
    assert parse_json_object(shallow).data["x"] == 1


def test_an_integer_beyond_64_bits_is_refused_by_path() -> None:
    """The first out-of-range integer is named, with the range in the message."""
    body = (
        b'{"in": [18446744073709551615, -9223372036854775808, 1.5e30, true], '
        b'"m": {"k": [0, 18446744073709551616]}, "later": 99999999999999999999999}'
    )
    assert refusal(refused(body)) == (
        400,
        "invalid_value",
        "m.k[1]",
        f"`m.k[1]` must be an integer in {INT_RANGE} (64 bits), got an integer outside that range",
    )


@pytest.mark.parametrize(
    ("literal", "path"),
    [
        (b'{"low": -9223372036854775809}', "low"),
        (b'{"high": 18446744073709551616}', "high"),
        (b'{"a": [[0], [1, -18446744073709551617]]}', "a[1][1]"),
        (b'{"a": {"b": {"c": 1e2, "d": 36893488147419103232}}}', "a.b.d"),
    ],
)
def test_each_side_of_the_64_bit_range_is_refused(literal: bytes, path: str) -> None:
    """One past either end of the range, at any depth, is a 400 naming its member."""
    assert refused(literal).param == path


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"": 18446744073709551616}', '""'),
        (b'{"": [1, 18446744073709551616]}', '""[1]'),
        (b'{"a": {"": {"b": -9223372036854775809}}}', 'a."".b'),
    ],
)
def test_an_empty_member_name_is_spelled_out_in_the_path(body: bytes, path: str) -> None:
    """A member named "" is named `""` in the path: it is a member, not the body itself."""
    assert refusal(refused(body)) == (
        400,
        "invalid_value",
        path,
        f"`{path}` must be an integer in {INT_RANGE} (64 bits), got an integer outside that range",
    )


@pytest.mark.parametrize(
    "literal", [b"9223372036854775808.0", b"-9223372036854775808.5e1", b"1e19", b"-1e300"]
)
def test_huge_floats_are_not_taken_for_integers(literal: bytes) -> None:
    """A float however large, written as a float, passes with its value."""
    value = parse_json_object(b'{"x": ' + literal + b"}").data["x"]
    assert value == float(literal)


# --- Fields: the readers ----------------------------------------------------------------


def test_paths_of_members_and_items() -> None:
    """Members of a nested object and items of its arrays are named by their full path."""
    top = Fields({"messages": [{"role": "user"}]})
    message = top.item("messages", 2, {"role": "user"})
    assert (message.path, message.data) == ("messages[2]", {"role": "user"})
    assert message.path_of("role") == "messages[2].role"
    assert message.item("parts", 0, {}).path == "messages[2].parts[0]"


def test_an_item_that_is_not_an_object_is_refused() -> None:
    """``item`` refuses a non-object element, naming the element."""
    assert bad(lambda: Fields({}, "a").item("b", 3, "x")) == (
        400,
        "invalid_value",
        "a.b[3]",
        "`a.b[3]` must be an object, got the string 'x'",
    )


def test_text_reads_a_string() -> None:
    """A string is returned; absent or null is None unless required."""
    fields = Fields({"s": "hi", "empty": "", "null": None}, "p")
    assert fields.text("s") == "hi"
    assert fields.text("empty", required=True) == ""
    assert fields.text("null") is None
    assert fields.text("absent") is None


def test_text_required_and_absent_or_null_is_missing() -> None:
    """A required string that is absent or null is missing_field, named by path."""
    for data in ({}, {"model": None}):
        assert bad(lambda data=data: Fields(data, "p").text("model", required=True)) == (
            400,
            "missing_field",
            "p.model",
            "`p.model` is required: a string",
        )


def test_text_refuses_other_kinds_and_long_strings() -> None:
    """A non-string, or a string over max_length, is refused with the limit in the message."""
    fields = Fields({"n": 1, "s": "abcd"})
    assert bad(lambda: fields.text("n")) == (
        400,
        "invalid_value",
        "n",
        "`n` must be a string of at most 1048576 characters, got the number 1",
    )
    assert fields.text("s", max_length=4) == "abcd"
    assert bad(lambda: fields.text("s", max_length=3))[3] == (
        "`s` must be a string of at most 3 characters, got the string 'abcd'"
    )


def test_text_limit_defaults_to_one_mebi_character() -> None:
    """Without max_length a string of 2**20 characters passes and one more is refused."""
    assert Fields({"s": "a" * (1 << 20)}).text("s") == "a" * (1 << 20)
    assert bad(lambda: Fields({"s": "a" * ((1 << 20) + 1)}).text("s"))[2] == "s"


def test_flag_reads_a_boolean() -> None:
    """true and false are returned; absent or null gives the default."""
    fields = Fields({"t": True, "f": False, "null": None})
    assert (fields.flag("t"), fields.flag("f", default=True)) == (True, False)
    assert (fields.flag("absent"), fields.flag("absent", True)) == (False, True)
    assert (fields.flag("null"), fields.flag("null", default=True)) == (False, True)


@pytest.mark.parametrize(("value", "found"), [(1, "the number 1"), ("true", "the string 'true'")])
def test_flag_refuses_what_is_not_a_boolean(value: object, found: str) -> None:
    """1 or "true" is not a boolean."""
    assert bad(lambda: Fields({"stream": value}, "o").flag("stream")) == (
        400,
        "invalid_value",
        "o.stream",
        f"`o.stream` must be true or false, got {found}",
    )


def test_integer_reads_a_whole_number_within_bounds() -> None:
    """Integers at either bound pass; unbounded sides take any integer; absent is None."""
    fields = Fields({"lo": 1, "hi": 10, "neg": -(2**70), "big": 2**70, "null": None})
    assert fields.integer("lo", minimum=1, maximum=10) == 1
    assert fields.integer("hi", minimum=1, maximum=10) == 10
    assert fields.integer("neg") == -(2**70)
    assert fields.integer("neg", maximum=0) == -(2**70)
    assert fields.integer("big", minimum=0) == 2**70
    assert (fields.integer("null"), fields.integer("absent", minimum=1)) == (None, None)


@pytest.mark.parametrize(
    ("value", "bounds", "expected", "found"),
    [
        (0, {"minimum": 1, "maximum": 10}, "[1, 10]", "the number 0"),
        (11, {"minimum": 1, "maximum": 10}, "[1, 10]", "the number 11"),
        (-1, {"minimum": 0}, "[0, inf]", "the number -1"),
        (5, {"maximum": 4}, "[-inf, 4]", "the number 5"),
        (True, {}, "[-inf, inf]", "a boolean"),
        (1.0, {}, "[-inf, inf]", "the number 1.0"),
        ("1", {}, "[-inf, inf]", "the string '1'"),
    ],
)
def test_integer_refuses_out_of_bounds_booleans_and_other_kinds(
    value: object, bounds: dict[str, int], expected: str, found: str
) -> None:
    """The message gives the bounds (inf where open) and what came."""
    assert bad(lambda: Fields({"n": value}).integer("n", **bounds)) == (
        400,
        "invalid_value",
        "n",
        f"`n` must be an integer in {expected}, got {found}",
    )


def test_number_reads_a_float_within_bounds() -> None:
    """Integers and floats at either bound pass, as floats; absent is None."""
    fields = Fields({"lo": 0, "hi": 2.0, "mid": 1, "null": None})
    low = fields.number("lo", minimum=0.0, maximum=2.0)
    assert (low, type(low)) == (0.0, float)
    assert fields.number("hi", minimum=0.0, maximum=2.0) == 2.0
    assert type(fields.number("mid", minimum=0, maximum=2)) is float
    assert (
        fields.number("null", minimum=0, maximum=1),
        fields.number("x", minimum=0, maximum=1),
    ) == (
        None,
        None,
    )


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (-0.5, "the number -0.5"),
        (2.5, "the number 2.5"),
        (True, "a boolean"),
        ("1", "the string '1'"),
        ([1], "an array"),
    ],
)
def test_number_refuses_out_of_bounds_booleans_and_other_kinds(value: object, found: str) -> None:
    """The message gives the bounds and what came."""
    assert bad(lambda: Fields({"t": value}, "p").number("t", minimum=0.0, maximum=2.0)) == (
        400,
        "invalid_value",
        "p.t",
        f"`p.t` must be a number in [0.0, 2.0], got {found}",
    )


def test_array_reads_a_list() -> None:
    """A list is returned as is; absent or null is an empty list unless required."""
    items = [1, 2]
    fields = Fields({"a": items, "null": None})
    assert fields.array("a", max_items=2) is items
    assert (fields.array("null"), fields.array("absent")) == ([], [])
    assert bad(lambda: fields.array("absent", required=True)) == (
        400,
        "missing_field",
        "absent",
        "`absent` is required: an array",
    )


def test_array_refuses_other_kinds_and_long_lists() -> None:
    """A non-list, or a list over max_items, is refused with the limit in the message."""
    fields = Fields({"o": {}, "a": [1, 2, 3]})
    assert bad(lambda: fields.array("o")) == (
        400,
        "invalid_value",
        "o",
        "`o` must be an array of at most 10000 items, got an object",
    )
    assert bad(lambda: fields.array("a", max_items=2))[3] == (
        "`a` must be an array of at most 2 items, got an array"
    )


def test_array_limit_defaults_to_ten_thousand_items() -> None:
    """Without max_items 10 000 items pass and one more is refused."""
    assert len(Fields({"a": [0] * 10_000}).array("a")) == 10_000
    assert bad(lambda: Fields({"a": [0] * 10_001}).array("a"))[2] == "a"


def test_object_reads_a_nested_object_at_its_path() -> None:
    """An object member comes back as Fields at its own path; absent or null is None."""
    fields = Fields({"o": {"k": 1}, "null": None}, "p")
    inner = fields.object("o", required=True)
    assert inner is not None
    assert (inner.data, inner.path) == ({"k": 1}, "p.o")
    assert inner.path_of("k") == "p.o.k"
    assert (fields.object("null"), fields.object("absent")) == (None, None)


def test_object_refuses_other_kinds_and_a_missing_required_one() -> None:
    """A non-object member is invalid_value; a required one absent is missing_field."""
    fields = Fields({"a": [1]}, "p")
    assert bad(lambda: fields.object("a")) == (
        400,
        "invalid_value",
        "p.a",
        "`p.a` must be an object, got an array",
    )
    assert bad(lambda: fields.object("b", required=True)) == (
        400,
        "missing_field",
        "p.b",
        "`p.b` is required: an object",
    )


def test_falsy_values_are_present() -> None:
    """0, "", false and [] are values, not absences, for every reader."""
    fields = Fields({"z": 0, "s": "", "f": False, "a": [], "o": {}})
    assert fields.integer("z") == 0
    assert fields.number("z", minimum=0, maximum=1) == 0.0
    assert fields.text("s", required=True) == ""
    assert fields.flag("f", default=True) is False
    assert fields.array("a", required=True) == []
    inner = fields.object("o", required=True)
    assert inner is not None
    assert inner.data == {}
