"""A scripted worker and workload shared by the observability tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from trio_orchestrator import (
    Config,
    DeadlineExceeded,
    Document,
    Done,
    GenerationParams,
    Pipeline,
    PipelineConfig,
    PromptRequest,
    RequestShed,
    ServerError,
    TextDelta,
    Usage,
)
from trio_orchestrator.observability import render_metrics
from trio_orchestrator.workers.base import EventSink

PROMPT_SECRET = "my-private-prompt-text"


@attrs.define(eq=False)
class ScriptedWorker:
    """Answers ``hello …`` prompts, raises ServerError for ``fail``, never ends ``hang``."""

    name: str = "scripted"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Follow the script in ``request.input``."""
        await trio.lowlevel.checkpoint()
        prompt = request.input or ""
        if prompt == "fail":
            raise ServerError("upstream said 500", provider=self.name, status=500)
        if prompt == "hang":
            await trio.sleep_forever()
        usage = Usage(input_tokens=len(prompt.split()), output_tokens=3)
        await emit(TextDelta("ok "))
        await emit(TextDelta("fine "))
        await emit(TextDelta("thanks"))
        await emit(usage)
        await emit(Done("stop", "ok fine thanks", usage, (), "scripted-1"))


@attrs.define(eq=False)
class GateRetriever:
    """Holds requests whose input is ``block`` until ``gate`` is set (to fill the entry)."""

    gate: trio.Event = attrs.field(factory=trio.Event)

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        """Wait at the gate for ``block`` requests; retrieve nothing."""
        if request.input == "block":
            await self.gate.wait()
        return ()


def small_config(**observability: Any) -> Config:
    """A config with an entry channel of one request, so a shed is easy to script."""
    base = Config(pipeline=PipelineConfig(rag_capacity=1))
    if observability:
        return attrs.evolve(base, observability=attrs.evolve(base.observability, **observability))
    return base


def request(text: str, model: str = "gpt-test", **kwargs: object) -> PromptRequest:
    """A request with ``text`` as its prompt, for ``model``, tagged with identifiers."""
    return PromptRequest(
        input=text,
        params=GenerationParams(model=model),
        session="session-123",
        meta={"user": "user-456", "authorization": "Bearer sk-live-SECRET"},
        **kwargs,  # type: ignore[arg-type]
    )


async def scripted_workload(pipeline: Pipeline, gate: GateRetriever) -> None:
    """7 completed, 2 failed, 1 shed (admission), 1 expired, 1 cancelled."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipeline.submit, request("block"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(pipeline.submit, request("hello there"))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RequestShed):
            await pipeline.try_submit(request("hello shed"))
        gate.gate.set()
    for i in range(5):
        await pipeline.submit(request(f"hello {PROMPT_SECRET} {i}"))
    for _ in range(2):
        with pytest.raises(ServerError):
            await pipeline.submit(request("fail"))
    with pytest.raises(DeadlineExceeded):
        await pipeline.submit(request("hang", timeout=5.0))
    with trio.move_on_after(1.0):
        await pipeline.submit(request("hang"))


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the registry's exposition, parsed back: (name, labels) → value."""
    text = render_metrics(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in parsed.items() if n == name and wanted <= ls)
