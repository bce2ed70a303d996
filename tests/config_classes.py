"""Test-only configuration classes exercising every type the loader supports, and a
Hypothesis strategy of valid instances of any configuration class."""

from __future__ import annotations

import enum
import math
from typing import Any, Literal, get_args, get_origin

import attrs
from hypothesis import strategies as st

from trio_orchestrator.config import PipelineConfig, Secret
from trio_orchestrator.config.model import non_negative_time, positive_int, positive_time
from trio_orchestrator.config.schema import field_range


class Color(enum.Enum):
    """An enum option."""

    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Limits:
    """Limits of one provider.

    Attributes:
        rate: requests per second (inf for no limit).
        burst: requests allowed at once.
        pause: seconds to pause between bursts.
    """

    rate: float = attrs.field(default=math.inf, validator=positive_time)
    burst: int = attrs.field(default=10, validator=positive_int, metadata={"reloadable": True})
    pause: float = attrs.field(default=0.0, validator=non_negative_time)


@attrs.frozen
class Provider:
    """One upstream provider.

    Attributes:
        api_key: the key sent upstream.
        base_url: where the provider listens.
        models: the models it serves.
        kind: the protocol it speaks.
        color: a colour, for the dashboard.
        limits: its rate limits.
        timeouts: seconds per attempt.
        enabled: whether requests go to it.
        note: free text.
    """

    api_key: Secret | None = None
    base_url: str = "http://127.0.0.1"
    models: tuple[str, ...] = ()
    kind: Literal["openai", "anthropic"] = "openai"
    color: Color = Color.RED
    limits: Limits = attrs.field(factory=Limits)
    timeouts: list[float] = attrs.field(factory=list)
    enabled: bool = True
    note: str | None = None


@attrs.frozen
class Route:
    """A routing rule.

    Attributes:
        model: the model name callers ask for.
        weight: share of traffic.
        max_tokens: a cap on answers, when set.
    """

    model: str
    weight: int = attrs.field(default=1, validator=positive_int)
    max_tokens: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive_int)
    )


@attrs.frozen
class Window:
    """A window whose ends are checked against each other.

    Attributes:
        low: the lower end.
        high: the upper end, at least ``low``.
    """

    low: int = 0
    high: int = attrs.field(default=10)

    @high.validator
    def _at_least_low(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if value < self.low:
            raise ValueError(f"high ({value}) must be at least low ({self.low})")


@attrs.frozen
class Root:
    """A root with every kind of option.

    Attributes:
        pipeline: the real pipeline section.
        providers: providers by name.
        routes: routing rules, in order.
        window: a window.
    """

    pipeline: PipelineConfig = attrs.field(factory=PipelineConfig)
    providers: dict[str, Provider] = attrs.field(factory=dict)
    routes: list[Route] = attrs.field(factory=list)
    window: Window = attrs.field(factory=Window, metadata={"reloadable": True})


def config_values(cls: type) -> st.SearchStrategy[Any]:
    """Valid instances of the attrs configuration class ``cls``, from its types and ranges."""
    if cls is Window:  # its two ends depend on each other
        pairs = st.tuples(st.integers(), st.integers())
        return pairs.map(lambda pair: Window(min(pair), max(pair)))
    attrs.resolve_types(cls)
    fields = {field.name: _field_values(field) for field in attrs.fields(cls) if field.init}
    return st.builds(cls, **fields)


def _field_values(field: attrs.Attribute[Any]) -> st.SearchStrategy[Any]:
    bounds = field_range(field)
    if bounds is None:
        return _values(field.type)
    if bounds.integer:
        return st.integers(min_value=int(bounds.minimum or 0), max_value=2**63 - 1)
    low = bounds.exclusive_minimum if bounds.minimum is None else bounds.minimum
    return st.floats(
        min_value=low,
        exclude_min=bounds.exclusive_minimum is not None,
        allow_nan=False,
        allow_infinity=True,
    )


def _values(tp: Any) -> st.SearchStrategy[Any]:
    args = get_args(tp)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        bool: st.booleans(),
        int: st.integers(min_value=-(2**63), max_value=2**63 - 1),
        float: st.floats(allow_nan=False),
        str: st.text(),
        Secret: st.text(min_size=1).map(Secret),
    }
    if tp in simple:
        return simple[tp]
    if len(args) == 2 and type(None) in args:
        return st.none() | _values(next(a for a in args if a is not type(None)))
    if get_origin(tp) is Literal:
        return st.sampled_from(args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if get_origin(tp) is list:
        return st.lists(_values(args[0]), max_size=3)
    if get_origin(tp) is tuple:
        return st.lists(_values(args[0]), max_size=3).map(tuple)
    if get_origin(tp) is dict:
        return st.dictionaries(st.text(), _values(args[1]), max_size=3)
    return config_values(tp)
