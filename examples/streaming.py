"""Streaming: print tokens as the worker produces them; leaving early cancels the request.

python examples/streaming.py
"""

from __future__ import annotations

import trio

from trio_orchestrator import Done, EchoWorker, PromptRequest, TextDelta, open_pipeline


async def main() -> None:
    worker = EchoWorker(token_delay=0.05)
    async with open_pipeline(worker) as pipeline:
        request = PromptRequest(input="Tokens arrive one by one, as they are generated.")
        async with pipeline.stream(request) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    print(event.text, end="", flush=True)
                elif isinstance(event, Done):
                    print(f"\n[done: {event.finish_reason}, {event.usage}]")


if __name__ == "__main__":
    trio.run(main)
