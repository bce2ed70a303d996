"""The experiments' endpoints, and the ``x-experiment`` response header.

- ``POST /v1/feedback`` ``{request_id, score | thumbs, comment?}``: a score (a number) or
  thumbs (``up`` = 1, ``down`` = 0) for the variant that answered ``request_id`` (the
  ``x-request-id`` of its response); 404 for a request id in no experiment or forgotten.
- ``GET /v1/experiments`` and ``GET /v1/experiments/{id}``: status and per-variant
  statistics with confidence intervals.
- ``POST /v1/admin/experiments/{id}/stop`` and ``/resume`` (admin keys only, by the
  guard's admin prefix): all traffic to control, or the split again.

Each answers 404 when no experiment is configured. The chat endpoint calls
:func:`stamp_experiment` before the pipeline, so that the variant is known (and named in the
``x-experiment`` header) before the first byte of the answer; the experiments' layer honours
the stamp.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..routing.experiments import Experiments
from .chat import ChatRequest
from .errors import ApiError
from .jsonenc import JSONResponse
from .state import ServiceState, service_of
from .validate import invalid, parse_json_object

__all__ = [
    "EXPERIMENT_HEADER",
    "feedback",
    "get_experiment",
    "list_experiments",
    "resume_experiment",
    "stamp_experiment",
    "stop_experiment",
]

logger = logging.getLogger("trio_orchestrator.service")

EXPERIMENT_HEADER = b"x-experiment"
_THUMBS = {"up": 1.0, "down": 0.0}
_MAX_SCORE = 1e9


def _header(scope_headers: Sequence[tuple[bytes, bytes]], name: str) -> str | None:
    wanted = name.encode("latin-1")
    return next((v.decode("latin-1") for k, v in scope_headers if k == wanted), None)


def stamp_experiment(
    state: ServiceState, scope: Mapping[str, Any], chat: ChatRequest
) -> tuple[ChatRequest, tuple[bytes, bytes] | None]:
    """``chat`` with its experiment's assignment stamped on it, and the ``x-experiment``
    header naming it (None when the request is in no experiment)."""
    gateway = state.gateway
    experiments = None if gateway is None else gateway.experiments
    if experiments is None:
        return chat, None
    prompt = chat.prompt
    name = experiments.session_header(prompt.params.model)
    session = None if name is None else _header(scope["headers"], name)
    stamped, assignment = experiments.stamp(prompt, session)
    if assignment is None:
        return chat, None
    header = (EXPERIMENT_HEADER, assignment.header.encode("latin-1"))
    return ChatRequest(stamped, chat.stream, chat.include_usage), header


def _experiments(request: Request) -> Experiments:
    gateway = service_of(request).gateway
    experiments = None if gateway is None else gateway.experiments
    if experiments is None:
        raise ApiError(404, "no experiment is configured ([experiments])", code="not_found")
    return experiments


def _report(experiments: Experiments, experiment_id: str) -> dict[str, Any]:
    try:
        return experiments.report(experiment_id)
    except KeyError:
        message = f"no experiment {experiment_id!r} (known: {list(experiments.ids)})"
        raise ApiError(404, message, code="not_found") from None


async def feedback(request: Request) -> Response:
    """``POST /v1/feedback``: a score for the variant that answered a request."""
    experiments = _experiments(request)
    fields = parse_json_object(await request.body())
    request_id = fields.text("request_id", required=True, max_length=200)
    assert request_id is not None
    score = fields.number("score", minimum=-_MAX_SCORE, maximum=_MAX_SCORE)
    thumbs = fields.text("thumbs", max_length=10)
    comment = fields.text("comment", max_length=10_000)
    if (score is None) == (thumbs is None):
        raise invalid("score", "a number, or `thumbs` (up or down) instead; one of the two")
    if thumbs is not None:
        if thumbs not in _THUMBS:
            raise invalid("thumbs", '"up" or "down"', thumbs)
        score = _THUMBS[thumbs]
    assert score is not None
    assignment = experiments.feedback(request_id, score)
    if assignment is None:
        message = f"request {request_id!r} is in no experiment (or is too old to remember)"
        raise ApiError(404, message, code="not_found", param="request_id")
    if comment:
        logger.info("feedback on %s (%s): %s", request_id, assignment.header, comment)
    body = {"request_id": request_id, "experiment": assignment.experiment}
    return JSONResponse({**body, "variant": assignment.variant, "score": score})


async def list_experiments(request: Request) -> Response:
    """``GET /v1/experiments``: every experiment's status and statistics."""
    experiments = _experiments(request)
    data = [experiments.report(experiment_id) for experiment_id in experiments.ids]
    return JSONResponse({"object": "list", "data": data})


async def get_experiment(request: Request) -> Response:
    """``GET /v1/experiments/{id}``: one experiment's status and statistics."""
    return JSONResponse(_report(_experiments(request), request.path_params["id"]))


def _known(request: Request) -> Experiments:
    experiments = _experiments(request)
    _report(experiments, request.path_params["id"])  # 404 for an unknown id
    return experiments


async def stop_experiment(request: Request) -> Response:
    """``POST /v1/admin/experiments/{id}/stop``: all its traffic to control."""
    experiments = _known(request)
    experiments.stop(request.path_params["id"])
    return JSONResponse(_report(experiments, request.path_params["id"]))


async def resume_experiment(request: Request) -> Response:
    """``POST /v1/admin/experiments/{id}/resume``: split its traffic again."""
    experiments = _known(request)
    experiments.resume(request.path_params["id"])
    return JSONResponse(_report(experiments, request.path_params["id"]))
