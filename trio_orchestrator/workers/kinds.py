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
    "gemini": KindFeatures(embeddings=True),
    "vertex": KindFeatures(embeddings=True),
    "echo": KindFeatures(tools=False, vision=False, structured_output=False, cached_tokens=False),
}
