"""The ``[experiments]`` section: A/B experiments over models, parameters and prompts
(``docs/experiments.md``).

An experiment applies to the requests that ask for one of its ``models``; each such request
is assigned to one variant by a stable hash of the experiment's id and the request's unit
(its API key, session or user), so a unit always meets the same variant. A variant changes
the request before inference: its model, its generation parameters, its prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..validators import fraction, non_negative_finite, one_of, positive_int

__all__ = ["ExperimentConfig", "ExperimentsConfig", "GuardRails", "VariantConfig"]

STICKINESS = ("key", "session", "user", "request")
ACTIONS = ("rollback", "none")


def _tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


def _optional_non_negative(_instance: object, attribute: Any, value: object) -> None:
    if value is not None:
        non_negative_finite(_instance, attribute, value)


@attrs.frozen
class VariantConfig:
    """One arm of an experiment and what it changes in a request.

    Attributes:
        name: the variant's name (unique within its experiment), as the ``x-experiment``
            header, the endpoint and the metrics show it.
        share: its share of the traffic; the shares of an experiment are normalised to sum
            to 1 (``0`` sends it nothing).
        model: the model to ask for instead (a routing name, alias or upstream model);
            unset keeps the request's.
        temperature: the sampling temperature to use instead; unset keeps the request's.
        top_p: nucleus sampling to use instead; unset keeps the request's.
        max_tokens: the output limit to use instead; unset keeps the request's.
        seed: the sampling seed to use instead; unset keeps the request's.
        params: further numeric upstream parameters, merged over the request's extra
            members (``{ presence_penalty = 0.5 }``).
        system_prefix: text put before the request's system message (a new system message
            when it has none).
        template: the last user message becomes this text with ``{prompt}`` replaced by
            what the user wrote (must contain ``{prompt}``).
    """

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    share: float = attrs.field(default=1.0, validator=non_negative_finite)
    model: str | None = None
    temperature: float | None = attrs.field(default=None, validator=_optional_non_negative)
    top_p: float | None = attrs.field(default=None, validator=_optional_non_negative)
    max_tokens: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive_int)
    )
    seed: int | None = None
    params: Mapping[str, float] = attrs.field(factory=dict, hash=False)
    system_prefix: str | None = None
    template: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.template is not None and "{prompt}" not in self.template:
            raise ValueError(f"variant {self.name!r}: `template` must contain {{prompt}}")


@attrs.frozen
class GuardRails:
    """When an experiment stops itself: a variant significantly worse than control.

    Attributes:
        min_samples: requests both the control and a variant must have finished before the
            variant is tested.
        error_margin: how much higher (absolute, ``0.05`` = five points) a variant's error
            rate may be than control's; worse than that with significance rolls back
            (one-sided two-proportion z-test, unpooled).
        latency_margin: how much slower a variant's typical latency may be (``0.25``: its
            geometric-mean latency up to 1.25 x control's); worse than that with
            significance rolls back (one-sided Welch z-test on log latencies). ``inf``
            never rolls back for latency.
        significance: the tests' level (the probability of rolling back a variant that is
            in truth within the margins), in (0, 1].
        action: ``rollback`` (all traffic to control, logged, shown in the endpoint and the
            metrics) or ``none`` (the verdict is logged and shown, the split stays).
    """

    min_samples: int = attrs.field(
        default=100, validator=positive_int, metadata={"reloadable": True}
    )
    error_margin: float = attrs.field(
        default=0.05, validator=non_negative_finite, metadata={"reloadable": True}
    )
    latency_margin: float = attrs.field(
        default=0.25, validator=attrs.validators.ge(0.0), metadata={"reloadable": True}
    )
    significance: float = attrs.field(
        default=0.05, validator=fraction, metadata={"reloadable": True}
    )
    action: str = attrs.field(
        default="rollback", validator=one_of(*ACTIONS), metadata={"reloadable": True}
    )


@attrs.frozen
class ExperimentConfig:
    """One experiment.

    Attributes:
        id: the experiment's id (unique): ``/v1/experiments/{id}``, the header, the metrics.
        models: the model names (as clients ask for them: a model, a routing alias or group)
            whose requests take part; a request takes part in the first experiment that
            names its model.
        variants: the arms, at least two; ``control`` names the baseline.
        control: the name of the control variant (default: the first variant's).
        enabled: ``false`` leaves the requests alone (and keeps the numbers so far).
        sticky: what a unit of assignment is: ``key`` (the caller's API key id),
            ``session`` (the ``session_header`` request header), ``user`` (the OpenAI
            ``user`` member) or ``request`` (none: each request drawn anew). A request
            without its unit is drawn by its request id.
        session_header: the header holding the session, for ``sticky = "session"``.
        guard: when the experiment rolls back on its own.
    """

    id: str = attrs.field(validator=attrs.validators.min_len(1))
    models: tuple[str, ...] = attrs.field(converter=_tuple)
    variants: tuple[VariantConfig, ...] = attrs.field(
        converter=_tuple, metadata={"reloadable": True}
    )
    control: str = ""
    enabled: bool = attrs.field(default=True, metadata={"reloadable": True})
    sticky: str = attrs.field(
        default="key", validator=one_of(*STICKINESS), metadata={"reloadable": True}
    )
    session_header: str = attrs.field(default="x-session-id", metadata={"reloadable": True})
    guard: GuardRails = attrs.field(factory=GuardRails, metadata={"reloadable": True})

    def __attrs_post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(names) < 2:
            raise ValueError(f"experiment {self.id!r} needs at least two variants")
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.id!r}: variant names repeat: {names}")
        if not self.models:
            raise ValueError(f"experiment {self.id!r}: `models` names no model")
        if self.control and self.control not in names:
            raise ValueError(f"experiment {self.id!r}: control {self.control!r} is not a variant")
        if sum(v.share for v in self.variants) <= 0:
            raise ValueError(f"experiment {self.id!r}: the shares sum to 0")

    @property
    def control_name(self) -> str:
        """The control variant's name."""
        return self.control or self.variants[0].name

    def variant(self, name: str) -> VariantConfig:
        """The variant called ``name``.

        Raises:
            KeyError: no variant has that name.
        """
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


@attrs.frozen
class ExperimentsConfig:
    """A/B experiments with automatic rollback (``docs/experiments.md``).

    Attributes:
        experiments: the experiments (``[[experiments.experiments]]``); none is off. Each
            one's split, overrides, stickiness and guard rails may change on a reload;
            adding or removing an experiment or a variant needs a restart.
        feedback_capacity: request ids remembered for ``POST /v1/feedback`` (the oldest is
            forgotten first; feedback on a forgotten id answers 404).
        latency_samples: latencies kept per variant for the p50 and p95 the endpoint shows
            (the most recent; means and tests use running sums over every request).
    """

    experiments: tuple[ExperimentConfig, ...] = attrs.field(
        default=(), converter=_tuple, metadata={"reloadable": True}
    )
    feedback_capacity: int = attrs.field(default=100_000, validator=positive_int)
    latency_samples: int = attrs.field(default=2048, validator=positive_int)

    @experiments.validator
    def _check_ids(self, _attribute: object, value: tuple[ExperimentConfig, ...]) -> None:
        ids = [e.id for e in value]
        if len(set(ids)) != len(ids):
            raise ValueError(f"experiment ids repeat: {ids}")

    @property
    def enabled(self) -> bool:
        """Whether any experiment is configured."""
        return bool(self.experiments)
