"""The model catalogue: what each known model holds, can do and costs.

One :class:`Catalogue` answers every question about a model's facts -- the router's pre-call
context check and cost strategy, budgets and spend, the ``cost`` metric and ``/v1/models``.
It is the bundled ``models.toml`` (compiled from published price lists, dated) with the
configuration's ``[catalogue.models]`` entries laid over it (:func:`catalogue_for`).
"""

from __future__ import annotations

import datetime
import functools
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from typing import Any

import attrs

from ..validators import non_negative_finite, positive_int

__all__ = [
    "CAPABILITIES",
    "Catalogue",
    "ModelFacts",
    "bundled_catalogue",
    "dollars",
    "parse_catalogue",
]

CAPABILITIES = frozenset(("tools", "vision", "json_schema", "reasoning", "embeddings"))
"""The capabilities a catalogue entry may name."""


def _optional(validator: Any) -> Any:
    return attrs.validators.optional(validator)


def _capabilities(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ValueError(f"capabilities must be a list of names, got the string {value!r}")
    found = tuple(sorted(set(value)))
    unknown = set(found) - CAPABILITIES
    if unknown:
        raise ValueError(
            f"unknown capabilities {sorted(unknown)}; expected some of {sorted(CAPABILITIES)}"
        )
    return found


@attrs.frozen
class ModelFacts:
    """What is known of one model; ``None`` where a fact is not known.

    Attributes:
        provider: who serves it under this name (``openai``, ``anthropic``, ``gemini``,
            ``bedrock``, ``groq``, ``mistral``, ``deepseek``, or any word in config).
        context_window: the most prompt tokens it takes.
        max_output_tokens: the most tokens it generates in one answer.
        capabilities: some of ``tools``, ``vision``, ``json_schema``, ``reasoning``,
            ``embeddings``.
        input_price: US dollars per million input tokens.
        cached_input_price: US dollars per million input tokens read from the provider's
            prompt cache (``Usage.cached_input_tokens``); unknown means ``input_price``.
        output_price: US dollars per million output tokens.
        source: where the facts were published.
    """

    provider: str | None = None
    context_window: int | None = attrs.field(default=None, validator=_optional(positive_int))
    max_output_tokens: int | None = attrs.field(default=None, validator=_optional(positive_int))
    capabilities: tuple[str, ...] | None = attrs.field(default=None, converter=_capabilities)
    input_price: float | None = attrs.field(default=None, validator=_optional(non_negative_finite))
    cached_input_price: float | None = attrs.field(
        default=None, validator=_optional(non_negative_finite)
    )
    output_price: float | None = attrs.field(default=None, validator=_optional(non_negative_finite))
    source: str | None = None

    @property
    def priced(self) -> bool:
        """Whether both the input and the output price are known."""
        return self.input_price is not None and self.output_price is not None

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        """Return the price in US dollars of a call with these token counts.

        Args:
            input_tokens: prompt tokens, cached ones included (as :class:`~.events.Usage`).
            output_tokens: generated tokens.
            cached_input_tokens: of ``input_tokens``, those read from the prompt cache; they
                cost ``cached_input_price`` (``input_price`` when that is unknown).

        Returns:
            Dollars; an unknown price counts as zero.
        """
        prices = (self.input_price, self.cached_input_price, self.output_price)
        return dollars(prices, input_tokens, output_tokens, cached_input_tokens)

    def over(self, base: ModelFacts) -> ModelFacts:
        """These facts, with ``base``'s filling in what these leave unknown."""
        mine = attrs.asdict(self, recurse=False)
        theirs = attrs.asdict(base, recurse=False)
        return ModelFacts(**{k: theirs[k] if v is None else v for k, v in mine.items()})


def dollars(
    prices: tuple[float | None, float | None, float | None],
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
) -> float:
    """The price in US dollars of a call, from per-million ``(input, cached input, output)``
    prices (an unknown cached price is the input price; another unknown price is zero)."""
    input_price, cached_price, output_price = prices
    input_price = input_price or 0.0
    cached_price = input_price if cached_price is None else cached_price
    cached = min(max(cached_input_tokens, 0), input_tokens)
    total = (
        (input_tokens - cached) * input_price
        + cached * cached_price
        + output_tokens * (output_price or 0.0)
    )
    return total / 1e6


@attrs.frozen
class Catalogue:
    """Model facts by model name.

    A name is looked up as given, then without a ``provider/`` prefix (``openai/gpt-4o`` finds
    ``gpt-4o``), then with a Bedrock region prefix (``us.``, ``eu.``, ``apac.``, ``global.``)
    removed.

    Attributes:
        models: the facts, by the name the provider's API uses.
        compiled: when the bundled facts were compiled (``None`` for a catalogue of config
            entries only).
        sources: where the bundled facts came from.
    """

    models: Mapping[str, ModelFacts] = attrs.field(factory=dict, hash=False)
    compiled: datetime.date | None = None
    sources: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[str]:
        return iter(self.models)

    def get(self, name: str) -> ModelFacts | None:
        """Return the facts of the model ``name``, or ``None`` when it is not known."""
        for candidate in _spellings(name):
            found = self.models.get(candidate)
            if found is not None:
                return found
        return None

    def facts(self, name: str) -> ModelFacts:
        """Return the facts of ``name``, all unknown when it is not in the catalogue."""
        return self.get(name) or _UNKNOWN

    def overridden(self, entries: Mapping[str, ModelFacts]) -> Catalogue:
        """This catalogue with ``entries`` laid over it: an entry's known facts replace the
        catalogue's for that name, its unknown ones keep them; a new name is added."""
        merged = dict(self.models)
        for name, entry in entries.items():
            known = self.get(name)
            merged[name] = entry if known is None else entry.over(known)
        return attrs.evolve(self, models=merged)


_UNKNOWN = ModelFacts()
_REGIONS = ("us.", "eu.", "apac.", "global.", "jp.", "au.", "ca.")


def _spellings(name: str) -> Iterator[str]:
    yield name
    if "/" in name:
        yield name.split("/", 1)[1]
    for region in _REGIONS:
        if name.startswith(region):
            yield name.removeprefix(region)


def parse_catalogue(data: Mapping[str, Any]) -> Catalogue:
    """Build a :class:`Catalogue` from the parsed ``models.toml`` document.

    Raises:
        ValueError: an entry has an unknown key or an invalid fact.
    """
    models = {}
    for name, entry in data.get("models", {}).items():
        try:
            models[name] = ModelFacts(**entry)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"models.{name}: {exc}") from exc
    compiled = data.get("compiled")
    return Catalogue(
        models,
        compiled if isinstance(compiled, datetime.date) else None,
        tuple(data.get("sources", ())),
    )


@functools.cache
def bundled_catalogue() -> Catalogue:
    """The catalogue shipped in the package (``trio_orchestrator/catalogue/models.toml``),
    read once."""
    text = resources.files(__package__).joinpath("models.toml").read_text("utf-8")
    return parse_catalogue(tomllib.loads(text))
