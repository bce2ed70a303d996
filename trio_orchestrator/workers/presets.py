"""Presets for OpenAI-compatible services: one table, data rather than code per service.

A ``[[providers]]`` entry of one of these kinds needs no ``base_url`` and, for a cloud
service, only its key (in ``api_keys``, or in the service's usual environment variable)::

    [[providers]]
    kind = "groq"          # base_url https://api.groq.com/openai/v1, key from GROQ_API_KEY

Each preset says what the service's own reference says it does differently from OpenAI:
request members it refuses (the gateway refuses them first, with a 400 naming the member,
instead of letting the upstream fail or silently ignore them), members it names differently
(translated, and said so in docs/providers.md), and whether it lists its models at
``GET {base_url}/models``. Everything else travels as the client sent it (that is how vLLM's
``top_k``/``min_p``/``repetition_penalty`` or Mistral's ``safe_prompt`` reach the server).

This module is data only (it sits in the configuration *sections* layer, so that
:mod:`.config` can take its default base URLs and key variables from it).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["PRESETS", "Preset", "Refusal"]


@attrs.frozen
class Refusal:
    """A request member a service refuses.

    Attributes:
        member: the member's name in a Chat Completions body (``messages[].name`` for a
            member of any message).
        reason: what the service's reference says, quoted in the 400.
        allowed: a value the service does take (``n`` = 1): only other values are refused.
        models: the model name prefixes it applies to (empty: every model).
    """

    member: str
    reason: str
    allowed: object = None
    models: tuple[str, ...] = ()

    def applies_to(self, model: str) -> bool:
        """Whether this refusal holds for ``model``."""
        return not self.models or model.startswith(self.models)


@attrs.frozen
class Preset:
    """One OpenAI-compatible service.

    Attributes:
        title: the service's name in docs and errors.
        base_url: the API root including its ``/v1`` (or equivalent).
        api_key_env: the environment variable its key is read from when the entry gives
            no key (``None``: a local server that needs none).
        refuses: the request members the service refuses.
        renames: members it names differently: ``{openai_name: service_name}``.
        local: a server the user runs (no key by default).
        reference: where the facts above come from.
    """

    title: str
    base_url: str
    api_key_env: str | None
    refuses: tuple[Refusal, ...] = ()
    renames: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    local: bool = False
    reference: str = ""


_GROQ_400 = "Groq's OpenAI compatibility page: not supported, a 400 if supplied"
_DEEPSEEK_R1 = "DeepSeek's reasoning model guide: setting it triggers an error"
_OLLAMA = "not among the request fields Ollama's OpenAI compatibility page supports"

#: Every preset, by its ``kind``.
PRESETS: Mapping[str, Preset] = {
    "groq": Preset(
        "Groq",
        "https://api.groq.com/openai/v1",
        "GROQ_API_KEY",
        refuses=(
            Refusal("logprobs", _GROQ_400),
            Refusal("logit_bias", _GROQ_400),
            Refusal("top_logprobs", _GROQ_400),
            Refusal("messages[].name", _GROQ_400),
            Refusal("n", "Groq's OpenAI compatibility page: n must be 1", allowed=1),
        ),
        reference="https://console.groq.com/docs/openai",
    ),
    "mistral": Preset(
        "Mistral",
        "https://api.mistral.ai/v1",
        "MISTRAL_API_KEY",
        renames={"seed": "random_seed"},
        reference="https://docs.mistral.ai/api/ (chat completion: random_seed, safe_prompt)",
    ),
    "together": Preset(
        "Together AI",
        "https://api.together.xyz/v1",
        "TOGETHER_API_KEY",
        reference="https://docs.together.ai/docs/openai-api-compatibility",
    ),
    "deepseek": Preset(
        "DeepSeek",
        "https://api.deepseek.com/v1",
        "DEEPSEEK_API_KEY",
        refuses=(
            Refusal("logprobs", _DEEPSEEK_R1, models=("deepseek-reasoner",)),
            Refusal("top_logprobs", _DEEPSEEK_R1, models=("deepseek-reasoner",)),
        ),
        reference="https://api-docs.deepseek.com/guides/reasoning_model",
    ),
    "openrouter": Preset(
        "OpenRouter",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        reference="https://openrouter.ai/docs/api-reference/overview",
    ),
    "ollama": Preset(
        "Ollama",
        "http://localhost:11434/v1",
        None,
        refuses=(
            Refusal("logit_bias", _OLLAMA),
            Refusal("n", _OLLAMA, allowed=1),
        ),
        local=True,
        reference="https://docs.ollama.com/api/openai-compatibility",
    ),
    "vllm": Preset(
        "vLLM",
        "http://localhost:8000/v1",
        None,
        local=True,
        reference="https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html",
    ),
    "llamacpp": Preset(
        "llama.cpp server",
        "http://localhost:8080/v1",
        None,
        local=True,
        reference="https://github.com/ggml-org/llama.cpp/tree/master/tools/server",
    ),
}
