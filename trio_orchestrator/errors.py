"""The exceptions a caller of trio_orchestrator can see, in one hierarchy.

Every request ends in exactly one outcome; each outcome other than *completed* reaches the
caller as one of these::

    OrchestratorError
    ├── ConfigError                      invalid configuration (names the key path)
    ├── RequestError                     the pipeline ended the request
    │   ├── RequestShed                  a full stage channel (or entry) refused it
    │   ├── PipelineClosed               the pipeline is shutting down or closed
    │   ├── DeadlineExceeded             the request's deadline passed
    │   └── RequestCancelled             cancelled by the pipeline (e.g. shutdown grace over)
    └── WorkerError                      the inference call failed (outcome: failed)
        ├── WorkerCrashed                a worker raised an untyped exception (see __cause__)
        ├── CircuitOpen                  a circuit breaker refused the call
        ├── RateLimitExceeded            a local rate limit refused the call
        └── ProviderError                an upstream provider failed
            ├── RateLimited              429; ``retry_after`` parsed when given
            ├── Overloaded               503 / Anthropic 529
            ├── ServerError              other 5xx
            ├── ProviderTimeout          connect / first token / idle / total timeout
            ├── ProviderConnectionError  connection refused, reset, closed mid-stream
            ├── MalformedResponse        the provider spoke its protocol wrongly
            ├── AuthenticationError      401
            ├── PermissionDenied         403
            ├── ModelNotFound            404 for the model
            ├── ContentFiltered          the provider refused the content
            └── BadRequest               other 4xx
                ├── ContextLengthExceeded  prompt + max_tokens exceed the context window
                └── UnsupportedParameter   a request member this provider's format cannot
                                           carry (raised before any call; names ``param``)

Each :class:`WorkerError` class says whether it is worth retrying (``retryable``) and whether
it is evidence that the upstream is unhealthy (``trips_breaker``).
"""

from __future__ import annotations

import math

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "CircuitOpen",
    "ConfigError",
    "ContentFiltered",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "MalformedResponse",
    "ModelNotFound",
    "OrchestratorError",
    "Overloaded",
    "PermissionDenied",
    "PipelineClosed",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeout",
    "RateLimitExceeded",
    "RateLimited",
    "RequestCancelled",
    "RequestError",
    "RequestShed",
    "ServerError",
    "UnsupportedParameter",
    "WorkerCrashed",
    "WorkerError",
]


class OrchestratorError(Exception):
    """Base class of every error raised by trio_orchestrator."""


class ConfigError(OrchestratorError, ValueError):
    """The configuration is invalid.

    Args:
        problems: one line per problem, each naming the key path, what was found and what
            was expected.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class RequestError(OrchestratorError):
    """The pipeline ended the request without a worker result."""


class RequestShed(RequestError):
    """A bounded channel was full, so the request was shed to the dead-letter queue.

    Args:
        stage: the stage whose input channel was full (``"admission"`` for the entry).
        reason: a human-readable reason.
    """

    def __init__(self, stage: str, reason: str) -> None:
        self.stage = stage
        self.reason = reason
        super().__init__(f"request shed at stage {stage!r}: {reason}")


class PipelineClosed(RequestShed):
    """The pipeline is draining or closed and admits no new requests."""

    def __init__(self, reason: str = "the pipeline is closed and admits no new requests") -> None:
        super().__init__("admission", reason)


class DeadlineExceeded(RequestError):
    """The request's deadline passed before it completed."""


class RequestCancelled(RequestError):
    """The pipeline cancelled the request (for example, shutdown's grace period ran out)."""


class WorkerError(OrchestratorError):
    """The inference call failed.

    Class attributes:
        retryable: a retry of the same request may succeed.
        trips_breaker: the failure is evidence that the upstream is unhealthy.
    """

    retryable: bool = False
    trips_breaker: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        if retry_after is not None and (math.isnan(retry_after) or retry_after < 0):
            retry_after = None
        self.retry_after = retry_after
        super().__init__(message)


class WorkerCrashed(WorkerError):
    """A worker raised an exception outside this hierarchy; the original is ``__cause__``."""

    trips_breaker = True


class CircuitOpen(WorkerError):
    """A circuit breaker is open (or has no probe slot) for the target; ``retry_after`` says
    when the next probe may pass."""

    retryable = True


class RateLimitExceeded(WorkerError):
    """A local rate limit refused the call; ``retry_after`` says when it would pass."""

    retryable = True


class ProviderError(WorkerError):
    """An upstream provider failed.

    Args:
        message: what happened, and what to do about it.
        provider: the provider's name (never a key or a URL with credentials).
        status: the HTTP status, when there was one.
        retry_after: seconds the provider asked us to wait, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.status = status
        super().__init__(message, retry_after=retry_after)


class RateLimited(ProviderError):
    """The provider answered 429."""

    retryable = True


class Overloaded(ProviderError):
    """The provider is overloaded (503, Anthropic 529)."""

    retryable = True
    trips_breaker = True


class ServerError(ProviderError):
    """The provider answered with a 5xx other than overload."""

    retryable = True
    trips_breaker = True


class ProviderTimeout(ProviderError):
    """A connect, first-token, idle or total timeout expired."""

    retryable = True
    trips_breaker = True


class ProviderConnectionError(ProviderError):
    """The connection failed or closed before the answer was complete."""

    retryable = True
    trips_breaker = True


class MalformedResponse(ProviderError):
    """The provider's answer did not follow its wire format."""

    retryable = True
    trips_breaker = True


class AuthenticationError(ProviderError):
    """The provider rejected the credentials (401)."""


class PermissionDenied(ProviderError):
    """The credentials lack permission (403)."""


class ModelNotFound(ProviderError):
    """The provider does not serve the requested model (404)."""


class ContentFiltered(ProviderError):
    """The provider refused the content."""


class BadRequest(ProviderError):
    """The provider rejected the request as malformed (4xx)."""


class ContextLengthExceeded(BadRequest):
    """The prompt plus ``max_tokens`` exceed the model's context window."""


class UnsupportedParameter(BadRequest):
    """The request has a member the provider's wire format has no equivalent for; raised by
    a translating worker before it calls anyone, so it never counts against the provider.

    Args:
        param: the member at fault, by its path in the client's request (``logit_bias``,
            ``messages[2].content[0]``…).
        message: what cannot be carried, and what to do instead.
        provider: the provider's name.
    """

    def __init__(self, param: str, message: str, *, provider: str = "") -> None:
        self.param = param
        super().__init__(message, provider=provider, status=400)
