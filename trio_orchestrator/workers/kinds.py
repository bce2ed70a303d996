"""What each provider kind can do: the facts ``docs/providers.md``'s feature table shows.

One row per ``kind`` a ``[[providers]]`` entry may name. A worker that gains a feature says so
here, and the docs' table follows (a test compares them: ``docs/gen_providers.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .config import DEFAULT_BASE_URLS, ProviderConfig

__all__ = ["FEATURES", "TABLE_COLUMNS", "KindFeatures", "lists_models"]


@attrs.frozen
class KindFeatures:
    """What one provider kind's worker does, through the gateway.

    Attributes:
        streaming: answers stream token by token.
        tools: tool (function) calls, streamed as they arrive.
        vision: images in the prompt.
        structured_output: ``response_format`` with a JSON schema.
        embeddings: ``/v1/embeddings``.
        cached_tokens: usage reports cached prompt tokens.
        lists_models: the upstream lists the models it serves (``GET {base_url}/models`` in
            OpenAI's shape, the worker's ``list_models()``); the gateway's ``/v1/models``
            asks it for a provider that names no ``models`` (see :func:`lists_models`). Not
            a column of the docs' table.
    """

    streaming: bool = True
    tools: bool = True
    vision: bool = True
    structured_output: bool = True
    embeddings: bool = False
    cached_tokens: bool = True
    lists_models: bool = False


#: The features the docs' table shows, in its column order, with their headings.
TABLE_COLUMNS: Mapping[str, str] = {
    "streaming": "streaming",
    "tools": "tools",
    "vision": "vision",
    "structured_output": "structured output",
    "embeddings": "embeddings",
    "cached_tokens": "cached tokens",
}


#: The features of every provider kind, by kind.
FEATURES: Mapping[str, KindFeatures] = {
    "openai": KindFeatures(embeddings=True, lists_models=True),
    "anthropic": KindFeatures(),
    # Converse: images as bytes (data: URLs), outputConfig.textFormat for JSON schemas; its
    # embeddings are InvokeModel's (Titan Text Embeddings, Cohere Embed: workers.bedrock_embed).
    "bedrock": KindFeatures(embeddings=True),
    "gemini": KindFeatures(embeddings=True),
    "vertex": KindFeatures(embeddings=True),
    "echo": KindFeatures(tools=False, vision=False, structured_output=False, cached_tokens=False),
    # Azure OpenAI: OpenAI's wire format, so all of OpenAI's (the conformance suite runs on it).
    "azure": KindFeatures(embeddings=True),
    # The presets forward every member unchanged (bar the refusals in workers/presets.py):
    # a row says what the service's own reference documents it answers. Each lists its
    # models at GET {base_url}/models (asked when the entry names no models).
    "groq": KindFeatures(cached_tokens=False, lists_models=True),
    "mistral": KindFeatures(embeddings=True, cached_tokens=False, lists_models=True),
    "together": KindFeatures(embeddings=True, cached_tokens=False, lists_models=True),
    "deepseek": KindFeatures(vision=False, structured_output=False, lists_models=True),
    "openrouter": KindFeatures(lists_models=True),
    "ollama": KindFeatures(embeddings=True, cached_tokens=False, lists_models=True),
    "vllm": KindFeatures(embeddings=True, lists_models=True),
    "llamacpp": KindFeatures(embeddings=True, cached_tokens=False, lists_models=True),
}


def lists_models(provider: ProviderConfig) -> bool:
    """Whether ``/v1/models`` asks this provider's upstream which models it serves.

    Yes when its kind lists models, it names no ``models`` of its own, and it is not OpenAI's
    own API (whose listing holds every model OpenAI offers, not what a gateway serves): a local
    or self-hosted OpenAI-compatible server (vLLM, llama.cpp, Ollama, LM Studio) is asked.
    """
    features = FEATURES.get(provider.kind)
    if features is None or not features.lists_models or provider.models:
        return False
    return (provider.base_url or DEFAULT_BASE_URLS.get(provider.kind)) != DEFAULT_BASE_URLS[
        "openai"
    ]
