"""The Anthropic worker's translation of Chat Completions requests, checked on the body the
upstream received over real HTTP (the fake provider), and its refusals, which never call it."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import pytest

from trio_orchestrator.compatibility import CHAT_COMPLETIONS
from trio_orchestrator.config import Config
from trio_orchestrator.errors import UnsupportedParameter
from trio_orchestrator.gateway import open_gateway
from trio_orchestrator.resilience import (
    BreakerConfig,
    CircuitBreakerLayer,
    ResilienceConfig,
    RetryConfig,
    RetryLayer,
    iter_layers,
)
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider, open_fake_provider
from trio_orchestrator.types import (
    TYPED_MEMBERS,
    GenerationParams,
    Message,
    PromptRequest,
    Tool,
    ToolCall,
)
from trio_orchestrator.workers import AnthropicWorker, collect
from trio_orchestrator.workers.anthropic_request import _TRANSLATIONS, REASONING_BUDGETS

PNG = "iVBORw0KGgo="  # the PNG signature, base64: enough for a translator
PDF = base64.b64encode(b"%PDF-1.4 fake").decode()


@attrs.define
class Upstream:
    """The fake Anthropic upstream and a worker calling it."""

    fake: FakeProvider
    worker: AnthropicWorker

    async def sent(self, *messages: Message, **params: Any) -> dict[str, Any]:
        """Run a request; return the JSON body the upstream received."""
        await collect(self.worker, request(*messages, **params))
        body: dict[str, Any] = self.fake.requests[-1].body
        return body

    async def refused(self, *messages: Message, **params: Any) -> UnsupportedParameter:
        """Run a request that must be refused; return the refusal (nothing was sent)."""
        with pytest.raises(UnsupportedParameter) as info:
            await collect(self.worker, request(*messages, **params))
        assert self.fake.requests == []
        return info.value


def request(*messages: Message, **params: Any) -> PromptRequest:
    """A request for model ``claude`` with ``messages`` (default: one user turn)."""
    chat = messages or (Message("user", "hi"),)
    return PromptRequest(messages=chat, params=GenerationParams(model="claude", **params))


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A fake provider on a free loopback port, and an Anthropic worker named ``up``."""
    async with open_fake_provider(Behaviour(tokens=3)) as fake, httpx.AsyncClient() as client:
        yield Upstream(fake, AnthropicWorker(client, fake.base_url, name="up"))


def user(*parts: dict[str, Any]) -> Message:
    """A user message of content parts (its text, the text parts joined)."""
    text = "".join(p["text"] for p in parts if p["type"] == "text")
    return Message("user", text, parts=parts)


# --------------------------------------------------------------- response_format


async def test_json_schema_becomes_structured_output(upstream: Upstream) -> None:
    """response_format json_schema → output_config.format; the description joins the schema."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = {"name": "thing", "description": "one thing", "schema": schema, "strict": True}
    extra = {"response_format": {"type": "json_schema", "json_schema": spec}}
    body = await upstream.sent(extra=extra)
    assert body["output_config"] == {
        "format": {"type": "json_schema", "schema": {**schema, "description": "one thing"}}
    }
    assert "response_format" not in body


async def test_structured_output_answer_is_the_text(upstream: Upstream) -> None:
    """The structured answer comes back as the message's text, unchanged."""
    upstream.fake.script(Behaviour(text='{"a": 1}'))
    spec = {"name": "t", "schema": {"type": "object"}}
    params = GenerationParams(
        model="claude", extra={"response_format": {"type": "json_schema", "json_schema": spec}}
    )
    completion = await collect(upstream.worker, PromptRequest(input="q", params=params))
    assert completion.text == '{"a": 1}'


async def test_text_response_format_asks_for_nothing(upstream: Upstream) -> None:
    """response_format text is the default: nothing is sent for it."""
    body = await upstream.sent(extra={"response_format": {"type": "text"}})
    assert "output_config" not in body
    assert "response_format" not in body


async def test_json_object_is_refused(upstream: Upstream) -> None:
    """json_object has no schema for Anthropic's structured outputs: refused by name."""
    refusal = await upstream.refused(extra={"response_format": {"type": "json_object"}})
    assert refusal.param == "response_format"
    assert "json_schema" in str(refusal)
    assert refusal.status == 400


