"""Structured logs: a JSON or ``key=value`` formatter, and one line per finished request.

Request lines go to the ``trio_orchestrator.requests`` logger at ``INFO``, with their fields
in the record's ``fields`` attribute (a dict), which both formatters render. Prompt and answer
text appear only with ``log_prompts`` on; request metadata (which may hold credentials or
user ids) never does.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final

from ..errors import WorkerCrashed
from .config import LoggingConfig

if TYPE_CHECKING:
    from ..pipeline.job import FinishedRequest

__all__ = ["JsonFormatter", "RequestLogger", "TextFormatter", "configure_logging", "is_ours"]

REQUEST_LOGGER: Final = "trio_orchestrator.requests"
_HANDLER_MARK: Final = "_trio_orchestrator_handler"


# One encoder each, made once: ``json.dumps`` with ``default`` builds a new encoder per
# call, which was a third of a request line's cost (nine values a line).
_JSON_LINE: Final = json.JSONEncoder(default=str, ensure_ascii=False).encode
_TEXT_VALUE: Final = json.JSONEncoder(default=str).encode


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object: time, level, logger, message, then fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a line of JSON."""
        data: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return _JSON_LINE(data)


class TextFormatter(logging.Formatter):
    """Formats each record as ``time level logger message key=value…``."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of text (plus a traceback, if any)."""
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        parts += [f"{key}={_TEXT_VALUE(value)}" for key, value in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def is_ours(handler: logging.Handler) -> bool:
    """Whether :func:`configure_logging` installed ``handler`` (and may replace it)."""
    return bool(getattr(handler, _HANDLER_MARK, False))


def configure_logging(config: LoggingConfig, stream: IO[str] | None = None) -> logging.Handler:
    """Send the ``trio_orchestrator`` loggers to ``stream`` in the configured format and level.

    Calling it again replaces the handler it installed before (e.g. after a reload).

    Args:
        config: level and format.
        stream: where lines go (default: standard error).

    Returns:
        The handler it installed.
    """
    logger = logging.getLogger("trio_orchestrator")
    for old in [h for h in logger.handlers if is_ours(h)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if config.json else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(config.level_number)
    return handler


class RequestLogger:
    """A pipeline listener that logs one line per finished request at ``INFO``.

    Args:
        provider: the provider name, logged with each line.
        log_prompts: also log prompt and answer text.
        logger: where lines go (default: ``trio_orchestrator.requests``).
    """

    def __init__(
        self, provider: str, *, log_prompts: bool = False, logger: logging.Logger | None = None
    ) -> None:
        self._provider = provider
        self._log_prompts = log_prompts
        self._logger = logger or logging.getLogger(REQUEST_LOGGER)

    def __call__(self, record: FinishedRequest) -> None:
        """Log ``record`` (cheaply skipped when INFO is not enabled)."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        request = record.request
        fields = self.fields(record)
        self._logger.info(
            "request %s %s", request.request_id, record.outcome.value, extra={"fields": fields}
        )

    def fields(self, record: FinishedRequest) -> dict[str, Any]:
        """The fields of ``record``'s line."""
        request, completion, error = record.request, record.completion, record.error
        fields: dict[str, Any] = {
            "request_id": request.request_id,
            "outcome": record.outcome.value,
            "provider": self._provider,
            "model": request.params.model,
            "latency_s": round(record.latency, 6),
        }
        if record.time_to_first_token is not None:
            fields["time_to_first_token_s"] = round(record.time_to_first_token, 6)
        if completion is not None:
            fields["finish_reason"] = completion.finish_reason
            if completion.usage is not None:
                fields["input_tokens"] = completion.usage.input_tokens
                fields["output_tokens"] = completion.usage.output_tokens
        if error is not None:
            fields["error"] = type(error).__name__
            # An untyped exception's text may quote anything, the prompt included.
            if self._log_prompts or not isinstance(error, WorkerCrashed):
                fields["error_message"] = str(error)
        if self._log_prompts:
            fields["prompt"] = [{"role": m.role, "content": m.content} for m in request.chat()]
            if completion is not None:
                fields["answer"] = completion.text
        return fields
