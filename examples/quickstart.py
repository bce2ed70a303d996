"""Library quick start: submit prompts through the pipeline, then read its counters.

python examples/quickstart.py
"""

from __future__ import annotations

import trio

from trio_orchestrator import EchoWorker, PromptRequest, open_pipeline


async def main() -> None:
    async with open_pipeline(EchoWorker()) as pipeline:
        async with trio.open_nursery() as nursery:
            for i in range(3):
                request = PromptRequest(input=f"Hello number {i}", timeout=5.0)
                nursery.start_soon(ask, pipeline, request)
        stats = pipeline.statistics()
        print(f"submitted={stats.submitted} completed={stats.completed} shed={stats.shed}")


async def ask(pipeline: object, request: PromptRequest) -> None:
    completion = await pipeline.submit(request)  # type: ignore[attr-defined]
    print(f"{completion.request_id}: {completion.text!r} ({completion.finish_reason})")


if __name__ == "__main__":
    trio.run(main)
