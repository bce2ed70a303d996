"""The HTTP service: an OpenAI-compatible gateway with native, SSE and WebSocket endpoints.

Run it with ``trio-orchestrator serve``, with
``hypercorn --worker-class trio trio_orchestrator.service.app:app``, or inside a Trio program
with ``url = await nursery.start(serve, config)``.
"""

from ..config.service import ApiKeyConfig, EchoConfig, ServiceConfig
from .app import create_app
from .errors import ApiError, map_exception
from .server import serve
from .settings import load_config
from .state import ServiceState

__all__ = [
    "ApiError",
    "ApiKeyConfig",
    "EchoConfig",
    "ServiceConfig",
    "ServiceState",
    "create_app",
    "load_config",
    "map_exception",
    "serve",
]
