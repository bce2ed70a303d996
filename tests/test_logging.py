"""Structured logs: one line per finished request, no prompts or secrets unless enabled."""

from __future__ import annotations

import io
import json
import logging

import pytest
from observability_helpers import (
    PROMPT_SECRET,
    GateRetriever,
    ScriptedWorker,
    request,
    scripted_workload,
    small_config,
)

from trio_orchestrator import WorkerCrashed, open_pipeline
from trio_orchestrator.observability import (
    JsonFormatter,
    LoggingConfig,
    MetricsConfig,
    TextFormatter,
    configure_logging,
    instrument_pipeline,
)

SECRETS = (PROMPT_SECRET, "sk-live-SECRET", "user-456")


async def logged_workload(caplog: pytest.LogCaptureFixture, *, log_prompts: bool) -> None:
    """Run the scripted workload with request logging, capturing INFO lines."""
    config = small_config(
        metrics=MetricsConfig(enabled=False), logging=LoggingConfig(log_prompts=log_prompts)
    )
    caplog.set_level(logging.INFO, logger="trio_orchestrator")
    gate = GateRetriever()
    async with open_pipeline(ScriptedWorker(), config, retriever=gate) as pipeline:
        instrument_pipeline(pipeline)
        await scripted_workload(pipeline, gate)


def request_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The per-request log records."""
    return [r for r in caplog.records if r.name == "trio_orchestrator.requests"]


def formatted(records: list[logging.LogRecord]) -> str:
    """Every record through both formatters, one line each."""
    return "\n".join(f.format(r) for r in records for f in (JsonFormatter(), TextFormatter()))


async def test_one_info_line_per_finished_request(
    caplog: pytest.LogCaptureFixture, autojump_clock: object
) -> None:
    """Twelve requests end, so twelve INFO lines, whose outcomes tally with the workload."""
    await logged_workload(caplog, log_prompts=False)
    records = request_records(caplog)
    assert all(r.levelno == logging.INFO for r in records)
    outcomes = [r.fields["outcome"] for r in records]  # type: ignore[attr-defined]
    assert {o: outcomes.count(o) for o in set(outcomes)} == {
        "completed": 7,
        "failed": 2,
        "shed": 1,
        "expired": 1,
        "cancelled": 1,
    }


async def test_request_line_has_id_model_latency_and_tokens(
    caplog: pytest.LogCaptureFixture, autojump_clock: object
) -> None:
    """A completed request's JSON line names its id, model, latency and token counts."""
    await logged_workload(caplog, log_prompts=False)
    lines = [json.loads(JsonFormatter().format(r)) for r in request_records(caplog)]
    completed = next(line for line in lines if line["outcome"] == "completed")
    assert completed["request_id"].startswith("req_")
    assert completed["model"] == "gpt-test"
    assert completed["provider"] == "scripted"
    assert completed["latency_s"] >= 0
    assert completed["output_tokens"] == 3
    expired = next(line for line in lines if line["outcome"] == "expired")
    assert expired["latency_s"] == pytest.approx(5.0)
    assert expired["error"] == "DeadlineExceeded"


async def test_prompts_and_secrets_are_never_logged_by_default(
    caplog: pytest.LogCaptureFixture, autojump_clock: object
) -> None:
    """No prompt text, credential or user id appears in any line, JSON or text."""
    await logged_workload(caplog, log_prompts=False)
    text = formatted(caplog.records)
    assert request_records(caplog)
    for secret in SECRETS:
        assert secret not in text


async def test_log_prompts_adds_prompt_and_answer_but_no_secrets(
    caplog: pytest.LogCaptureFixture, autojump_clock: object
) -> None:
    """With log_prompts on, prompt and answer appear; credentials and metadata still do not."""
    await logged_workload(caplog, log_prompts=True)
    text = formatted(caplog.records)
    assert PROMPT_SECRET in text
    assert "ok fine thanks" in text
    assert "sk-live-SECRET" not in text
    assert "user-456" not in text


async def test_crash_messages_are_withheld_without_log_prompts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An untyped exception's text (which may quote the prompt) is not logged by default."""

    class Leaky:
        async def generate(self, request: object, emit: object) -> None:
            raise ValueError(f"could not parse {PROMPT_SECRET}")

    caplog.set_level(logging.INFO, logger="trio_orchestrator")
    config = small_config(metrics=MetricsConfig(enabled=False))
    async with open_pipeline(Leaky(), config) as pipeline:
        instrument_pipeline(pipeline)
        with pytest.raises(WorkerCrashed):
            await pipeline.submit(request("hello"))
    (record,) = request_records(caplog)
    assert record.fields["error"] == "WorkerCrashed"  # type: ignore[attr-defined]
    assert PROMPT_SECRET not in formatted([record])


async def test_request_lines_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    """logging.requests = false logs no per-request line."""
    config = small_config(
        metrics=MetricsConfig(enabled=False), logging=LoggingConfig(requests=False)
    )
    caplog.set_level(logging.INFO, logger="trio_orchestrator")
    async with open_pipeline(ScriptedWorker(), config) as pipeline:
        instrument_pipeline(pipeline)
        await pipeline.submit(request("hello"))
    assert request_records(caplog) == []


def test_configure_logging_writes_json_lines() -> None:
    """configure_logging(json=True) makes the package's loggers write one JSON object a line."""
    stream = io.StringIO()
    handler = configure_logging(LoggingConfig(json=True, level="DEBUG"), stream)
    try:
        logger = logging.getLogger("trio_orchestrator.test")
        logger.debug("hello %s", "there", extra={"fields": {"answer": 42}})
        line = json.loads(stream.getvalue())
    finally:
        logging.getLogger("trio_orchestrator").removeHandler(handler)
        logging.getLogger("trio_orchestrator").setLevel(logging.NOTSET)
    assert line["message"] == "hello there"
    assert line["level"] == "DEBUG"
    assert line["answer"] == 42


def test_configure_logging_replaces_its_own_handler() -> None:
    """Configuring twice (a reload) leaves one handler, in the new format."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LoggingConfig(json=True), first)
    handler = configure_logging(LoggingConfig(json=False), second)
    try:
        logging.getLogger("trio_orchestrator.test").warning("once")
    finally:
        logging.getLogger("trio_orchestrator").removeHandler(handler)
        logging.getLogger("trio_orchestrator").setLevel(logging.NOTSET)
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
    assert not second.getvalue().startswith("{")
