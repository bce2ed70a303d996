"""Hypothesis strategies for valid Chat Completions request bodies, written from OpenAI's API
reference (independently of the gateway's own schema, so they also check it accepts them).

``n`` is left out: how several choices are produced is the gateway's business (it may fan
out), not a member forwarded verbatim.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Text JSON can carry: Hypothesis leaves out lone surrogates (which the door refuses).
text = st.text(max_size=12)
names = st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True)
int64 = st.integers(-(2**63), 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)


def number(low: float, high: float) -> st.SearchStrategy[float | int]:
    """A float or an integer in ``[low, high]``."""
    return st.floats(low, high) | st.integers(int(low), int(high))


# Any JSON value, for unknown members and free-form objects (JSON Schemas, say).
json_values = st.recursive(
    st.none() | st.booleans() | int64 | finite | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(text, json_values, max_size=3)


def part(kind: str, value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A content part ``{"type": kind, kind: value}``."""
    return st.builds(lambda v: {"type": kind, kind: v}, value)


text_part = part("text", text)
image_part = part(
    "image_url",
    st.fixed_dictionaries(
        {"url": text}, optional={"detail": st.sampled_from(["auto", "low", "high"])}
    ),
)
audio_part = part(
    "input_audio",
    st.fixed_dictionaries({"data": text, "format": st.sampled_from(["wav", "mp3"])}),
)
file_part = part(
    "file",
    st.fixed_dictionaries({}, optional={"file_data": text, "file_id": text, "filename": text}),
)
refusal_part = part("refusal", text)


def content(*parts: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """A message's content: a string, or a non-empty array of the given parts."""
    return text | st.lists(st.one_of(*parts), min_size=1, max_size=3)


def message(role: str, required: dict[str, Any], **optional: Any) -> st.SearchStrategy[Any]:
    """A message of ``role``."""
    return st.fixed_dictionaries({"role": st.just(role), **required}, optional=optional)


tool_call = st.fixed_dictionaries(
    {
        "id": names,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": names, "arguments": text}),
    }
)
messages = st.lists(
    st.one_of(
        message("system", {"content": content(text_part)}, name=names),
        message("developer", {"content": content(text_part)}, name=names),
        message(
            "user",
            {"content": content(text_part, image_part, audio_part, file_part)},
            name=names,
        ),
        message(
            "assistant",
            {},
            content=st.none() | content(text_part, refusal_part),
            refusal=st.none() | text,
            tool_calls=st.lists(tool_call, min_size=1, max_size=2),
            name=names,
        ),
        message("tool", {"content": content(text_part), "tool_call_id": names}),
    ),
    min_size=1,
    max_size=4,
)

function = st.fixed_dictionaries(
    {"name": names},
    optional={"description": text, "parameters": json_objects, "strict": st.booleans()},
)
tools = st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("function"), "function": function}),
        st.fixed_dictionaries(
            {"type": st.just("custom"), "custom": st.fixed_dictionaries({"name": names})}
        ),
    ),
    max_size=3,
)
tool_choice = st.sampled_from(["none", "auto", "required"]) | st.builds(
    lambda name: {"type": "function", "function": {"name": name}}, names
)
response_format = st.sampled_from([{"type": "text"}, {"type": "json_object"}]) | st.builds(
    lambda name, schema, strict: {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": strict},
    },
    names,
    json_objects,
    st.booleans(),
)

#: The documented optional members, each with its documented values.
MEMBERS: dict[str, st.SearchStrategy[Any]] = {
    "audio": st.fixed_dictionaries(
        {"format": st.sampled_from(["wav", "mp3", "pcm16"]), "voice": names}
    ),
    "frequency_penalty": number(-2, 2),
    "logit_bias": st.dictionaries(st.integers(0, 99999).map(str), st.integers(-100, 100)),
    "logprobs": st.booleans(),
    "max_completion_tokens": st.integers(1, 2**32),
    "max_tokens": st.integers(1, 2**32),
    "metadata": st.dictionaries(st.text(max_size=64), st.text(max_size=20), max_size=16),
    "modalities": st.lists(st.sampled_from(["text", "audio"]), max_size=2),
    "parallel_tool_calls": st.booleans(),
    "prediction": st.builds(lambda c: {"type": "content", "content": c}, content(text_part)),
    "presence_penalty": number(-2, 2),
    "prompt_cache_key": text,
    "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high"]),
    "response_format": response_format,
    "safety_identifier": st.text(max_size=128),
    "seed": int64,
    "service_tier": st.sampled_from(["auto", "default", "flex", "priority"]),
    "stop": text | st.lists(text, max_size=4),
    "store": st.booleans(),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "temperature": number(0, 2),
    "tool_choice": tool_choice,
    "tools": tools,
    "top_p": number(0, 1),
    "user": st.text(max_size=40),
    "verbosity": st.sampled_from(["low", "medium", "high"]),
    "web_search_options": st.fixed_dictionaries(
        {}, optional={"search_context_size": st.sampled_from(["low", "medium", "high"])}
    ),
}

# Members no Chat Completions reference names: a provider's own options (vLLM's top_k…).
unknown_members = st.dictionaries(
    st.from_regex(r"x_[a-z_]{1,10}", fullmatch=True), json_values, max_size=3
)


def _with_top_logprobs(body: dict[str, Any], top: int | None) -> dict[str, Any]:
    """``top_logprobs`` is documented only alongside ``logprobs: true``."""
    if top is not None:
        body = body | {"logprobs": True, "top_logprobs": top}
    return body


#: A valid Chat Completions body.
chat_bodies = st.builds(
    lambda required, optional, unknown, top: _with_top_logprobs(
        {**required, **optional, **unknown}, top
    ),
    st.fixed_dictionaries({"model": st.just("fake-model"), "messages": messages}),
    st.fixed_dictionaries({}, optional=MEMBERS),
    unknown_members,
    st.none() | st.integers(0, 20),
)
