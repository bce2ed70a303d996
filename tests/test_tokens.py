"""Token estimation, required capabilities and the pre-call check."""

from __future__ import annotations

import sys
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator import GenerationParams, Message, PromptRequest, Tool
from trio_orchestrator.routing import (
    ModelDeployment,
    estimate_prompt_tokens,
    precheck,
    required_capabilities,
    tokens,
)
from trio_orchestrator.routing.tokens import heuristic_tokens


def test_the_heuristic_is_four_characters_a_token_rounded_up() -> None:
    """ceil(chars / 4): 0 → 0, 1 → 1, 8 → 2, 9 → 3."""
    assert [heuristic_tokens("x" * n) for n in (0, 1, 8, 9)] == [0, 1, 2, 3]


def test_a_prompt_counts_messages_framing_and_the_reply_primer() -> None:
    """Two messages of 8 characters: 2 + 4 each, plus 3 for the reply."""
    request = PromptRequest(messages=[Message("system", "abcdefgh"), Message("user", "12345678")])
    assert estimate_prompt_tokens(request) == 2 * (2 + 4) + 3


def test_offered_tools_add_to_the_prompt() -> None:
    """A tool's JSON description counts towards the input tokens."""
    plain = PromptRequest(input="hi")
    tooled = PromptRequest(input="hi", params=GenerationParams(tools=(Tool("lookup", "finds"),)))
    assert estimate_prompt_tokens(tooled) > estimate_prompt_tokens(plain)


@given(st.text(max_size=200), st.text(max_size=200))
def test_the_estimate_grows_with_the_prompt(a: str, b: str) -> None:
    """Appending text never lowers the estimate."""
    short = PromptRequest(input=a)
    long = PromptRequest(input=a + b)
    assert estimate_prompt_tokens(long) >= estimate_prompt_tokens(short)


def test_tools_json_mode_and_vision_are_required_when_asked_for() -> None:
    """Tools offered, a JSON response_format, and meta vision=1 each need a capability."""
    params = GenerationParams(
        tools=(Tool("f"),), extra={"response_format": {"type": "json_object"}}
    )
    request = PromptRequest(input="x", params=params, meta={"vision": "1"})
    assert required_capabilities(request) == {"tools", "json_mode", "vision"}
    assert required_capabilities(PromptRequest(input="x")) == frozenset()


def test_precheck_names_the_missing_capability() -> None:
    """A deployment lacking a needed capability is refused with the capability named."""
    d = ModelDeployment("d", "m", "p", capabilities=("streaming",))
    assert precheck(d, 10, 10, frozenset({"vision", "tools"})) == "lacks tools, vision"


def test_precheck_refuses_max_tokens_above_the_output_limit() -> None:
    """max_tokens beyond the deployment's max_output_tokens is refused before the call."""
    d = ModelDeployment("d", "m", "p", max_output_tokens=100)
    assert precheck(d, 10, 101, frozenset()) == "max_tokens 101 > max_output_tokens 100"


@given(prompt=st.integers(0, 10_000), max_tokens=st.none() | st.integers(1, 4000))
def test_precheck_passes_exactly_when_prompt_and_answer_fit(
    prompt: int, max_tokens: int | None
) -> None:
    """The window check passes iff prompt + max_tokens (or 1) fits the context window."""
    d = ModelDeployment("d", "m", "p", context_window=4096, max_output_tokens=4096)
    fits = prompt + (max_tokens or 1) <= 4096
    assert (precheck(d, prompt, max_tokens, frozenset()) is None) == fits


def test_tiktoken_counts_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiktoken module importable, its encoding counts the tokens, not the heuristic."""

    class Encoding:
        def encode(self, text: str, disallowed_special: object = ()) -> list[int]:
            return [0] * len(text)  # one token per character: unlike the heuristic

    fake = types.ModuleType("tiktoken")
    fake.get_encoding = lambda name: Encoding()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    monkeypatch.delenv(tokens.TOKENIZER_ENV, raising=False)  # the tests' own setting
    tokens._counter.cache_clear()
    try:
        assert estimate_prompt_tokens(PromptRequest(input="12345678")) == 8 + 4 + 3
    finally:
        tokens._counter.cache_clear()


def test_the_heuristic_setting_never_loads_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TRIO_ORCHESTRATOR_TOKENIZER=heuristic`` keeps tiktoken (and its download) unused."""

    def refuse(name: str) -> object:
        raise AssertionError("tiktoken was asked for its encoding")

    fake = types.ModuleType("tiktoken")
    fake.get_encoding = refuse  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    monkeypatch.setenv(tokens.TOKENIZER_ENV, "heuristic")
    tokens._counter.cache_clear()
    try:
        assert estimate_prompt_tokens(PromptRequest(input="12345678")) == 2 + 4 + 3
    finally:
        tokens._counter.cache_clear()


def test_without_tiktoken_the_heuristic_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """When tiktoken cannot be imported, the four-characters rule is used."""
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    tokens._counter.cache_clear()
    try:
        assert estimate_prompt_tokens(PromptRequest(input="12345678")) == 2 + 4 + 3
    finally:
        tokens._counter.cache_clear()