async def test_json_schema_without_schema_is_refused(upstream: Upstream) -> None:
    """A json_schema format without its schema is refused, naming the schema's path."""
    extra = {"response_format": {"type": "json_schema", "json_schema": {"name": "t"}}}
    refusal = await upstream.refused(extra=extra)
    assert refusal.param == "response_format.json_schema.schema"


async def test_native_output_config_merges_with_the_format(upstream: Upstream) -> None:
    """Anthropic's own output_config members join the translated format."""
    spec = {"name": "t", "schema": {"type": "object"}}
    extra = {
        "response_format": {"type": "json_schema", "json_schema": spec},
        "output_config": {"effort": "low"},
    }
    body = await upstream.sent(extra=extra)
    assert body["output_config"] == {
        "format": {"type": "json_schema", "schema": {"type": "object"}},
        "effort": "low",
    }


# --------------------------------------------------------------- reasoning_effort


@pytest.mark.parametrize("effort", sorted(REASONING_BUDGETS))
async def test_reasoning_effort_becomes_a_thinking_budget(upstream: Upstream, effort: str) -> None:
    """Without a token limit, the budget is the effort's and max_tokens leaves answer room."""
    body = await upstream.sent(extra={"reasoning_effort": effort})
    budget = REASONING_BUDGETS[effort]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] == budget + upstream.worker.max_tokens
    assert "reasoning_effort" not in body


async def test_reasoning_budget_fits_under_the_clients_limit(upstream: Upstream) -> None:
    """With a token limit (which counts reasoning), the budget is cut to stay under it."""
    body = await upstream.sent(max_tokens=5000, extra={"reasoning_effort": "high"})
    assert body["max_tokens"] == 5000
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4999}


async def test_reasoning_with_no_room_for_a_budget_is_refused(upstream: Upstream) -> None:
    """A limit of 1024 tokens or less cannot hold Anthropic's smallest budget: refused."""
    refusal = await upstream.refused(max_tokens=1000, extra={"reasoning_effort": "low"})
    assert refusal.param == "reasoning_effort"
    assert "1024" in str(refusal)


async def test_reasoning_effort_none_disables_thinking(upstream: Upstream) -> None:
    """reasoning_effort none → thinking disabled, max_tokens untouched."""
    body = await upstream.sent(extra={"reasoning_effort": "none"})
    assert body["thinking"] == {"type": "disabled"}
    assert body["max_tokens"] == upstream.worker.max_tokens


async def test_reasoning_effort_with_native_thinking_is_refused(upstream: Upstream) -> None:
    """Both reasoning_effort and Anthropic's thinking: the request must choose one."""
    thinking = {"type": "enabled", "budget_tokens": 2000}
    refusal = await upstream.refused(extra={"reasoning_effort": "low", "thinking": thinking})
    assert refusal.param == "thinking"


# ------------------------------------------------------------ tools and choices


TOOL = Tool("f", "does f", {"type": "object", "properties": {}})


async def test_parallel_tool_calls_false_disables_parallel_use(upstream: Upstream) -> None:
    """parallel_tool_calls false → tool_choice auto with disable_parallel_tool_use."""
    body = await upstream.sent(tools=(TOOL,), extra={"parallel_tool_calls": False})
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert "parallel_tool_calls" not in body


async def test_parallel_tool_calls_false_keeps_the_choice(upstream: Upstream) -> None:
    """With tool_choice required, the flag joins Anthropic's `any` choice."""
    extra = {"parallel_tool_calls": False}
    body = await upstream.sent(tools=(TOOL,), tool_choice="required", extra=extra)
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_parallel_tool_calls_without_tools_asks_for_nothing(upstream: Upstream) -> None:
    """Without tools there is nothing to run in parallel: no tool_choice is invented."""
    body = await upstream.sent(extra={"parallel_tool_calls": False})
    assert "tool_choice" not in body
    assert "parallel_tool_calls" not in body


async def test_named_function_choice_and_strict_tools(upstream: Upstream) -> None:
    """A named function choice → {type: tool}; a strict function tool stays strict."""
    wire = [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {}}}]
    choice = {"type": "function", "function": {"name": "f"}}
    body = await upstream.sent(tools=(TOOL,), tool_choice=choice, extra={"tools": wire})
    assert body["tool_choice"] == {"type": "tool", "name": "f"}
    assert body["tools"] == [
        {"name": "f", "description": "does f", "input_schema": TOOL.parameters, "strict": True}
    ]


