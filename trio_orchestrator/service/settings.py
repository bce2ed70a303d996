"""Where the service gets its configuration and its worker.

- :func:`load_config` reads a TOML file into :class:`~trio_orchestrator.config.Config` with
  the strict loader (:func:`trio_orchestrator.config.load_config`).
"""

from __future__ import annotations

import logging
import os

from ..config import Config
from ..config import load_config as _load_config
from ..observability.config import LoggingConfig
from ..observability.logging import configure_logging, is_ours

__all__ = [
    "CONFIG_ENV",
    "config_from_environment",
    "load_config",
    "log_to_stderr",
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


def log_to_stderr(config: LoggingConfig | None = None) -> None:
    """Log as ``[observability.logging]`` says (level, JSON or text) to stderr, unless the
    program has set up logging itself (a handler on the root logger or on the package's).

    Hypercorn logs to stderr itself; this adds the service's lines (draining, final counts,
    one per request). Calling it again replaces what it installed before.

    Args:
        config: the logging settings (the defaults when ``None``).
    """
    package = logging.getLogger("trio_orchestrator")
    if logging.getLogger().handlers or any(not is_ours(h) for h in package.handlers):
        return
    configure_logging(config or LoggingConfig())
