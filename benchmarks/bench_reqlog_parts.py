"""What spend and the request log cost per request, in parts and in process: the listener's
work on the event loop (the request priced, its records built and buffered) and the
writers' flush (rows built, SQLite in its worker thread), for completed streamed requests.

``bench_reqlog.py`` measures the whole served gateway, whose figure on a loaded machine
moves by more than the 5 % it looks for; ``profile_reqlog.py`` counts the calls on the event
loop but cannot see the writers' thread. This drives the gateway's own listener and writers
(as ``open_gateway`` wires them with storage on: one listener charging spend and logging)
with ``--requests`` finished requests against a SQLite file, in blocks, and reports the
process CPU per request of each part (medians over blocks). Ends with one line of JSON.

``--rows`` fills the request log first (the table the served bench's ``on`` gateway
writes into grows by every request, and an insert costs more in a bigger one).

    python benchmarks/bench_reqlog_parts.py [--quick] [--requests N] [--rows N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import trio

from trio_orchestrator.events import Completion, Usage
from trio_orchestrator.observability.requestlog import NotingWorker, RequestLogListener
from trio_orchestrator.observability.spend import SpendListener
from trio_orchestrator.pipeline import FinishedRequest, Outcome
from trio_orchestrator.routing.keys import VirtualKeys
from trio_orchestrator.storage import (
    RequestLogWriter,
    RequestRecord,
    SpendWriter,
    SqliteStore,
    StorageConfig,
)
from trio_orchestrator.types import GenerationParams, PromptRequest, RequestNotes, new_request_id
from trio_orchestrator.workers import EchoWorker

BLOCKS = 6


def finished(count: int) -> list[FinishedRequest]:
    """``count`` completed streamed requests, with a usage, as the pipeline reports them."""
    usage = Usage(input_tokens=5, output_tokens=8)
    records = []
    for _ in range(count):
        request = PromptRequest(input="hello", params=GenerationParams(model="fake-model"))
        completion = Completion(request.request_id, "one two", "stop", usage, model="fake-model")
        records.append(FinishedRequest(request, Outcome.COMPLETED, completion, None, 0.003, 0.001))
    return records


async def prefill(store: SqliteStore, rows: int) -> None:
    """Give the request log ``rows`` records first: an insert costs more in a bigger table
    (the request id's index takes each random id somewhere in its whole width, a page
    written per record once the index is wider than a batch)."""
    for start in range(0, rows, 5_000):
        batch = [
            RequestRecord(id=new_request_id(), created=1e9 + i, model="fake-model")
            for i in range(start, min(rows, start + 5_000))
        ]
        await store.add_requests(batch)


async def measure(path: Path, count: int, rows: int = 0) -> dict[str, float]:
    """CPU per request (µs) of the listener and of the writers' flush; medians over blocks.
    ``rows``: records in the request log before."""
    store = SqliteStore(str(path))
    await store.open()
    await prefill(store, rows)
    config = StorageConfig(backend="sqlite", path=str(path), buffer_capacity=count, flush_batch=500)
    log, spend_writer = RequestLogWriter(store, config), SpendWriter(store, config)
    keys = VirtualKeys()
    noting = NotingWorker(EchoWorker())
    spend = SpendListener(spend_writer, keys, lambda _name: None, lambda _name: "fake")
    listener = RequestLogListener(
        log, keys, lambda _name: None, lambda _name: "fake", noting, spend=spend
    )
    records = finished(count)
    size = count // BLOCKS
    loop, flush = [], []
    for block in range(BLOCKS):
        chunk = records[block * size : (block + 1) * size]
        for record in chunk:  # what NotingWorker leaves for each call
            noting._notes[record.request.request_id] = RequestNotes()
        started = time.process_time()
        for record in chunk:
            listener(record)
        loop.append((time.process_time() - started) / size * 1e6)
        started = time.process_time()
        await log.flush()
        await spend_writer.flush()
        flush.append((time.process_time() - started) / size * 1e6)
    await store.aclose()
    return {"event_loop_us": statistics.median(loop), "writers_us": statistics.median(flush)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument(
        "--rows", type=int, default=0, help="request log records written before (its size)"
    )
    args = parser.parse_args()
    count = args.requests or (3_000 if args.quick else 30_000)
    with tempfile.TemporaryDirectory() as tmp:
        result = trio.run(measure, Path(tmp) / "parts.sqlite", count, args.rows)
    print(
        f"bench_reqlog_parts ({count} requests, {args.rows} logged before): CPU per request "
        f"on the event loop "
        f"{result['event_loop_us']:.1f} µs, in the writers' flush {result['writers_us']:.1f} µs"
    )
    record = {"bench": "reqlog_parts", "requests": count, "rows": args.rows, "results": result}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
