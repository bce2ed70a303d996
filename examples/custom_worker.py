"""A custom worker: a stand-in for your own model server, checked by the worker contract.

Run it: ``python examples/custom_worker.py "hello there"``. Its contract test is
``examples/test_custom_worker.py`` (``pytest examples/test_custom_worker.py``).
"""

from __future__ import annotations

import sys

import attrs
import trio

from trio_orchestrator import PromptRequest, open_pipeline
from trio_orchestrator.errors import BadRequest
from trio_orchestrator.events import Done, TextDelta, Usage
from trio_orchestrator.workers import EventSink
from trio_orchestrator.workers.echo import split_tokens


@attrs.define(eq=False)
class ShoutWorker:
    """Answers with the last user message in capitals, one word every ``token_delay`` s.

    Tools are not supported: a request that requires one is refused with ``BadRequest``, a
    typed error the pipeline (and a retry layer) knows not to retry.
    """

    token_delay: float = 0.05

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Stream the answer; see the class docstring."""
        if request.params.tools and request.params.tool_choice not in (None, "auto", "none"):
            # A call cancelled before it started ends as cancelled, not refused (the worker
            # contract checks it): look for a cancellation before raising.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise BadRequest("ShoutWorker cannot call tools", provider="shout")
        prompt = next((m.content for m in reversed(request.chat()) if m.role == "user"), "")
        words = split_tokens(prompt.upper())
        limit = request.params.max_tokens or len(words)
        for word in words[:limit]:
            await trio.sleep(self.token_delay)  # where a real worker awaits its model
            await emit(TextDelta(word))
        usage = Usage(len(split_tokens(prompt)), min(limit, len(words)))
        await emit(usage)
        reason = "length" if limit < len(words) else "stop"
        await emit(Done(reason, "".join(words[:limit]), usage, model="shout"))


async def main(prompt: str) -> None:
    """Stream ``prompt``'s answer through a pipeline around the worker."""
    async with (
        open_pipeline(ShoutWorker()) as pipeline,
        pipeline.stream(PromptRequest(input=prompt)) as events,
    ):
        async for event in events:
            if isinstance(event, TextDelta):
                print(event.text, end="", flush=True)
    print()


if __name__ == "__main__":
    trio.run(main, " ".join(sys.argv[1:]) or "hello from a custom worker")
