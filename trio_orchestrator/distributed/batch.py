"""Batch jobs worked through by several processes (or hosts) at once, through Redis.

``trio-orchestrator batch INPUT --out OUT --queue redis://…`` on several machines with the
same input file: one of them loads the lines onto a :class:`~trio_orchestrator.distributed.
WorkQueue` (named after the file's name and contents, so every process finds the same one),
every one takes lines from it, and each line's result is recorded once, by the process that
finished it first. Each process appends the records it recorded to its own ``OUT`` (and
dead-letter) file, in the same formats as a local batch; together the files hold every line
exactly once, and the queue's results hash holds them all. A process that dies mid-job
leaves its lines to be claimed by the others after ``claim_after`` seconds; rerunning the
command resumes (a finished queue ends at once).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs

from ..batch import (
    BadLine,
    classify,
    dead_record,
    open_for_append,
    parse_line,
    read_lines,
    result_record,
)
from ..config import Config
from ..errors import RequestError, WorkerError
from ..gateway import open_gateway
from ..pipeline import Pipeline
from ..workers.base import ModelWorker
from .queue import QueueItem, WorkQueue, work_through

__all__ = ["SharedBatchSummary", "queue_name", "run_shared_batch"]


@attrs.frozen
class SharedBatchSummary:
    """What one process did in a shared batch."""

    queue: str
    """The queue's name."""
    loaded: bool
    """This process loaded the lines onto the queue."""
    total: int
    """Lines in the batch."""
    done: int
    """Lines with a recorded result, by every process."""
    recorded: int
    """Of those, lines whose result this process recorded (and wrote to its files)."""
    completed: int
    """Of those, lines answered (in the output file)."""
    dead: int
    """Of those, lines failed, shed, expired or malformed (in the dead-letter file)."""


def queue_name(input_path: Path) -> str:
    """The default queue name of a batch: the file's name and a digest of its contents."""
    digest = hashlib.sha256(input_path.read_bytes()).hexdigest()[:16]
    return f"batch:{input_path.name}:{digest}"


async def run_shared_batch(
    input_path: Path,
    out_path: Path,
    *,
    worker: ModelWorker | None = None,
    config: Config,
    dead_path: Path | None = None,
    name: str | None = None,
    concurrency: int = 32,
    claim_after: float = 60.0,
) -> SharedBatchSummary:
    """Work through ``input_path`` together with every other process running it.

    Args:
        input_path: the JSONL input (see :mod:`trio_orchestrator.batch`).
        out_path: where this process appends the results it records.
        worker: the worker the pipeline calls.
        config: the configuration; ``distributed.redis_url`` must be set.
        dead_path: where failures go (default: ``out_path`` plus ``.dead``).
        name: the queue's name (default: :func:`queue_name`).
        concurrency: requests at once in this process.
        claim_after: seconds before a line held by a silent process is taken over.

    Raises:
        ValueError: ``distributed.redis_url`` is not set.
        RedisUnavailable: Redis is unreachable at start.
    """
    if config.distributed.redis_url is None:
        raise ValueError("a shared batch needs [distributed] redis_url (or --queue URL)")
    name = name or queue_name(input_path)
    dead_path = dead_path or out_path.with_name(out_path.name + ".dead")
    lines = [(str(number), text) for number, text in read_lines(input_path)]
    counts = {"out": 0, "dead": 0}
    with open_for_append(out_path) as out, open_for_append(dead_path) as dead:

        def write(item: QueueItem, result: str) -> None:
            kind, record = next(iter(json.loads(result).items()))
            (out if kind == "out" else dead).write(json.dumps(record, ensure_ascii=False) + "\n")
            (out if kind == "out" else dead).flush()
            counts[kind] += 1

        async with open_gateway(config, worker=worker) as gateway:
            pipeline = gateway.pipeline
            assert gateway.redis is not None
            queue = WorkQueue(gateway.redis, name, claim_after=claim_after)
            loaded = await queue.load(lines)
            recorded = await work_through(
                queue, _handler(pipeline), concurrency=concurrency, on_recorded=write
            )
            progress = await queue.progress()
    return SharedBatchSummary(
        name, loaded, progress.total, progress.done, recorded, counts["out"], counts["dead"]
    )


def _handler(pipeline: Pipeline) -> Any:
    async def handle(item: QueueItem) -> str:
        parsed = parse_line(int(item.id), item.payload)
        if isinstance(parsed, BadLine):
            record = dead_record(
                parsed.key, parsed.line, "bad_line", "BadLine", parsed.reason, openai=False
            )
            return json.dumps({"dead": record | {"input": parsed.text}})
        try:
            completion = await pipeline.submit(parsed.request)
        except (RequestError, WorkerError) as exc:
            outcome, code = classify(exc)
            if outcome == "cancelled":
                raise  # shutting down: left on the queue for another process, or a rerun
            record = dead_record(
                parsed.id, parsed.line, outcome, code, str(exc), openai=parsed.openai
            )
            return json.dumps({"dead": record})
        return json.dumps({"out": result_record(parsed, completion)})

    return handle
