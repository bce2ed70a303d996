"""Local model servers -- llama.cpp's ``llama-server``, vLLM and Ollama -- through the served
gateway with the official ``openai`` SDK in front, replaying answers and errors recorded from
their documentation and source (``fixtures/llamacpp_*``, ``vllm_*``, ``ollama_*``; see its
README). The gateway speaks their OpenAI-compatible ``/v1`` API (for Ollama, not its native
``/api/*``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import Gateway, running

FIXTURES = Path(__file__).parent / "fixtures"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]


def recorded(name: str) -> Any:
    """A recorded answer from ``fixtures/``."""
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def llamacpp() -> Iterator[Gateway]:
    """The gateway in front of a ``llamacpp`` provider, streaming from it."""
    yield from running("llamacpp", api_keys=[])


@pytest.fixture(scope="module")
def llamacpp_json() -> Iterator[Gateway]:
    """The gateway in front of a ``llamacpp`` provider, asking it for JSON answers."""
    yield from running("llamacpp", api_keys=[], stream=False)


@pytest.fixture(scope="module")
def vllm() -> Iterator[Gateway]:
    """The gateway in front of a ``vllm`` provider, asking it for JSON answers."""
    yield from running("vllm", api_keys=[], stream=False)


@pytest.fixture(scope="module")
def ollama() -> Iterator[Gateway]:
    """The gateway in front of an ``ollama`` provider, streaming from it."""
    yield from running("ollama", api_keys=[])


def _chat(gw: Gateway, **create: Any) -> Any:
    arguments: dict[str, Any] = {"model": "local", "messages": HELLO, **create}
    return gw.openai().chat.completions.create(**arguments)


# ----------------------------------------------------------------- llama.cpp


def test_llamacpp_timings_reach_the_client(llamacpp_json: Gateway) -> None:
    """llama-server's ``timings`` travel with its answer; its usage is read."""
    body = recorded("llamacpp_chat_timings.json")
    llamacpp_json.script(Behaviour(body=body))
    answer = _chat(llamacpp_json)
    assert answer.choices[0].message.content == "Hello! How can I help you today?"
    assert (answer.model_extra or {})["timings"] == body["timings"]
    assert answer.usage.prompt_tokens == 20
    assert not llamacpp_json.last().headers.get("authorization")


def test_llamacpp_streamed_timings_reach_the_client(llamacpp: Gateway) -> None:
    """In a stream, llama-server's last chunk's ``timings`` reach the client's stream."""
    events = recorded("llamacpp_stream_timings.json")
    llamacpp.script(Behaviour(events=tuple(events)))
    with _chat(llamacpp, stream=True, stream_options={"include_usage": True}) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    timings = [(c.model_extra or {}).get("timings") for c in chunks]
    assert events[-1]["timings"] in timings
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


def test_llamacpp_context_overflow_is_a_context_length_error(llamacpp_json: Gateway) -> None:
    """llama-server's ``exceed_context_size_error`` is the client's context_length_exceeded."""
    llamacpp_json.script(Behaviour(status=400, body=recorded("llamacpp_error_context.json")))
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(llamacpp_json)
    assert caught.value.code == "context_length_exceeded"
    assert "8192 tokens" in caught.value.message


# ----------------------------------------------------------------- vLLM


def test_vllm_extra_sampling_fields_travel_as_sent(vllm: Gateway) -> None:
    """vLLM's own sampling members (top_k, min_p, repetition_penalty…) reach it unchanged."""
    extra = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "guided_choice": ["a", "b"]}
    _chat(vllm, extra_body=extra)
    body = vllm.last().body
    assert {k: body[k] for k in extra} == extra


def test_vllm_answer_parses_with_its_extra_members(vllm: Gateway) -> None:
    """vLLM's answer (``stop_reason``, ``prompt_logprobs``…) parses; its members travel."""
    body = recorded("vllm_chat.json")
    vllm.script(Behaviour(body=body))
    answer = _chat(vllm)
    assert answer.choices[0].message.content == "The capital of France is Paris."
    assert "stop_reason" in (answer.choices[0].model_extra or {})
    assert "prompt_logprobs" in (answer.model_extra or {})
    assert answer.usage.total_tokens == 50


def test_vllm_context_overflow_is_a_context_length_error(vllm: Gateway) -> None:
    """vLLM's top-level ``{"object": "error"}`` body over the context is a context error."""
    vllm.script(Behaviour(status=400, body=recorded("vllm_error_context.json")))
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(vllm)
    assert caught.value.code == "context_length_exceeded"


# ----------------------------------------------------------------- Ollama


def test_ollama_answer_streams(ollama: Gateway) -> None:
    """A chat reaches Ollama's ``/v1/chat/completions`` (not ``/api/chat``), no key sent."""
    with _chat(ollama, stream=True) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    assert ollama.last().path == "/v1/chat/completions"
    assert "authorization" not in ollama.last().headers


def test_ollama_busy_is_overloaded_not_a_server_error(ollama: Gateway) -> None:
    """Ollama's 503 "server busy" (typed ``api_error``, as it types every status but 400 and
    404) reaches the client as a 503 upstream_overloaded."""
    ollama.script(Behaviour(status=503, body=recorded("ollama_error_busy.json")))
    with pytest.raises(openai.InternalServerError) as caught:
        _chat(ollama)
    assert caught.value.status_code == 503
    assert caught.value.code == "upstream_overloaded"


def test_ollama_missing_model_is_a_404(ollama: Gateway) -> None:
    """Ollama's 404 ``not_found_error`` (a model not pulled) is the client's 404."""
    ollama.script(Behaviour(status=404, body=recorded("ollama_error_not_found.json")))
    with pytest.raises(openai.NotFoundError) as caught:
        _chat(ollama)
    assert "try pulling it first" in caught.value.message
