"""The load-balanced worker's strategies."""

from __future__ import annotations

import attrs
import pytest
import trio

from trio_orchestrator.errors import ModelNotFound, ServerError
from trio_orchestrator.events import StreamEvent
from trio_orchestrator.sharding import shard_session
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import EchoWorker, LoadBalancedWorker, collect
from trio_orchestrator.workers.balance import Strategy
from trio_orchestrator.workers.base import EventSink


def echoes(n: int) -> list[EchoWorker]:
    return [EchoWorker(model=f"w{i}") for i in range(n)]


async def models_for(
    balancer: LoadBalancedWorker, requests: list[PromptRequest]
) -> list[str | None]:
    return [(await collect(balancer, r)).model for r in requests]


REQ = PromptRequest(input="x")


async def test_round_robin() -> None:
    """Round-robin sends each request to the next worker."""
    balancer = LoadBalancedWorker(echoes(3))
    assert await models_for(balancer, [REQ] * 4) == ["w0", "w1", "w2", "w0"]


async def test_weighted_shares_and_interleaves() -> None:
    """Weights 3:1 give three of every four requests to the first, never four in a row."""
    balancer = LoadBalancedWorker(echoes(2), "weighted", [3, 1])
    models = await models_for(balancer, [REQ] * 8)
    assert models.count("w0") == 6
    assert "w0w0w0w0" not in "".join(m or "" for m in models)


async def test_session_affinity() -> None:
    """Requests of one session always reach the worker shard_session names."""
    balancer = LoadBalancedWorker(echoes(4), "session")
    requests = [PromptRequest(input="x", session="alice") for _ in range(5)]
    expected = f"w{shard_session('alice', 4)}"
    assert set(await models_for(balancer, requests)) == {expected}


@attrs.define
class Gate:
    """A worker that waits until released, so requests stay in flight."""

    name: str
    release: trio.Event = attrs.field(factory=trio.Event)
    started: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.started += 1
        await self.release.wait()
        await EchoWorker(model=self.name).generate(request, emit)


async def test_least_loaded_picks_fewest_in_flight() -> None:
    """With one worker busy, least_loaded sends the next requests to the idle ones."""
    gates = [Gate("a"), Gate("b"), Gate("c")]
    balancer = LoadBalancedWorker(gates, "least_loaded")

    async def emit(event: StreamEvent) -> None:
        pass

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(balancer.generate, REQ, emit)
            await trio.testing.wait_all_tasks_blocked()
        assert sorted(g.started for g in gates) == [1, 2, 2]
        assert [w.in_flight for w in balancer.statistics().workers] == [g.started for g in gates]
        for gate in gates:
            gate.release.set()
    assert [w.in_flight for w in balancer.statistics().workers] == [0, 0, 0]


@attrs.define
class Failing:
    name: str = "bad"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        raise ServerError("down", provider=self.name)


async def test_failures_are_counted_and_raised() -> None:
    """A failing worker's error reaches the caller and counts in statistics."""
    balancer = LoadBalancedWorker([Failing()])
    with pytest.raises(ServerError):
        await collect(balancer, REQ)
    assert balancer.statistics().workers[0].failures == 1


def test_bad_weights_are_refused() -> None:
    """Weights must be positive and one per worker."""
    with pytest.raises(ValueError, match="weights"):
        LoadBalancedWorker(echoes(2), "weighted", [1])
    with pytest.raises(ValueError, match="strategy"):
        LoadBalancedWorker(echoes(2), "random")  # type: ignore[arg-type]


def ask(model: str) -> PromptRequest:
    return PromptRequest(input="x", params=GenerationParams(model=model))


@pytest.mark.parametrize("strategy", ["round_robin", "least_loaded", "weighted", "session"])
async def test_a_request_goes_only_to_workers_serving_its_model(strategy: Strategy) -> None:
    """With models declared, each strategy picks among the workers listing the model (or
    listing none), whatever order the models' requests come in."""
    models = [["a"], ["b"], []]
    balancer = LoadBalancedWorker(echoes(3), strategy, models=models)
    asked = ["a", "a", "a", "b", "b", "b", "c", "a", "b"]
    chosen = await models_for(balancer, [ask(m) for m in asked])
    for model, worker in zip(asked, chosen, strict=True):
        assert worker in {"a": {"w0", "w2"}, "b": {"w1", "w2"}, "c": {"w2"}}[model]


async def test_round_robin_takes_turns_per_model() -> None:
    """Each model's requests go in turn over its own workers, unaffected by other models."""
    balancer = LoadBalancedWorker(echoes(3), models=[["a"], ["a", "b"], ["b"]])
    asked = ["a", "b", "a", "b", "a", "b", "a", "b"]
    chosen = await models_for(balancer, [ask(m) for m in asked])
    assert chosen[0::2] == ["w0", "w1", "w0", "w1"]
    assert chosen[1::2] == ["w1", "w2", "w1", "w2"]


async def test_a_model_no_worker_serves_is_model_not_found_without_a_call() -> None:
    """A model no worker lists (and none lists every model) is ModelNotFound, 404."""
    balancer = LoadBalancedWorker(echoes(2), models=[["a"], ["b"]])
    with pytest.raises(ModelNotFound) as caught:
        await collect(balancer, ask("z"))
    assert caught.value.status == 404
    assert [w.requests for w in balancer.statistics().workers] == [0, 0]


def test_models_must_be_one_list_per_worker() -> None:
    """A models list of the wrong length is refused when the balancer is built."""
    with pytest.raises(ValueError, match="one per worker"):
        LoadBalancedWorker(echoes(2), models=[["a"]])