async def test_a_tool_that_is_not_a_function_is_refused(upstream: Upstream) -> None:
    """Custom tools have no Anthropic form: refused, naming the tool's type."""
    wire = [{"type": "custom", "custom": {"name": "grammar"}}]
    refusal = await upstream.refused(extra={"tools": wire})
    assert refusal.param == "tools[0].type"


async def test_allowed_tools_choice_is_refused(upstream: Upstream) -> None:
    """A tool_choice Anthropic has no form for is refused, not sent as it came."""
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}
    refusal = await upstream.refused(tools=(TOOL,), tool_choice=choice)
    assert refusal.param == "tool_choice"


# --------------------------------------------------------- user ids and tiers


@pytest.mark.parametrize("member", ["user", "safety_identifier"])
async def test_user_ids_become_metadata_user_id(upstream: Upstream, member: str) -> None:
    """user and safety_identifier → metadata.user_id."""
    body = await upstream.sent(extra={member: "u-123"})
    assert body["metadata"] == {"user_id": "u-123"}
    assert member not in body


async def test_two_different_user_ids_are_refused(upstream: Upstream) -> None:
    """user and safety_identifier naming different users cannot both travel."""
    refusal = await upstream.refused(extra={"user": "a", "safety_identifier": "b"})
    assert refusal.param == "safety_identifier"


async def test_openai_metadata_is_refused(upstream: Upstream) -> None:
    """OpenAI's metadata tags have no Anthropic home (its metadata is a user id only)."""
    refusal = await upstream.refused(extra={"metadata": {"team": "a"}})
    assert refusal.param == "metadata"


@pytest.mark.parametrize(
    ("tier", "sent"), [("auto", "auto"), ("priority", "auto"), ("default", "standard_only")]
)
async def test_service_tiers_map(upstream: Upstream, tier: str, sent: str) -> None:
    """OpenAI's auto/priority/default tiers → Anthropic's auto/auto/standard_only."""
    body = await upstream.sent(extra={"service_tier": tier})
    assert body["service_tier"] == sent


async def test_flex_service_tier_is_refused(upstream: Upstream) -> None:
    """Anthropic has no flex processing: refused by name."""
    refusal = await upstream.refused(extra={"service_tier": "flex"})
    assert refusal.param == "service_tier"


# --------------------------------------------- members with no equivalent, no-ops


NO_EQUIVALENT = {
    "audio": {"voice": "alloy", "format": "wav"},
    "frequency_penalty": 0.5,
    "function_call": "auto",
    "functions": [{"name": "f", "parameters": {}}],
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "metadata": {"k": "v"},
    "modalities": ["text", "audio"],
    "moderation": {"model": "omni-moderation-latest"},
    "n": 2,
    "prediction": {"type": "content", "content": "x"},
    "presence_penalty": -1,
    "prompt_cache_key": "k",
    "prompt_cache_options": {"mode": "explicit"},
    "prompt_cache_retention": "24h",
    "store": True,
    "top_logprobs": 3,
    "verbosity": "low",
    "web_search_options": {},
}


@pytest.mark.parametrize(("member", "value"), sorted(NO_EQUIVALENT.items()))
async def test_members_with_no_equivalent_are_refused(
    upstream: Upstream, member: str, value: Any
) -> None:
    """A member Anthropic cannot carry is a 400 naming it, before any call."""
    refusal = await upstream.refused(extra={member: value})
    assert refusal.param == member
    assert f"`{member}`" in str(refusal)
    assert refusal.provider == "up"


def test_every_refused_member_has_a_refusal_test() -> None:
    """The table's refused members (but seed, a typed one) are all tried above."""
    refused = {name for name, rule in CHAT_COMPLETIONS.items() if rule.anthropic == "refused"}
    assert refused - {"seed"} == set(NO_EQUIVALENT)


NO_OPS = {
    "frequency_penalty": 0,
    "logit_bias": {},
    "logprobs": False,
    "metadata": {},
    "modalities": ["text"],
    "n": 1,
    "presence_penalty": 0.0,
    "store": False,
    "top_logprobs": 0,
    "verbosity": "medium",
    "audio": None,
    "functions": [],
    "parallel_tool_calls": True,
    "user": None,
}


