"""OpenAI-shaped API errors, and the mapping from trio_orchestrator's exceptions to them.

Every error a client sees is ``{"error": {"message", "type", "param", "code"}}`` with an HTTP
status chosen as follows (most specific class first):

====================================  ======  ===========================  =================
exception                             status  type                         code
====================================  ======  ===========================  =================
PipelineClosed                        503     service_unavailable          draining
RequestShed                           503     service_unavailable          overloaded
DeadlineExceeded                      408     timeout                      deadline_exceeded
RequestCancelled                      503     service_unavailable          cancelled
RateLimitExceeded, RateLimited        429     rate_limit_error             rate_limit_exceeded
CircuitOpen                           503     service_unavailable          circuit_open
Overloaded                            503     service_unavailable          upstream_overloaded
ProviderTimeout                       504     upstream_error               upstream_timeout
ServerError, ProviderConnectionError,
MalformedResponse                     502     upstream_error               upstream_error
AuthenticationError, PermissionDenied 502     upstream_error               upstream_auth
ModelNotFound (upstream or router)    404     invalid_request_error        model_not_found
ContextLengthExceeded                 400     invalid_request_error        context_length_exceeded
ContentFiltered                       400     invalid_request_error        content_filter
UnsupportedParameter                  400     invalid_request_error        unsupported_parameter
BadRequest                            400     invalid_request_error        upstream_bad_request
BudgetExceeded                        429     insufficient_quota           insufficient_quota
RedisUnavailable                      503     service_unavailable          shared_state_unavailable
StorageUnavailable                    503     service_unavailable          storage_unavailable
ConfigError                           503     service_unavailable          configuration_error
EventGrammarError                     502     upstream_error               upstream_error
WorkerCrashed, other errors           500     server_error                 internal_error
====================================  ======  ===========================  =================

A ``WorkerCrashed`` that wraps one of the errors above (the pipeline wraps what a worker
raises outside ``WorkerError``) is answered as that error. ``BudgetExceeded`` is OpenAI's
"out of credit" answer, with ``Retry-After`` only when the budget period restarts.

A shed request gets 503 and not 429: it says the *service* is full, not that this caller
exceeded its own quota, so clients and dashboards can tell the two apart; both carry
``Retry-After``. An upstream's rejection of the gateway's own credentials is 502, because the
caller's key is not at fault.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import attrs

from .. import errors as e
from ..distributed.connection import RedisUnavailable
from ..events import EventGrammarError
from ..pipeline import Outcome
from ..routing.budget import BudgetExceeded
from ..storage import StorageUnavailable

__all__ = ["ApiError", "map_exception", "outcome_of"]

logger = logging.getLogger("trio_orchestrator.service")

# Seconds a client is told to wait when the cause named no time of its own.
_DEFAULT_RETRY_AFTER = 1


@attrs.define
class ApiError(Exception):
    """An error to send to a client as an OpenAI error object.

    Args:
        status: the HTTP status.
        message: what happened and what to do.
        type: the OpenAI error type.
        code: a short machine-readable code.
        param: the request field at fault, when there is one.
        retry_after: seconds for the ``Retry-After`` header, when the client should retry.
        should_retry: the ``x-should-retry`` header (the OpenAI and Anthropic SDKs obey it
            over their own rules), when set.
        close: end the connection after this answer (``Connection: close``).
    """

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None
    should_retry: bool | None = attrs.field(default=None, kw_only=True)
    close: bool = attrs.field(default=False, kw_only=True)

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {...}}``."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Response headers: ``Retry-After``, ``x-should-retry`` and ``Connection`` when set."""
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        if self.close:
            headers["Connection"] = "close"
        return headers


def _retry_after(exc: BaseException) -> int:
    seconds: float | None = getattr(exc, "retry_after", None)
    if seconds is None or not math.isfinite(seconds):
        return _DEFAULT_RETRY_AFTER
    return max(1, math.ceil(seconds))


def _unavailable(exc: BaseException, code: str, message: str) -> ApiError:
    return ApiError(503, message, "service_unavailable", code, retry_after=_retry_after(exc))


def _rate_limited(exc: BaseException, message: str) -> ApiError:
    code, seconds = "rate_limit_exceeded", _retry_after(exc)
    return ApiError(429, message, "rate_limit_error", code, retry_after=seconds)


def map_exception(exc: BaseException) -> ApiError:
    """Return the API error a client sees for ``exc`` (see the module docstring).

    Untyped exceptions become a generic 500 and are logged with their traceback here: the
    client never sees more than "internal error".
    """
    if isinstance(exc, ApiError):
        return exc
    cause = _typed_cause(exc)
    if cause is not None:
        return map_exception(cause)
    if isinstance(exc, e.RequestError):
        return _request_error(exc)
    if isinstance(exc, e.ProviderError):
        return _provider_error(exc)
    if isinstance(exc, e.RateLimitExceeded):
        message = f"rate limit exceeded: {exc}; retry after the time in Retry-After"
        return _rate_limited(exc, message)
    if isinstance(exc, e.CircuitOpen):
        return _unavailable(exc, "circuit_open", f"the upstream is failing: {exc}; retry later")
    error = _gateway_error(exc)
    if error is not None:
        return error
    logger.error("request failed with an internal error", exc_info=exc)
    message = "internal error: the worker failed; the server log has the details"
    return ApiError(500, message, "server_error", "internal_error")


