"""Batch jobs: a JSONL file of requests through the pipeline, resumable, one result per line.

Input lines are either the OpenAI batch format::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}}

or the simple form ``{"id": "r1", "prompt": "Hi"}`` (optionally ``"model"``,
``"max_tokens"``, ``"temperature"``). Each finished request is written at once as one JSON
line (flushed): completed ones to the output file (in the OpenAI batch output format for
OpenAI input), everything else (failed, shed, expired, bad lines, and in-flight requests an
interrupt stopped) to the dead-letter file, each with its reason.

Rerunning with the same output resumes: ids already in the output or the dead-letter file are
skipped, except those an interrupt stopped, which are retried (their records are dropped from
the dead-letter file first, so every id appears once across both files).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import attrs
import trio

from .config import Config
from .errors import RequestCancelled, RequestError, RequestShed, WorkerError
from .events import Completion
from .gateway import open_gateway
from .pipeline import Pipeline
from .types import GenerationParams, Message, PromptRequest, ToolCall
from .workers.base import ModelWorker

__all__ = [
    "BadLine",
    "BatchItem",
    "BatchProgress",
    "BatchSummary",
    "classify",
    "dead_record",
    "open_for_append",
    "parse_line",
    "read_lines",
    "result_record",
    "run_batch",
]

# A dead-letter record with this outcome is retried by the next run.
INTERRUPTED = "interrupted"


@attrs.frozen
class BatchItem:
    """One request of a batch.

    Attributes:
        id: the line's ``custom_id`` (OpenAI form) or ``id`` (simple form).
        line: the line number in the input file (from 1).
        request: the request to run.
        openai: the line was in the OpenAI batch format (so is its result).
    """

    id: str
    line: int
    request: PromptRequest
    openai: bool


@attrs.frozen
class BadLine:
    """An input line that is not a valid request.

    Attributes:
        line: the line number (from 1).
        reason: what is wrong with it.
        text: the line as read.
        id: its id, when one could be read.
    """

    line: int
    reason: str
    text: str
    id: str | None = None

    @property
    def key(self) -> str:
        """The name of this line in the dead-letter file (its id, else ``line:N``)."""
        return self.id if self.id is not None else f"line:{self.line}"


@attrs.frozen
class BatchSummary:
    """What a batch run did."""

    completed: int
    """Requests answered and written to the output."""
    failed: int
    """Requests whose worker failed (dead-lettered)."""
    shed: int
    """Requests the pipeline shed for lack of room (dead-lettered)."""
    expired: int
    """Requests that passed their deadline (dead-lettered)."""
    interrupted: int
    """In-flight requests an interrupt stopped (dead-lettered; retried by the next run)."""
    bad_lines: int
    """Input lines that were not valid requests (dead-lettered with their line numbers)."""
    skipped: int
    """Requests already done by an earlier run."""
    total: int
    """Non-blank input lines."""

    @property
    def was_interrupted(self) -> bool:
        """The run stopped before it reached the end of the input."""
        return self.interrupted > 0 or self.done < self.total

    @property
    def done(self) -> int:
        """Lines accounted for in this run or an earlier one."""
        return (
            self.completed + self.failed + self.shed + self.expired + self.bad_lines + self.skipped
        )


class BatchProgress(Protocol):
    """Receives progress: ``advance(outcome)`` once per line accounted for."""

    def start(self, total: int) -> None:
        """The run begins; ``total`` lines are in the input."""

    def advance(self, outcome: str) -> None:
        """One line was accounted for, with ``outcome`` (``completed``, ``failed``…)."""

    def stop(self) -> None:
        """The run ended."""


class _NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, outcome: str) -> None:
        pass

    def stop(self) -> None:
        pass


# ---------------------------------------------------------------------------- parsing


class _LineError(ValueError):
    pass


def parse_line(number: int, text: str) -> BatchItem | BadLine:
    """Parse one input line (``number`` counts from 1) into a request, or say what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadLine(number, f"not valid JSON: {exc.msg} at column {exc.colno}", text)
    if not isinstance(data, dict):
        return BadLine(number, "a line must be a JSON object", text)
    raw_id = data.get("custom_id", data.get("id"))
    item_id = (
        str(raw_id) if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
    )
    try:
        if item_id is None:
            raise _LineError('a line needs a string "custom_id" (OpenAI form) or "id"')
        if "custom_id" in data:
            return BatchItem(item_id, number, _openai_request(item_id, data), openai=True)
        return BatchItem(item_id, number, _simple_request(item_id, data), openai=False)
    except (_LineError, ValueError, TypeError) as exc:
        return BadLine(number, str(exc), text, item_id)


