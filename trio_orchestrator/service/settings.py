"""Where the service gets its configuration and its worker.

- :func:`load_config` reads a TOML file into :class:`~trio_orchestrator.config.Config` with
  the strict loader (:func:`trio_orchestrator.config.load_config`).
"""

from __future__ import annotations

import logging
import os

from ..config import Config
from ..config import load_config as _load_config

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