async def test_no_op_values_are_accepted_and_not_sent(upstream: Upstream) -> None:
    """A member whose value asks for nothing (OpenAI's default, or null) passes unsent."""
    body = await upstream.sent(extra=NO_OPS)
    assert set(NO_OPS).isdisjoint(body)


async def test_a_seed_is_refused(upstream: Upstream) -> None:
    """The typed seed has no Anthropic equivalent either."""
    refusal = await upstream.refused(seed=7)
    assert refusal.param == "seed"


async def test_a_temperature_above_one_is_refused(upstream: Upstream) -> None:
    """OpenAI's temperature runs to 2, Anthropic's to 1: refused rather than rescaled."""
    refusal = await upstream.refused(temperature=1.5)
    assert refusal.param == "temperature"
    body = await upstream.sent(temperature=0.7, top_p=0.9)
    assert (body["temperature"], body["top_p"]) == (0.7, 0.9)


async def test_anthropic_members_pass_through(upstream: Upstream) -> None:
    """Anthropic's own members (top_k, thinking…) are sent unchanged."""
    thinking = {"type": "enabled", "budget_tokens": 2048}
    body = await upstream.sent(max_tokens=4000, extra={"top_k": 5, "thinking": thinking})
    assert (body["top_k"], body["thinking"]) == (5, thinking)


async def test_an_unknown_member_is_refused(upstream: Upstream) -> None:
    """A member neither format knows is refused, never sent under a name Anthropic rejects."""
    refusal = await upstream.refused(extra={"repetition_penalty": 1.1})
    assert refusal.param == "repetition_penalty"


async def test_typed_members_in_extra_are_read_from_the_typed_fields(upstream: Upstream) -> None:
    """The service's copies of typed members in extra are not sent under OpenAI names."""
    extra = {"max_completion_tokens": 50, "stop": "X", "temperature": 0.2}
    body = await upstream.sent(max_tokens=50, stop=("X",), temperature=0.2, extra=extra)
    assert body["stop_sequences"] == ["X"]
    assert "max_completion_tokens" not in body
    assert "stop" not in body


# ------------------------------------------------------------------ messages


async def test_a_data_url_image_becomes_a_base64_block(upstream: Upstream) -> None:
    """image_url with a data: URL → image block, base64 source with its media type."""
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    body = await upstream.sent(user({"type": "text", "text": "what is it?"}, image))
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is it?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
            ],
        }
    ]


async def test_an_https_image_becomes_a_url_block(upstream: Upstream) -> None:
    """image_url with an https URL → image block, url source; detail high is Claude's way."""
    url = "https://example.com/cat.jpg"
    image = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
    body = await upstream.sent(user(image))
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": url}}
    ]


IMAGE = "messages[0].content[0].image_url"


@pytest.mark.parametrize(
    ("image", "param"),
    [
        (
            {"url": "https://x.test/a.png", "detail": "low"},
            "messages[0].content[0].image_url.detail",
        ),
        ({"url": "data:image/bmp;base64,Qk0="}, "messages[0].content[0].image_url.url"),
        ({"url": "data:image/png,rawbytes"}, "messages[0].content[0].image_url.url"),
        ({"url": "ftp://x.test/a.png"}, "messages[0].content[0].image_url.url"),
    ],
)
async def test_images_anthropic_cannot_read_are_refused(
    upstream: Upstream, image: dict[str, Any], param: str
) -> None:
    """Low detail, unsupported media types, non-base64 data and other schemes are refused."""
    refusal = await upstream.refused(user({"type": "image_url", "image_url": image}))
    assert refusal.param == param


async def test_a_parts_cache_control_travels_with_its_block(upstream: Upstream) -> None:
    """A content part's cache_control (Anthropic's breakpoint) stays on its block."""
    part = {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}
    body = await upstream.sent(user(part))
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}
    ]


async def test_a_pdf_file_becomes_a_document_block(upstream: Upstream) -> None:
    """file with PDF file_data → document block, base64 source, the filename as title."""
    data = f"data:application/pdf;base64,{PDF}"
    part = {"type": "file", "file": {"file_data": data, "filename": "report.pdf"}}
    body = await upstream.sent(user(part))
    assert body["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
            "title": "report.pdf",
        }
    ]


