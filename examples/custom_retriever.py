"""A custom retriever: the retrieval stage puts your documents into the prompt.

python examples/custom_retriever.py
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from trio_orchestrator import (
    DefaultAssembler,
    Document,
    EventSink,
    PromptRequest,
    open_pipeline,
)
from trio_orchestrator.workers import EchoWorker

FAQ = {
    "refund": "Refunds are issued within 14 days of a return.",
    "shipping": "Orders ship within two working days.",
}


class KeywordRetriever:
    """Returns the FAQ entries whose keyword appears in the question."""

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        question = request.chat()[-1].content.lower()
        return [Document(key, text) for key, text in FAQ.items() if key in question]


class ShowPrompt:
    """A worker that prints the prompt it was given, then echoes the question."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        for message in request.messages:
            print(f"[{message.role}] {message.content}")
        await EchoWorker().generate(request, emit)


async def main() -> None:
    assembler = DefaultAssembler(system_prompt="Answer from the FAQ.")
    async with open_pipeline(ShowPrompt(), retriever=KeywordRetriever(), assembler=assembler) as p:
        completion = await p.submit(PromptRequest(input="How long does a refund take?"))
        print("answer:", completion.text)


if __name__ == "__main__":
    trio.run(main)
