"""Shared test configuration: Hypothesis profiles and common fixtures.

Profiles (choose with ``HYPOTHESIS_PROFILE``): ``dev`` (the default, quick), ``ci`` (enough
examples to matter, derandomized so CI is repeatable), ``thorough`` (nightly-style).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from socket_origins import trace_socket_origins

from trio_orchestrator.config.service import SERVERS, ServerKind

# tiktoken comes with langchain-openai (a dev dependency) and would download its encoding from
# the internet on first use; the tests count tokens with the documented heuristic instead.
os.environ.setdefault("TRIO_ORCHESTRATOR_TOKENIZER", "heuristic")

# An unclosed socket's ResourceWarning names the code (and the test) that made it.
trace_socket_origins()

_SLOW_OK = [HealthCheck.too_slow]

settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=_SLOW_OK
)
# Mutation testing (scripts/mutation.py): the same examples every run, so a mutant's verdict
# does not depend on luck, and no example database carried from one mutant to the next.
settings.register_profile(
    "mutation",
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=_SLOW_OK,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _use_h11_transport() -> None:
    """Make the project's h11 transport every client's default transport (httpx's and
    httpx2's), so the transport-sensitive tests run against it unchanged:
    ``TRIO_ORCHESTRATOR_TEST_TRANSPORT=h11 pytest tests/test_http_send.py …``."""
    import importlib
    import ssl
    from typing import Any

    from trio_orchestrator.workers.h11transport import H11Transport

    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - both are dependencies
            continue
        default = module.AsyncHTTPTransport

        def make(*args: Any, _module: Any = module, _default: Any = default, **kwargs: Any) -> Any:
            if args or any(kwargs.get(k) for k in ("http2", "proxy", "uds", "retries", "cert")):
                return _default(*args, **kwargs)  # what the h11 transport does not do
            verify = kwargs.get("verify", True)
            if isinstance(verify, str):
                verify = ssl.create_default_context(cafile=verify)
            return H11Transport(verify=verify, limits=kwargs.get("limits"), module=_module)

        # Both names: the package's, and the one AsyncClient() builds its default from.
        setattr(module, "AsyncHTTPTransport", make)  # noqa: B010
        setattr(module._client, "AsyncHTTPTransport", make)  # noqa: B010


if os.environ.get("TRIO_ORCHESTRATOR_TEST_TRANSPORT") == "h11":
    _use_h11_transport()


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> ServerKind:
    """What serves HTTP under ``serve`` (``service.server``): a test taking this fixture runs
    once per server, so every server is held to the same behaviour."""
    kind: ServerKind = request.param
    return kind