async def test_a_text_file_becomes_a_plain_text_document(upstream: Upstream) -> None:
    """A bare-base64 .txt file → document block with a text source, decoded."""
    data = base64.b64encode("héllo".encode()).decode()
    part = {"type": "file", "file": {"file_data": data, "filename": "note.txt"}}
    body = await upstream.sent(user(part))
    assert body["messages"][0]["content"][0]["source"] == {
        "type": "text",
        "media_type": "text/plain",
        "data": "héllo",
    }


async def test_a_file_id_is_refused(upstream: Upstream) -> None:
    """An OpenAI file id means nothing to Anthropic: refused, naming its path."""
    refusal = await upstream.refused(user({"type": "file", "file": {"file_id": "file-1"}}))
    assert refusal.param == "messages[0].content[0].file.file_id"


async def test_input_audio_is_refused(upstream: Upstream) -> None:
    """Audio input is refused, naming the part's path in the client's request."""
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    chat = (Message("system", "be brief"), user({"type": "text", "text": "hear"}, audio))
    refusal = await upstream.refused(*chat)
    assert refusal.param == "messages[1].content[1]"


async def test_system_and_developer_messages_become_system(upstream: Upstream) -> None:
    """System messages (developer ones arrive as system) join into `system`."""
    chat = (
        Message("system", "be brief", wire={"role": "developer", "content": "be brief"}),
        Message("user", "q"),
        Message("system", "be kind"),
    )
    body = await upstream.sent(*chat)
    assert body["system"] == "be brief\n\nbe kind"
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "q"}]}]


async def test_a_participant_name_is_refused(upstream: Upstream) -> None:
    """Anthropic has no message names: refused rather than dropped."""
    refusal = await upstream.refused(Message("user", "hi", name="ann"))
    assert refusal.param == "messages[0].name"


async def test_a_tool_result_of_parts_keeps_its_blocks(upstream: Upstream) -> None:
    """A tool message of content parts → tool_result whose content is those blocks."""
    chat = (
        Message("user", "q"),
        Message("assistant", "", tool_calls=(ToolCall("t1", "f", "{}"),)),
        Message("tool", "4", tool_call_id="t1", parts=({"type": "text", "text": "4"},)),
    )
    body = await upstream.sent(*chat, tools=(TOOL,))
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "4"}]}
        ],
    }


async def test_an_assistant_refusal_is_kept_as_text(upstream: Upstream) -> None:
    """An assistant turn's refusal (member or part) travels as its text."""
    refusal = Message("assistant", "", wire={"role": "assistant", "refusal": "I can't."})
    body = await upstream.sent(Message("user", "q"), refusal, Message("user", "why?"))
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "I can't."}],
    }


# ------------------------------------------------------- the table and the code


def test_each_translated_member_has_a_translation() -> None:
    """Every member the table says is translated or forwarded is handled by the code."""
    handled = set(_TRANSLATIONS) | TYPED_MEMBERS | {"model", "messages", "stream", "stream_options"}
    carried = {n for n, r in CHAT_COMPLETIONS.items() if r.anthropic != "refused"}
    assert carried <= handled
    assert set(_TRANSLATIONS) <= carried


# ------------------------------------------------- refusals and the resilience layers


async def test_refusals_never_trip_the_breaker_nor_retry(upstream: Upstream) -> None:
    """With breaker (threshold 1) and retry on, refusals leave the circuit closed, unretried."""
    breaker = BreakerConfig(enabled=True, failure_threshold=1, cooldown=60.0, jitter=0.0)
    retry = RetryConfig(enabled=True, max_attempts=3, initial_backoff=0.01)
    config = Config(resilience=ResilienceConfig(breaker=breaker, retry=retry))
    async with open_gateway(config, worker=upstream.worker) as gateway:
        worker = gateway.worker
        for _ in range(3):
            with pytest.raises(UnsupportedParameter):
                await collect(worker, request(extra={"logit_bias": {"1": 5}}))
        completion = await collect(worker, request())
        layers = list(iter_layers(worker))
    assert completion.text
    assert len(upstream.fake.requests) == 1  # the good request, once
    (stats,) = next(w for w in layers if isinstance(w, CircuitBreakerLayer)).statistics()
    assert (stats.state, stats.failures, stats.times_opened) == ("closed", 0, 0)
    retries = next(w for w in layers if isinstance(w, RetryLayer)).statistics()
    assert (retries.attempts, retries.retries) == (4, 0)
    assert retries.gave_up["not_retryable"] == 3
