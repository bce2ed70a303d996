"""The worker for a preset OpenAI-compatible service (:mod:`.presets`): :class:`.OpenAIWorker`
that applies the service's quirks to each request before it is sent.

A member the service refuses is refused here, with a 400 naming it
(:class:`~trio_orchestrator.errors.UnsupportedParameter`, which never counts against the
provider); a member it names differently is renamed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import UnsupportedParameter
from ..types import PromptRequest
from .openai import OpenAIWorker
from .presets import Preset, Refusal

__all__ = ["PresetWorker", "check_refusals"]


def _offending(refusal: Refusal, body: Mapping[str, Any]) -> str | None:
    """The path of the member of ``body`` that ``refusal`` refuses, or None."""
    if refusal.member.startswith("messages[]."):
        name = refusal.member.removeprefix("messages[].")
        for i, message in enumerate(body.get("messages") or ()):
            if isinstance(message, Mapping) and message.get(name) is not None:
                return f"messages[{i}].{name}"
        return None
    value = body.get(refusal.member)
    if value is None or value is False or value == refusal.allowed:
        return None
    return refusal.member


def check_refusals(preset: Preset, body: Mapping[str, Any], provider: str) -> None:
    """Refuse ``body`` if it has a member ``preset``'s service refuses.

    Raises:
        UnsupportedParameter: naming the member and the service's reason.
    """
    model = str(body.get("model") or "")
    for refusal in preset.refuses:
        if not refusal.applies_to(model):
            continue
        path = _offending(refusal, body)
        if path is not None:
            only = f" (only {refusal.allowed!r})" if refusal.allowed is not None else ""
            raise UnsupportedParameter(
                path,
                f"{preset.title} does not take {path}{only}: {refusal.reason}; "
                "remove it or route this request to another provider",
                provider=provider,
            )


@attrs.define(eq=False, repr=False)
class PresetWorker(OpenAIWorker):
    """Generates through a preset OpenAI-compatible service.

    Args:
        preset: the service's preset (base URL, refusals, renames).
        (the rest as :class:`.OpenAIWorker`)
    """

    preset: Preset = attrs.field(kw_only=True)

    def __repr__(self) -> str:
        return (
            f"PresetWorker({self.preset.title!r}, name={self.name!r}, base_url={self.base_url!r})"
        )

    def _chat_body(self, request: PromptRequest) -> dict[str, Any]:
        body = super()._chat_body(request)
        check_refusals(self.preset, body, self.name)
        for openai_name, service_name in self.preset.renames.items():
            if openai_name in body and service_name not in body:
                body[service_name] = body.pop(openai_name)
        return body
