"""How each member of a Chat Completions request travels to each kind of upstream.

The table is data, read by code: the Anthropic worker refuses a member the table marks
``refused`` (unless its value is a no-op), and ``docs/compatibility.md`` is generated from it
(``docs/gen_compatibility.py``; a test fails when the page drifts). An OpenAI-compatible
upstream receives every member unchanged, unknown ones included; an Anthropic upstream
receives each member translated to its Messages API equivalent, or the request is refused
with :class:`~trio_orchestrator.errors.UnsupportedParameter` naming the member.

The no-op rule: a member Anthropic cannot carry is still accepted when its value asks for
nothing — ``null``, or OpenAI's own default (``logprobs: false``, ``presence_penalty: 0``,
``n: 1``, ``modalities: ["text"]``…, listed per member in ``no_op``). Such a value is not sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import attrs

__all__ = [
    "ANTHROPIC_NATIVE",
    "CHAT_COMPLETIONS",
    "ENDPOINTS",
    "MESSAGE_CONTENT",
    "ContentRule",
    "MemberRule",
    "is_no_op",
    "render_markdown",
]

#: How a member reaches an Anthropic upstream.
Handling = Literal["forwarded", "translated", "refused", "gateway"]

_FORWARDED = "forwarded unchanged"


@attrs.frozen
class MemberRule:
    """How one top-level member of a Chat Completions request travels.

    Attributes:
        name: the member's wire name.
        anthropic: ``forwarded`` (same name, same meaning), ``translated`` (to
            ``anthropic_as``), ``refused`` (``UnsupportedParameter`` unless the value is a
            no-op) or ``gateway`` (the gateway itself acts on it).
        anthropic_as: the Messages API member it becomes (empty when refused).
        note: what the translation does, or why there is none and what to do instead.
        no_op: values besides ``null`` that ask for nothing (OpenAI's defaults); a refusing
            translator accepts them and sends nothing.
        openai: how an OpenAI-compatible upstream receives it.
    """

    name: str
    anthropic: Handling
    anthropic_as: str = ""
    note: str = ""
    no_op: tuple[Any, ...] = ()
    openai: str = _FORWARDED


@attrs.frozen
class ContentRule:
    """How one kind of message content travels to an Anthropic upstream (documentation;
    the translator's code is the behaviour, and its tests prove each row).

    Attributes:
        what: the message member or content part.
        anthropic: ``translated`` or ``refused``.
        anthropic_as: the Messages API form it takes.
        note: details.
    """

    what: str
    anthropic: Handling
    anthropic_as: str = ""
    note: str = ""


def _refused(name: str, note: str, *no_op: Any) -> MemberRule:
    return MemberRule(name, "refused", "", note, no_op)


_RULES = (
    MemberRule(
        "model",
        "forwarded",
        "model",
        "The deployment's model name when routing maps the requested one to it.",
        openai="forwarded (the deployment's model name)",
    ),
    MemberRule(
        "messages",
        "translated",
        "messages, system",
        "System and developer messages join into `system`; see *Message content* below.",
        openai="forwarded: each message exactly as the client sent it",
    ),
    MemberRule(
        "stream",
        "gateway",
        "",
        "The provider's `stream` setting decides how the gateway calls the upstream; the "
        "gateway answers the client in the form it asked for.",
        openai="set by the gateway (the provider's `stream` setting)",
    ),
    MemberRule(
        "stream_options",
        "gateway",
        "",
        "`include_usage` is honoured by the gateway.",
        openai="set by the gateway (it asks for usage when streaming)",
    ),
    _refused("audio", "Claude does not answer in audio."),
    _refused("frequency_penalty", "The Messages API has no repetition penalties.", 0),
    _refused("function_call", "Deprecated by OpenAI; send `tool_choice` instead."),
    _refused("functions", "Deprecated by OpenAI; send `tools` instead.", []),
    _refused("logit_bias", "The Messages API cannot bias tokens.", {}),
    _refused("logprobs", "The Messages API returns no log probabilities.", False),
    MemberRule(
        "max_completion_tokens",
        "translated",
        "max_tokens",
        "Anthropic requires `max_tokens`: the provider's `max_tokens` setting is sent when "
        "the request names none.",
    ),
    MemberRule(
        "max_tokens",
        "translated",
        "max_tokens",
        "`max_completion_tokens` wins when both are given.",
    ),
    _refused(
        "metadata",
        "OpenAI's tags for stored completions; Anthropic's `metadata` carries only a user id "
        "(send `user` or `safety_identifier` for that).",
        {},
    ),
    _refused("modalities", "Claude answers in text only.", ["text"]),
    _refused("moderation", "The Messages API has no moderation pass."),
    _refused("n", "Anthropic generates one choice per request.", 1),
    MemberRule(
        "parallel_tool_calls",
        "translated",
        "tool_choice.disable_parallel_tool_use",
        "`false` sets `disable_parallel_tool_use: true` (with `tool_choice` `auto` when "
        "none is given); `true` is the default. Without tools it asks for nothing.",
    ),
    _refused("prediction", "The Messages API has no predicted outputs."),
    _refused("presence_penalty", "The Messages API has no repetition penalties.", 0),
    _refused(
        "prompt_cache_key",
        "Anthropic caches by prefix, marked with `cache_control` (send Anthropic's "
        "`cache_control` member instead).",
    ),
    _refused("prompt_cache_options", "Anthropic caches with `cache_control` blocks instead."),
    _refused("prompt_cache_retention", "Anthropic caches with `cache_control` blocks instead."),
    MemberRule(
        "reasoning_effort",
        "translated",
        "thinking",
        "`none` → `{type: disabled}`; otherwise `{type: enabled, budget_tokens}` with minimal "
        "1024, low 2048, medium 8192, high 16384, xhigh 24576, max 27648 tokens (each fits a "
        "32k output limit with the default answer room). Without a token limit, `max_tokens` "
        "becomes the budget plus the provider's `max_tokens`; with one (which, as at OpenAI, "
        "counts the reasoning too) the budget is cut to fit under it, and a limit of 1024 or "
        "less is refused. Refused together with Anthropic's own `thinking`.",
    ),
    MemberRule(
        "response_format",
        "translated",
        "output_config.format",
        "`json_schema` → `{type: json_schema, schema}` (structured outputs, always strict; "
        "`json_schema.description` becomes the schema's `description`, `name` is OpenAI's "
        "label only); `text` asks for nothing; `json_object` is refused: Anthropic's "
        "structured outputs need a schema.",
    ),
    MemberRule(
        "safety_identifier",
        "translated",
        "metadata.user_id",
        "Refused when `user` names a different id.",
    ),
    _refused("seed", "The Messages API has no sampling seed."),
    MemberRule(
        "service_tier",
        "translated",
        "service_tier",
        "`auto` and `priority` → `auto` (priority capacity when the organisation has it), "
        "`default` → `standard_only`; `flex`, `scale` and `fast` are refused.",
    ),
    MemberRule("stop", "translated", "stop_sequences", "A string becomes a list of one."),
    _refused("store", "Anthropic stores no completions for later retrieval.", False),
    MemberRule(
        "temperature",
        "forwarded",
        "temperature",
        "Anthropic's range is 0 to 1: a value above 1 is refused rather than rescaled.",
    ),
    MemberRule(
        "tool_choice",
        "translated",
        "tool_choice",
        "`auto` → `auto`, `required` → `any`, `none` → `none`, a named function → "
        "`{type: tool, name}`; `allowed_tools` and custom tools are refused.",
    ),
    MemberRule(
        "tools",
        "translated",
        "tools",
        "A function tool → `{name, description, input_schema, strict}`; other tool types "
        "are refused.",
    ),
    _refused("top_logprobs", "The Messages API returns no log probabilities.", 0),
    MemberRule("top_p", "forwarded", "top_p"),
    MemberRule(
        "user",
        "translated",
        "metadata.user_id",
        "Refused when `safety_identifier` names a different id.",
    ),
    _refused("verbosity", "The Messages API has no verbosity control.", "medium"),
    _refused(
        "web_search_options",
        "Anthropic's web search is a server tool with its own answer blocks, not a request option.",
    ),
)

#: Every top-level member of a Chat Completions request, by wire name.
CHAT_COMPLETIONS: Mapping[str, MemberRule] = {rule.name: rule for rule in _RULES}

#: Messages API members with no Chat Completions counterpart: sent to an Anthropic upstream
#: unchanged when a client puts them in its request (``extra_body`` in the OpenAI SDKs).
#: Any other member the table does not know is refused, never sent under a name Anthropic
#: would reject with a confusing error.
ANTHROPIC_NATIVE = frozenset(
    [
        "cache_control",
        "container",
        "diagnostics",
        "inference_geo",
        "output_config",
        "speed",
        "thinking",
        "top_k",
        "user_profile_id",
        "workspace_id",
    ]
)

#: Message members and content parts, as an Anthropic upstream receives them.
MESSAGE_CONTENT = (
    ContentRule(
        "role `system` / `developer`",
        "translated",
        "`system`",
        "Joined, in order, with blank lines between them, wherever they stand in the chat.",
    ),
    ContentRule("role `user`", "translated", "a `user` turn"),
    ContentRule(
        "role `assistant`",
        "translated",
        "an `assistant` turn",
        "Its `tool_calls` become `tool_use` blocks; its `refusal` a text block.",
    ),
    ContentRule(
        "role `tool`",
        "translated",
        "a `tool_result` block in a `user` turn",
        "Consecutive turns of the same role merge, as Anthropic requires.",
    ),
    ContentRule("part `text`", "translated", "`text` block", "Empty text parts are left out."),
    ContentRule(
        "part `image_url`, a `data:` URL",
        "translated",
        "`image` block, `base64` source",
        "JPEG, PNG, GIF and WebP.",
    ),
    ContentRule(
        "part `image_url`, an `http(s)` URL",
        "translated",
        "`image` block, `url` source",
    ),
    ContentRule(
        "`image_url.detail`",
        "translated",
        "nothing",
        "`auto` and `high` are Claude's way (it reads images at full resolution); `low` is "
        "refused.",
    ),
    ContentRule(
        "part `file` with `file_data`",
        "translated",
        "`document` block",
        "PDF → `base64` source, plain text → `text` source; `filename` becomes `title`.",
    ),
    ContentRule("part `file` with `file_id`", "refused", "", "OpenAI file ids mean nothing there."),
    ContentRule("part `input_audio`", "refused", "", "Claude does not read audio."),
    ContentRule("part `refusal`", "translated", "`text` block"),
    ContentRule(
        "`cache_control` on a part",
        "translated",
        "the block's `cache_control`",
        "Not OpenAI's, but how clients of Anthropic-fronting gateways mark cache breakpoints.",
    ),
    ContentRule(
        "member `name`",
        "refused",
        "",
        "The Messages API has no participant names; fold the name into the content.",
    ),
    ContentRule("member `audio` (assistant)", "refused", "", "Claude does not answer in audio."),
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b  # True is not the 1 of n: 1
    return bool(a == b)


def is_no_op(rule: MemberRule, value: Any) -> bool:
    """Whether ``value`` asks for nothing: ``null`` or one of ``rule.no_op``.

    Args:
        rule: the member's rule.
        value: the value the request gave it.

    Returns:
        ``True`` when a translator that cannot carry the member may accept it unsent.
    """
    return value is None or any(_same(value, v) for v in rule.no_op)


#: The model endpoints (every route that reaches a provider), and how each reaches each kind of
#: upstream. tests/test_compatibility.py holds it to the service's route table.
ENDPOINTS: tuple[tuple[str, str, str], ...] = (
    (
        "POST /v1/chat/completions",
        "forwarded as sent (members above); `n` > 1 fanned out as n requests",
        "translated (members above); streamed with its status until the first event",
    ),
    (
        "POST /v1/completions",
        "translated to Chat Completions (the prompt as one user message); `echo` by the "
        "gateway; several prompts, `suffix`, `logprobs`, `n`/`best_of` > 1 refused",
        "translated through Chat Completions",
    ),
    (
        "POST /v1/responses",
        "with `responses_api = true`: forwarded as sent to `/responses`, its answer and events "
        "relayed verbatim; else translated to Chat Completions. `previous_response_id`, "
        "built-in tools and stored items forwarded when every provider is native, else refused",
        "translated through Chat Completions",
    ),
    (
        "POST /v1/messages",
        "Anthropic ingress translated to Chat Completions and the answer back to a Message",
        "translated through Chat Completions; Anthropic's own members (`top_k`, "
        "`thinking`) sent on",
    ),
    (
        "POST /v1/messages/count_tokens",
        "answered by the gateway (an estimate, no upstream call)",
        "answered by the gateway (an estimate, no upstream call)",
    ),
    (
        "POST /v1/embeddings",
        "forwarded as sent (base64 honoured)",
        "refused: 400 naming the model (Anthropic has no embeddings)",
    ),
    (
        "POST /v1/prompt, /v1/prompt/stream, /v1/ws",
        "the native request, sent as Chat Completions",
        "the native request, translated",
    ),
    (
        "POST /mcp",
        "the `complete` tool is a `POST /v1/chat/completions` (messages, `max_tokens`, "
        "`temperature`, `top_p`, `stop`, `seed`), sent in process: as that endpoint",
        "as `POST /v1/chat/completions`",
    ),
)


def _row(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") or "—" for c in cells) + " |"


def _no_ops(rule: MemberRule) -> str:
    values = ["null", *(_json(v) for v in rule.no_op)]
    return ", ".join(f"`{v}`" for v in values)


def _json(value: Any) -> str:
    return json.dumps(value)


def _anthropic_cell(rule: MemberRule) -> str:
    if rule.anthropic == "refused":
        return f"refused (accepted: {_no_ops(rule)})"
    target = f" → `{rule.anthropic_as}`" if rule.anthropic_as else ""
    return f"{rule.anthropic}{target}"


def render_markdown() -> str:
    """The tables of ``docs/compatibility.md``, as Markdown.

    Returns:
        The request members table, the message content table and the native members list.
    """
    lines = [
        "### Request members",
        "",
        "| Member | OpenAI-compatible upstream | Anthropic upstream | Notes |",
        "| --- | --- | --- | --- |",
    ]
    for rule in sorted(_RULES, key=lambda r: r.name):
        lines.append(_row(f"`{rule.name}`", rule.openai, _anthropic_cell(rule), rule.note))
    lines += [
        "",
        "### Message content (Anthropic upstream)",
        "",
        "An OpenAI-compatible upstream receives each message exactly as the client sent it.",
        "",
        "| Message member or part | Anthropic upstream | Notes |",
        "| --- | --- | --- |",
    ]
    for content in MESSAGE_CONTENT:
        target = f" → {content.anthropic_as}" if content.anthropic_as else ""
        lines.append(_row(content.what, content.anthropic + target, content.note))
    lines += [
        "",
        "### Anthropic's own members",
        "",
        "Sent to an Anthropic upstream unchanged (and, like any member, to an OpenAI-compatible "
        "one): " + ", ".join(f"`{name}`" for name in sorted(ANTHROPIC_NATIVE)) + ".",
        "",
        "### Endpoints",
        "",
        "| Endpoint | OpenAI-compatible upstream | Anthropic upstream |",
        "| --- | --- | --- |",
    ]
    lines += [_row(f"`{path}`", openai, anthropic) for path, openai, anthropic in ENDPOINTS]
    return "\n".join(lines) + "\n"
