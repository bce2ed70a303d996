"""Where the service gets its configuration and its worker.

- :func:`load_config` reads a TOML file into :class:`~trio_orchestrator.config.Config` with
  the strict loader (:func:`trio_orchestrator.config.load_config`).
- :func:`open_worker` opens the worker the configuration asks for, for the life of the
  service.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractAsyncContextManager

from ..config import Config
from ..config import load_config as _load_config
from ..gateway import open_configured_worker
from ..workers import ModelWorker

__all__ = [
    "CONFIG_ENV",
    "config_from_environment",
    "load_config",
    "log_to_stderr",
    "open_worker",
]

# Names the config file for ``hypercorn trio_orchestrator.service.app:app`` (and for the
# worker processes of ``serve --workers N``, which import the app the same way).
CONFIG_ENV = "TRIO_ORCHESTRATOR_CONFIG"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a TOML configuration file with the strict loader.

    Raises:
        ConfigError: the file is missing, is not TOML, or does not fit the configuration
            (every problem, each with its key path).
    """
    return _load_config(path)


def config_from_environment() -> Config:
    """The configuration named by ``$TRIO_ORCHESTRATOR_CONFIG``, or the defaults."""
    path = os.environ.get(CONFIG_ENV)
    return Config() if not path else load_config(path)


def open_worker(config: Config) -> AbstractAsyncContextManager[ModelWorker]:
    """Open the worker the configuration asks for, for the life of the service: the echo
    worker when no provider is configured, else the providers (behind the router when
    ``[routing]`` declares deployments); see :func:`trio_orchestrator.gateway`."""
    return open_configured_worker(config)


def log_to_stderr() -> None:
    """Send the package's log (INFO and up) to stderr, unless logging is set up already.

    Hypercorn logs to stderr itself; this adds the service's lines (draining, final counts).
    """
    package = logging.getLogger("trio_orchestrator")
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    package.addHandler(handler)
    package.setLevel(logging.INFO)