def _simple_request(item_id: str, data: dict[str, Any]) -> PromptRequest:
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise _LineError('the simple form needs a string "prompt"')
    params = _params(data, {"model", "max_tokens", "temperature"})
    return PromptRequest(input=prompt, params=params, request_id=item_id)


def _openai_request(item_id: str, data: dict[str, Any]) -> PromptRequest:
    url = data.get("url", "/v1/chat/completions")
    if url != "/v1/chat/completions":
        raise _LineError(f"url {url!r} is not supported; use /v1/chat/completions")
    if data.get("method", "POST") != "POST":
        raise _LineError(f"method {data.get('method')!r} is not supported; use POST")
    body = data.get("body")
    if not isinstance(body, dict):
        raise _LineError('"body" must be a chat completion request object')
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _LineError('"body.messages" must be a non-empty list')
    messages = [_message(i, m) for i, m in enumerate(raw)]
    known = {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop"}
    params = _params(body, known | {"seed", "messages"})
    return PromptRequest(messages=messages, params=params, request_id=item_id)


def _message(index: int, data: object) -> Message:
    if not isinstance(data, dict):
        raise _LineError(f"body.messages[{index}] must be an object")
    content = data.get("content") or ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise _LineError(f"body.messages[{index}].content must be a string or a list of parts")
    calls = tuple(
        ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments", ""))
        for c in data.get("tool_calls") or ()
    )
    try:
        return Message(
            data.get("role", ""), content, data.get("name"), calls, data.get("tool_call_id")
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise _LineError(f"body.messages[{index}]: {exc}") from exc


def _params(data: dict[str, Any], known: set[str]) -> GenerationParams:
    stop = data.get("stop") or ()
    extra = {k: v for k, v in data.items() if k not in known and k not in {"id", "prompt"}}
    return GenerationParams(
        model=str(data.get("model", "echo")),
        max_tokens=data.get("max_completion_tokens", data.get("max_tokens")),
        temperature=data.get("temperature"),
        top_p=data.get("top_p"),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        seed=data.get("seed"),
        extra=extra,
    )


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a batch input (or record) file.

    Args:
        path: the JSONL file, read as UTF-8 (undecodable bytes replaced, so a bad line is
            reported as a bad line rather than stopping the batch).

    Returns:
        Each non-blank line without its newline, with its number (from 1).
    """
    with path.open(encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, 1):
            if line.strip():
                yield number, line.rstrip("\n")


# ---------------------------------------------------------------------------- result records


def _usage(completion: Completion) -> dict[str, int] | None:
    usage = completion.usage
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


def result_record(item: BatchItem, completion: Completion) -> dict[str, Any]:
    """The output-file record of an answered line.

    Args:
        item: the line's request.
        completion: its answer.

    Returns:
        The OpenAI batch output record for a line in the OpenAI form, else the simple
        ``{"id", "text", "finish_reason", "usage", "model"}`` record.
    """
    if not item.openai:
        return {
            "id": item.id,
            "text": completion.text,
            "finish_reason": completion.finish_reason,
            "usage": _usage(completion),
            "model": completion.model,
        }
    message: dict[str, Any] = {"role": "assistant", "content": completion.text}
    if completion.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completion.tool_calls
        ]
    body = {
        "id": f"chatcmpl-{item.id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model or item.request.params.model,
        "choices": [{"index": 0, "message": message, "finish_reason": completion.finish_reason}],
        "usage": _usage(completion),
    }
    return {
        "id": f"batch_req_{item.id}",
        "custom_id": item.id,
        "response": {"status_code": 200, "request_id": item.id, "body": body},
        "error": None,
    }


def dead_record(
    key: str, line: int, outcome: str, error: str, reason: str, *, openai: bool
) -> dict[str, Any]:
    """The dead-letter-file record of a line that was not answered.

    Args:
        key: the line's id (``custom_id`` in the OpenAI form).
        line: its line number in the input.
        outcome: how it ended (``failed``, ``shed``, ``expired``, ``bad_line``, …).
        error: the error's code (its class name).
        reason: the error's message.
        openai: the line was in the OpenAI batch form (the record then is too).

    Returns:
        The record, ready to be written as one JSON line.
    """
    record: dict[str, Any] = {"custom_id" if openai else "id": key, "line": line}
    record |= {"outcome": outcome, "error": {"code": error, "message": reason}}
    if openai:
        record["response"] = None
    return record


def classify(exc: BaseException) -> tuple[str, str]:
    """The outcome and error code of a request that ended with ``exc``.

    Args:
        exc: what ``Pipeline.submit`` raised.

    Returns:
        ``(outcome, code)``: outcome ``shed``, ``cancelled``, ``expired`` or ``failed``;
        code the exception's class name.
    """
    if isinstance(exc, RequestShed):
        return "shed", type(exc).__name__
    if isinstance(exc, RequestCancelled):
        return "cancelled", type(exc).__name__
    if isinstance(exc, RequestError):
        return "expired", type(exc).__name__
    return "failed", type(exc).__name__


# ---------------------------------------------------------------------------- files


def _record_key(record: dict[str, Any]) -> str | None:
    key = record.get("custom_id", record.get("id"))
    return key if isinstance(key, str) else None


def _load_records(path: Path) -> list[dict[str, Any]]:
    """The whole records of a JSONL file; a torn last line (a crash mid-write) is dropped."""
    if not path.exists():
        return []
    records = []
    for _, text in read_lines(path):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _prepare_resume(out: Path, dead: Path) -> set[str]:
    """Return the keys already done; drop interrupted records from ``dead`` to retry them.

    Both files are rewritten atomically (temporary file, then rename) when they hold torn
    lines or interrupted records, so they end up holding whole lines only.
    """
    done: set[str] = set()
    for path, keep in ((out, lambda r: True), (dead, lambda r: r.get("outcome") != INTERRUPTED)):
        records = _load_records(path)
        kept = [r for r in records if keep(r)]
        if path.exists() and (len(kept) != len(records) or not _ends_cleanly(path)):
            _rewrite(path, kept)
        done.update(k for r in kept if (k := _record_key(r)) is not None)
    return done


def _ends_cleanly(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def _rewrite(path: Path, records: list[dict[str, Any]]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


@attrs.define(eq=False)
class _Writer:
    """Appends whole JSON lines, one ``write`` and one flush each, and keeps the counts."""

    out: IO[str]
    dead: IO[str]
    progress: BatchProgress
    warn: Callable[[str], None]
    counts: dict[str, int] = attrs.field(factory=dict)

    @trio.lowlevel.enable_ki_protection
    def _append(self, file: IO[str], record: dict[str, Any], outcome: str) -> None:
        # KI-protected, so a Ctrl-C under Trio's default handler cannot land mid-record.
        file.write(json.dumps(record, ensure_ascii=False) + "\n")
        file.flush()
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.progress.advance(outcome)

    def result(self, item: BatchItem, completion: Completion) -> None:
        self._append(self.out, result_record(item, completion), "completed")

    def failure(self, item: BatchItem, outcome: str, error: str, reason: str) -> None:
        record = dead_record(item.id, item.line, outcome, error, reason, openai=item.openai)
        self._append(self.dead, record, outcome)

    def bad_line(self, bad: BadLine, *, record: bool) -> None:
        if record:  # else recorded by an earlier run: skipped, like a line already answered
            self.warn(f"line {bad.line}: {bad.reason}")
            entry = dead_record(bad.key, bad.line, "bad_line", "BadLine", bad.reason, openai=False)
            self._append(self.dead, entry | {"input": bad.text}, "bad_lines")
        else:
            self.counts["skipped"] = self.counts.get("skipped", 0) + 1
            self.progress.advance("skipped")

    def skipped(self) -> None:
        self.counts["skipped"] = self.counts.get("skipped", 0) + 1
        self.progress.advance("skipped")


# ---------------------------------------------------------------------------- running


async def _run_one(
    pipeline: Pipeline, item: BatchItem, writer: _Writer, limiter: trio.CapacityLimiter
) -> None:
    try:
        # Answered whole into the results file: a fault mid-answer may be retried.
        completion = await pipeline.submit(item.request.streamed(False))
    except (RequestError, WorkerError) as exc:
        outcome, code = classify(exc)
        if outcome == "cancelled":
            outcome = INTERRUPTED
        writer.failure(item, outcome, code, str(exc))
    except trio.Cancelled:
        writer.failure(item, INTERRUPTED, "Interrupted", "the batch was interrupted; rerun it")
        raise
    else:
        writer.result(item, completion)
    finally:
        limiter.release_on_behalf_of(item)


async def _feed(
    input_path: Path,
    pipeline: Pipeline,
    writer: _Writer,
    done: set[str],
    concurrency: int,
    stop: trio.Event,
) -> None:
    limiter = trio.CapacityLimiter(concurrency)
    seen: set[str] = set()
    async with trio.open_nursery() as nursery:
        for number, text in read_lines(input_path):
            if stop.is_set():
                break
            item = parse_line(number, text)
            if isinstance(item, BatchItem) and item.id in seen:
                item = BadLine(number, f"duplicate id {item.id!r}", text)
            if isinstance(item, BadLine):
                writer.bad_line(item, record=item.key not in done)
                continue
            seen.add(item.id)
            if item.id in done:
                writer.skipped()
                continue
            await limiter.acquire_on_behalf_of(item)
            if stop.is_set():
                limiter.release_on_behalf_of(item)
                break
            nursery.start_soon(_run_one, pipeline, item, writer, limiter)


async def run_batch(
    input_path: Path,
    out_path: Path,
    *,
    worker: ModelWorker | None = None,
    dead_path: Path | None = None,
    config: Config | None = None,
    concurrency: int = 32,
    progress: BatchProgress | None = None,
    stop: trio.Event | None = None,
    grace_period: float | None = None,
    handle_sigint: bool = False,
    warn: Callable[[str], None] = lambda message: None,
) -> BatchSummary:
    """Run every request of ``input_path`` through the gateway ``config`` describes.

    Args:
        input_path: the JSONL input (see the module docstring).
        out_path: where results go (appended; existing results are skipped; missing
            directories are created).
        worker: the provider worker (default: the configuration's providers; the layers
            ``[resilience]`` enables go around it either way).
        dead_path: where failures go (default: ``out_path`` plus ``.dead``).
        config: the pipeline's configuration (limits, timeouts, grace period).
        concurrency: the most requests submitted at once.
        progress: receives progress (default: none).
        stop: set it to stop: no new requests start, in-flight ones get ``grace_period``
            seconds, then those still running are recorded as interrupted.
        grace_period: seconds in-flight requests get after ``stop`` (default: the config's).
        handle_sigint: a first SIGINT (Ctrl-C) sets ``stop``; a second one ends the grace
            period at once (main thread only).
        warn: called with one line per bad input line not recorded by an earlier run.

    Returns:
        The counts of what happened.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
    """
    config = config or Config()
    dead_path = dead_path or out_path.with_name(out_path.name + ".dead")
    stop = trio.Event() if stop is None else stop
    grace = config.pipeline.grace_period if grace_period is None else grace_period
    total = sum(1 for _ in read_lines(input_path))
    done = _prepare_resume(out_path, dead_path)
    progress = progress or _NoProgress()
    out, dead = open_for_append(out_path), open_for_append(dead_path)
    writer = _Writer(out, dead, progress, warn)
    progress.start(total)
    try:
        async with (
            open_gateway(config, worker=worker) as gateway,
            trio.open_nursery() as nursery,
        ):
            pipeline = gateway.pipeline
            feed_scope = trio.CancelScope()
            nursery.start_soon(_stop_after_grace, stop, feed_scope, grace)
            if handle_sigint:
                nursery.start_soon(_watch_sigint, stop, feed_scope)
            with feed_scope:
                await _feed(input_path, pipeline, writer, done, concurrency, stop)
            nursery.cancel_scope.cancel()
    finally:
        progress.stop()
        out.close()
        dead.close()
    counts = writer.counts
    return BatchSummary(**{name: counts.get(name, 0) for name in _COUNTED}, total=total)


_COUNTED = ("completed", "failed", "shed", "expired", "interrupted", "bad_lines", "skipped")


def open_for_append(path: Path) -> IO[str]:
    """Open a result or dead-letter file to append records to (UTF-8, created if absent,
    with its missing parent directories)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8")


async def _stop_after_grace(stop: trio.Event, scope: trio.CancelScope, grace: float) -> None:
    await stop.wait()
    scope.deadline = min(scope.deadline, trio.current_time() + grace)


async def _watch_sigint(stop: trio.Event, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            if stop.is_set():
                scope.cancel()
            stop.set()
