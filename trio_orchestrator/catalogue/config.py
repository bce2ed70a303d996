"""The ``[catalogue]`` section: the bundled model facts, and the configuration's own."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .facts import Catalogue, ModelFacts, bundled_catalogue

__all__ = ["CatalogueConfig", "catalogue_for"]


@attrs.frozen
class CatalogueConfig:
    """Model facts: context windows, output limits, capabilities and prices.

    The bundled catalogue (``trio_orchestrator/catalogue/models.toml``, with the date it was
    compiled and its sources) knows the major models of OpenAI (and so Azure OpenAI),
    Anthropic, Google Gemini, AWS Bedrock, Groq, Mistral and DeepSeek. Routing's pre-call
    checks and cost strategy, budgets, spend, the ``cost`` metric and ``/v1/models`` all read
    it, with the entries here laid over it.

    Attributes:
        bundled: start from the bundled catalogue; off, only ``models`` is known.
        models: facts by model name (the name sent upstream). An entry for a bundled model
            replaces only the facts it gives (``[catalogue.models."gpt-4o"] input_price = 2``
            keeps its context window); an entry for another model adds it. Keys:
            ``provider``, ``context_window``, ``max_output_tokens``, ``capabilities`` (some of
            ``tools``, ``vision``, ``json_schema``, ``reasoning``, ``embeddings``),
            ``input_price``, ``cached_input_price`` and ``output_price`` (US dollars per
            million tokens), ``source``.
    """

    bundled: bool = True
    # Left out of the hash (a dict has none), so the whole Config stays hashable.
    models: Mapping[str, ModelFacts] = attrs.field(factory=dict, hash=False)


def catalogue_for(config: CatalogueConfig) -> Catalogue:
    """Return the catalogue ``config`` describes: the bundled one (unless switched off) with
    its ``models`` laid over it."""
    base = bundled_catalogue() if config.bundled else Catalogue()
    return base.overridden(config.models) if config.models else base
