"""Presets for OpenAI-compatible services through the served gateway, with the official
``openai`` SDK in front: each preset answers, and each quirk its service's reference
documents is handled where the client meets it -- a member the service refuses is a 400
naming it that never reaches the service, a member it names differently is renamed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from trio_orchestrator.testing.fake_provider import Behaviour
from trio_orchestrator.workers.presets import PRESETS

from .conftest import UPSTREAM_KEY, Gateway, running

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module", params=sorted(PRESETS))
def preset(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """The gateway in front of one preset's provider (the fake upstream), each in turn."""
    yield from running(request.param)


@pytest.fixture(scope="module")
def groq() -> Iterator[Gateway]:
    """The gateway in front of a ``groq`` provider."""
    yield from running("groq")


def _refused(gw: Gateway, member: str, **create: Any) -> openai.BadRequestError:
    """Send a chat the service refuses; check that it never reached the upstream."""
    gw.clear()
    arguments: dict[str, Any] = {"model": "fake-model", "messages": HELLO, **create}
    with pytest.raises(openai.BadRequestError) as caught:
        gw.openai().chat.completions.create(**arguments)
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == member
    assert gw.received() == []
    return caught.value


def test_every_preset_answers_through_the_gateway(preset: Gateway) -> None:
    """A plain chat reaches /chat/completions under the preset's own API root (Groq's
    ``/openai/v1``, OpenRouter's ``/api/v1``) with the key as a Bearer token."""
    preset.clear()
    answer = preset.openai().chat.completions.create(model="fake-model", messages=HELLO)
    assert answer.choices[0].message.content
    received = preset.last()
    assert received.path == urlsplit(PRESETS[preset.upstream].base_url).path + "/chat/completions"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


@pytest.mark.parametrize(
    ("member", "create"),
    [
        ("logprobs", {"logprobs": True}),
        ("logit_bias", {"logit_bias": {"50256": -100}}),
    ],
)
def test_groq_refuses_what_its_compatibility_page_lists(
    groq: Gateway, member: str, create: dict[str, Any]
) -> None:
    """Groq's unsupported members are a 400 naming the member, before any call."""
    error = _refused(groq, member, **create)
    assert "Groq" in error.message


def test_groq_refuses_a_message_name(groq: Gateway) -> None:
    """``messages[].name`` is refused for Groq, naming the message."""
    named: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!", "name": "ada"}]
    _refused(groq, "messages[0].name", messages=named)


def test_groq_gets_n_choices_one_call_at_a_time(groq: Gateway) -> None:
    """``n`` > 1, which Groq refuses, is fanned out by the gateway: Groq never sees ``n``."""
    groq.clear()
    answer = groq.openai().chat.completions.create(model="fake-model", messages=HELLO, n=2)
    assert len(answer.choices) == 2
    assert len(groq.received()) == 2
    assert all("n" not in r.body for r in groq.received())


def test_mistral_gets_seed_as_random_seed() -> None:
    """Mistral's name for ``seed`` is ``random_seed``; its own ``safe_prompt`` travels as sent."""
    for gw in running("mistral"):
        gw.openai().chat.completions.create(
            model="mistral-small-latest",
            messages=HELLO,
            seed=7,
            extra_body={"safe_prompt": True},
        )
        body = gw.last().body
        assert body["random_seed"] == 7
        assert "seed" not in body
        assert body["safe_prompt"] is True


def test_deepseek_reasoner_refuses_logprobs_and_deepseek_chat_takes_them() -> None:
    """``logprobs`` is refused for deepseek-reasoner only, as DeepSeek's guide says."""
    for gw in running("deepseek"):
        _refused(gw, "logprobs", model="deepseek-reasoner", logprobs=True)
        gw.openai().chat.completions.create(model="deepseek-chat", messages=HELLO, logprobs=True)
        assert gw.last().body["logprobs"] is True


def test_ollama_refuses_logit_bias() -> None:
    """``logit_bias``, not among Ollama's supported request fields, is a 400."""
    for gw in running("ollama"):
        _refused(gw, "logit_bias", logit_bias={"1": 5})


def test_deepseeks_cache_hits_are_the_clients_cached_tokens() -> None:
    """DeepSeek's ``prompt_cache_hit_tokens`` reach the client as OpenAI's
    ``prompt_tokens_details.cached_tokens``; its reasoning travels beside the answer."""
    recorded = json.loads(
        (Path(__file__).parent / "fixtures" / "deepseek_chat_cached.json").read_text()
    )
    for gw in running("deepseek", stream=False):
        gw.script(Behaviour(body=recorded))
        answer = gw.openai().chat.completions.create(model="deepseek-reasoner", messages=HELLO)
        usage = answer.usage
        assert usage is not None
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 1536
        assert (answer.choices[0].message.model_extra or {})["reasoning_content"]
