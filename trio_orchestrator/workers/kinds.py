"""What each provider kind can do: the facts ``docs/providers.md``'s feature table shows.

One row per ``kind`` a ``[[providers]]`` entry may name. A worker that gains a feature says so
here, and the docs' table follows (a test compares them).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["FEATURES", "KindFeatures"]


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
    """

    streaming: bool = True
    tools: bool = True
    vision: bool = True
    structured_output: bool = True
    embeddings: bool = False
    cached_tokens: bool = True


#: The features of every provider kind, by kind.
FEATURES: Mapping[str, KindFeatures] = {
    "openai": KindFeatures(embeddings=True),
    "anthropic": KindFeatures(),
    "echo": KindFeatures(tools=False, vision=False, structured_output=False, cached_tokens=False),
    # Azure OpenAI: OpenAI's wire format, so all of OpenAI's (the conformance suite runs on it).
    "azure": KindFeatures(embeddings=True),
    # The presets forward every member unchanged (bar the refusals in workers/presets.py):
    # a row says what the service's own reference documents it answers.
    "groq": KindFeatures(cached_tokens=False),
    "mistral": KindFeatures(embeddings=True, cached_tokens=False),
    "together": KindFeatures(embeddings=True, cached_tokens=False),
    "deepseek": KindFeatures(vision=False, structured_output=False),
    "openrouter": KindFeatures(),
    "ollama": KindFeatures(embeddings=True, cached_tokens=False),
    "vllm": KindFeatures(embeddings=True),
    "llamacpp": KindFeatures(embeddings=True, cached_tokens=False),
}