def _typed_cause(exc: BaseException) -> BaseException | None:
    """The typed error a :class:`~trio_orchestrator.errors.WorkerCrashed` wraps, if any.

    The pipeline wraps whatever a worker raises outside :class:`WorkerError` as
    ``WorkerCrashed``; when that was one of the package's own errors (Redis lost, the event
    grammar broken…), the client gets its mapping rather than a bare 500.
    """
    if not isinstance(exc, e.WorkerCrashed):
        return None
    cause = exc.__cause__
    typed = isinstance(cause, e.OrchestratorError | EventGrammarError)
    return cause if typed and not isinstance(cause, e.WorkerCrashed) else None


def _gateway_error(exc: BaseException) -> ApiError | None:
    """The mapping of the errors raised by the gateway's own parts (routing, shared state,
    configuration, the event grammar), or ``None``."""
    if isinstance(exc, BudgetExceeded):
        # OpenAI's answer to an account out of credit; a retry before the budget period
        # restarts (never, without one) would only be refused again.
        seconds = None if exc.retry_after is None else _retry_after(exc)
        kind = "insufficient_quota"
        return ApiError(429, str(exc), kind, kind, retry_after=seconds, should_retry=False)
    if isinstance(exc, RedisUnavailable):
        message = f"the gateway's shared state is unreachable: {exc}; retry later"
        return _unavailable(exc, "shared_state_unavailable", message)
    if isinstance(exc, StorageUnavailable):
        # Its text may name the database's path or host: logged, not sent.
        logger.warning("a request needed storage, which is unavailable: %s", exc)
        message = "the gateway's storage is unavailable; retry later"
        return ApiError(503, message, "service_unavailable", "storage_unavailable", retry_after=1)
    if isinstance(exc, e.ConfigError):
        logger.warning("a request hit a configuration error: %s", exc)
        message = "the gateway's configuration cannot serve this request; tell its operator"
        return ApiError(503, message, "service_unavailable", "configuration_error")
    if isinstance(exc, EventGrammarError):
        message = f"the upstream's answer broke the event grammar: {exc}"
        return ApiError(502, message, "upstream_error", "upstream_error")
    return None


def _request_error(exc: e.RequestError) -> ApiError:
    if isinstance(exc, e.PipelineClosed):
        return _unavailable(exc, "draining", "the service is shutting down; retry elsewhere")
    if isinstance(exc, e.RequestShed):
        return _unavailable(exc, "overloaded", f"the service is full ({exc.reason}); retry later")
    if isinstance(exc, e.DeadlineExceeded):
        message = f"{exc}; allow a longer timeout or ask for fewer tokens"
        return ApiError(408, message, "timeout", "deadline_exceeded")
    return _unavailable(exc, "cancelled", f"the request was cancelled: {exc}")


def _provider_error(exc: e.ProviderError) -> ApiError:
    invalid = "invalid_request_error"
    if isinstance(exc, e.RateLimited):
        message = f"the upstream provider is rate limiting: {exc}"
        return _rate_limited(exc, message)
    if isinstance(exc, e.Overloaded):
        return _unavailable(exc, "upstream_overloaded", f"the upstream is overloaded: {exc}")
    if isinstance(exc, e.ProviderTimeout):
        return ApiError(504, f"the upstream timed out: {exc}", "upstream_error", "upstream_timeout")
    if isinstance(exc, e.AuthenticationError | e.PermissionDenied):
        message = "the upstream provider rejected the gateway's credentials; tell its operator"
        return ApiError(502, message, "upstream_error", "upstream_auth")
    if isinstance(exc, e.ModelNotFound):
        return ApiError(404, str(exc), invalid, "model_not_found", "model")
    if isinstance(exc, e.ContextLengthExceeded):
        return ApiError(400, str(exc), invalid, "context_length_exceeded", "messages")
    if isinstance(exc, e.ContentFiltered):
        return ApiError(400, str(exc), invalid, "content_filter")
    if isinstance(exc, e.UnsupportedParameter):
        return ApiError(400, str(exc), invalid, "unsupported_parameter", exc.param)
    if isinstance(exc, e.BadRequest):
        return ApiError(400, str(exc), invalid, "upstream_bad_request")
    return ApiError(502, f"the upstream provider failed: {exc}", "upstream_error", "upstream_error")


def outcome_of(exc: BaseException) -> Outcome:
    """The pipeline outcome a request that raised ``exc`` ended with."""
    if isinstance(exc, e.RequestShed):
        return Outcome.SHED
    if isinstance(exc, e.DeadlineExceeded):
        return Outcome.EXPIRED
    if isinstance(exc, e.RequestCancelled):
        return Outcome.CANCELLED
    return Outcome.FAILED
