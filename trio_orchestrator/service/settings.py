"""Where the service gets its configuration and its worker.

Two seams, each one function, for the branches that provide the real thing:

- :func:`load_config` reads a TOML file into :class:`~trio_orchestrator.config.Config`. This
  minimal loader (tomllib, then cattrs with unknown keys rejected) stands in until the
  configuration package's strict loader replaces it.
- :func:`open_worker` opens the worker the configuration asks for, for the life of the
  service. It yields the echo worker; the providers plug in here.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cattrs
from cattrs.v import format_exception

from ..config import Config, Secret
from ..errors import ConfigError
from ..workers import EchoWorker, ModelWorker

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
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _secret(value: Any, _type: type) -> Secret:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    match = _ENV_REFERENCE.fullmatch(value)
    if match is None:
        return Secret(value)
    name = match.group(1)
    if name not in os.environ:
        raise ValueError(f"environment variable {name} is not set")
    return Secret(os.environ[name])


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(Secret, _secret)
    return converter


def _describe_error(exc: BaseException, type_: type | None) -> str:
    # The validators' own messages say what was expected; keep them.
    if isinstance(exc, ValueError) and not isinstance(exc, KeyError):
        return str(exc)
    return format_exception(exc, type_)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a TOML configuration file.

    Raises:
        ConfigError: the file is missing, is not TOML, or does not fit the configuration.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        return _converter().structure(data, Config)
    except cattrs.BaseValidationError as exc:
        lines = cattrs.transform_error(exc, format_exception=_describe_error)
        raise ConfigError([f"{path}: {line}" for line in lines]) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def config_from_environment() -> Config:
    """The configuration named by ``$TRIO_ORCHESTRATOR_CONFIG``, or the defaults."""
    path = os.environ.get(CONFIG_ENV)
    return Config() if not path else load_config(path)


@asynccontextmanager
async def open_worker(config: Config) -> AsyncIterator[ModelWorker]:
    """Open the worker the configuration asks for, for the life of the service.

    For now this is always the echo worker (``[service.echo]``); the provider workers,
    which hold an HTTP client open, plug in here.
    """
    echo = config.service.echo
    yield EchoWorker(echo.token_delay, echo.first_token_delay, model=echo.model)


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
