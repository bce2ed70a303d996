"""Compile ``trio_orchestrator/catalogue/models.toml`` from LiteLLM's price list.

The facts come from LiteLLM's ``model_prices_and_context_window.json`` (MIT licensed; each entry
names its own published source, kept here as ``source``). Only the models listed in ``MODELS``
are taken, under the name their provider's API uses, and only the facts the entry states: a
model without a known fact leaves it out.

Usage::

    python scripts/compile_catalogue.py path/to/model_prices_and_context_window.json 2026-12-04

(the JSON is in the ``litellm`` wheel as ``litellm/model_prices_and_context_window_backup.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# (LiteLLM key, the id the provider's API uses, provider)
MODELS: list[tuple[str, str, str]] = [
    *(
        (m, m, "openai")
        for m in (
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "o1",
            "o3",
            "o3-mini",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano",
            "gpt-5.1",
            "text-embedding-3-small",
            "text-embedding-3-large",
        )
    ),
    *(
        (m, m, "anthropic")
        for m in (
            "claude-opus-4-6",
            "claude-sonnet-4-6",
            "claude-opus-4-5",
            "claude-opus-4-5-20251101",
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            "claude-haiku-4-5",
            "claude-haiku-4-5-20251001",
        )
    ),
    *(
        (f"gemini/{m}", m, "gemini")
        for m in (
            "gemini-3.1-pro-preview",
            "gemini-3-flash-preview",
            "gemini-2.5-pro",
            "gemini-2.5-flash",
            "gemini-2.5-flash-lite",
            "gemini-embedding-001",
        )
    ),
    *(
        (m, m, "bedrock")
        for m in (
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "anthropic.claude-haiku-4-5-20251001-v1:0",
            "anthropic.claude-opus-4-1-20250805-v1:0",
            "anthropic.claude-sonnet-4-20250514-v1:0",
            "amazon.nova-pro-v1:0",
            "amazon.nova-lite-v1:0",
            "amazon.nova-micro-v1:0",
            "meta.llama3-3-70b-instruct-v1:0",
            "meta.llama4-maverick-17b-instruct-v1:0",
            "openai.gpt-oss-120b-1:0",
            "amazon.titan-embed-text-v2:0",
        )
    ),
    *((f"groq/{m}", m, "groq") for m in ("openai/gpt-oss-120b", "openai/gpt-oss-20b")),
    *(
        (f"mistral/{m}", m, "mistral")
        for m in (
            "mistral-large-latest",
            "mistral-small-latest",
            "codestral-latest",
            "mistral-embed",
        )
    ),
    *((f"deepseek/{m}", m, "deepseek") for m in ("deepseek-chat", "deepseek-reasoner")),
]

_CAPABILITIES = {
    "supports_function_calling": "tools",
    "supports_vision": "vision",
    "supports_response_schema": "json_schema",
    "supports_reasoning": "reasoning",
}


def _per_million(value: float) -> float:
    return round(value * 1_000_000, 6)


def _entry(model_id: str, provider: str, facts: dict[str, object]) -> list[str]:
    lines = [f'[models."{model_id}"]', f'provider = "{provider}"']
    if "max_input_tokens" in facts:
        lines.append(f"context_window = {facts['max_input_tokens']}")
    if "max_output_tokens" in facts and facts.get("mode") == "chat":
        lines.append(f"max_output_tokens = {facts['max_output_tokens']}")
    capabilities = [name for key, name in _CAPABILITIES.items() if facts.get(key) is True]
    if facts.get("mode") == "embedding":
        capabilities.append("embeddings")
    lines.append("capabilities = [" + ", ".join(f'"{c}"' for c in capabilities) + "]")
    for key, name in (
        ("input_cost_per_token", "input_price"),
        ("cache_read_input_token_cost", "cached_input_price"),
        ("output_cost_per_token", "output_price"),
    ):
        value = facts.get(key)
        if isinstance(value, int | float):
            lines.append(f"{name} = {_per_million(value)!r}")
    if isinstance(facts.get("source"), str):
        lines.append(f'source = "{facts["source"]}"')
    return lines


def main(path: str, compiled: str) -> None:
    """Write the catalogue from the LiteLLM JSON at ``path``, dated ``compiled``."""
    data = json.loads(Path(path).read_text())
    out = [
        "# The bundled model catalogue: context windows, output limits, capabilities and prices",
        "# (US dollars per million tokens) of the major models, by the name each provider's API",
        "# uses. Written by scripts/compile_catalogue.py; override or extend it with [catalogue]",
        "# in the configuration (docs/catalogue.md).",
        f"compiled = {compiled}",
        'sources = ["LiteLLM 1.110.2 model_prices_and_context_window.json (https://github.com/BerriAI/litellm)",'
        ' "each entry\'s own source"]',
        "",
    ]
    for key, model_id, provider in MODELS:
        out += [*_entry(model_id, provider, data[key]), ""]
    target = Path(__file__).parent.parent / "trio_orchestrator" / "catalogue" / "models.toml"
    target.write_text("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
