"""The router end to end: choices, fallback chains, streams, budgets, explanations."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator import (
    BadRequest,
    CircuitOpen,
    Config,
    ConfigError,
    ContextLengthExceeded,
    DeadlineExceeded,
    Done,
    EchoWorker,
    GenerationParams,
    Message,
    ModelNotFound,
    PromptRequest,
    RateLimited,
    ServerError,
    StreamEvent,
    TextDelta,
    Tool,
    ToolCallStart,
    Usage,
    WorkerCrashed,
    WorkerError,
    collect,
    open_pipeline,
)
from trio_orchestrator.routing import (
    AliasConfig,
    AutoConfig,
    BanditConfig,
    BudgetConfig,
    BudgetExceeded,
    ModelDeployment,
    OutcomeTracker,
    RouterWorker,
    RoutingConfig,
    build_router,
    estimate_prompt_tokens,
    open_router,
    precheck,
)
from trio_orchestrator.workers import EventSink, ModelWorker


@attrs.define(eq=False)
class Scripted:
    """A worker that records the models it was asked for, waits, then fails or echoes."""

    error: WorkerError | None = None
    delay: float = 0.0
    partial: str = ""
    echo: EchoWorker = attrs.field(factory=EchoWorker)
    models: list[str] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.models.append(request.params.model)
        await trio.sleep(self.delay)
        if self.partial:
            await emit(TextDelta(self.partial))
        if self.error is not None:
            raise self.error
        await self.echo.generate(request, emit)


def deployment(name: str, price: float = 1.0, **kwargs: object) -> ModelDeployment:
    """A deployment of public model ``m`` at provider ``name``, priced per million tokens."""
    fields: dict[str, object] = {
        "model": "m",
        "provider": name,
        "upstream_model": f"{name}-upstream",
        "input_price": price,
        "output_price": price,
        "capabilities": ("streaming", "tools"),
    }
    fields.update(kwargs)
    return ModelDeployment(name=name, **fields)  # type: ignore[arg-type]


def router(
    *pairs: tuple[ModelDeployment, ModelWorker], config: RoutingConfig | None = None, **kw: object
) -> RouterWorker:
    return RouterWorker({d.name: (d, w) for d, w in pairs}, config, **kw)  # type: ignore[arg-type]


def request(text: str = "hello there", model: str = "m", **kwargs: object) -> PromptRequest:
    params = GenerationParams(model=model, max_tokens=kwargs.pop("max_tokens", 16))  # type: ignore[arg-type]
    return PromptRequest(input=text, params=params, **kwargs)  # type: ignore[arg-type]


def three() -> tuple[Scripted, Scripted, Scripted, RouterWorker]:
    """One failing (cheapest), one rate limiting, one slow (dearest) deployment."""
    failing = Scripted(error=ServerError("boom", provider="a"))
    limiting = Scripted(error=RateLimited("slow down", provider="b", retry_after=30))
    slow = Scripted(delay=5.0)
    return (
        failing,
        limiting,
        slow,
        router(
            (deployment("failing", 1.0), failing),
            (deployment("limiting", 2.0), limiting),
            (deployment("slow", 3.0), slow),
        ),
    )


async def test_cost_strategy_chooses_the_cheapest_and_chains_the_rest_by_cost() -> None:
    """With the cost strategy, the cheapest deployment goes first, the others follow by cost."""
    *_, worker = three()
    decision = worker.decide(request())
    assert [d.name for d in decision.chain] == ["failing", "limiting", "slow"]


async def test_fallback_chain_through_the_pipeline_reaches_the_working_deployment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A failure and a rate limit fall through to the slow deployment, which answers."""
    failing, limiting, slow, worker = three()
    async with open_pipeline(worker) as pipeline:
        completion = await pipeline.submit(request("hi there"))
    assert completion.text == "hi there"
    assert (failing.models, limiting.models, slow.models) == (
        ["failing-upstream"],
        ["limiting-upstream"],
        ["slow-upstream"],
    )
    assert worker.statistics().fallbacks == 2
    assert worker.statistics().chosen == {"slow": 1}


async def test_a_rate_limited_deployment_rests_for_its_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a 429 with Retry-After 30 s it is skipped, and is chosen again after 30 s."""
    _, _, _, worker = three()
    await collect(worker, request())
    decision = worker.decide(request())
    assert "limiting" not in [d.name for d in decision.chain]
    assert ("limiting", "unavailable") in decision.skipped
    await trio.sleep(30)
    assert "limiting" in [d.name for d in worker.decide(request()).chain]


async def test_circuit_open_falls_back_and_rests_the_deployment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """CircuitOpen moves on to the next deployment and rests the open one for retry_after."""
    broken = Scripted(error=CircuitOpen("breaker open", retry_after=10))
    good = Scripted()
    worker = router((deployment("a", 1.0), broken), (deployment("b", 2.0), good))
    assert (await collect(worker, request("x"))).text == "x"
    assert worker.decide(request()).chosen.name == "b"


async def test_stream_fallback_before_the_first_event_is_invisible(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A streaming caller sees only the answering deployment's events, none of the failures."""
    _, _, _, worker = three()
    events: list[StreamEvent] = []
    async with open_pipeline(worker) as pipeline, pipeline.stream(request("a b c")) as stream:
        events = [event async for event in stream]
    assert [e for e in events if isinstance(e, TextDelta)] == [
        TextDelta("a "),
        TextDelta("b "),
        TextDelta("c"),
    ]
    assert isinstance(events[-1], Done)
    assert events[-1].text == "a b c"


async def test_a_failure_after_the_first_event_fails_the_stream_by_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With stream_fallback "fail", a mid-stream failure reaches the caller after the partial."""
    broken = Scripted(error=ServerError("lost", provider="a"), partial="part ")
    spare = Scripted()
    worker = router((deployment("a", 1.0), broken), (deployment("b", 2.0), spare))
    seen: list[StreamEvent] = []

    async def read() -> None:
        async with pipeline.stream(request("x")) as stream:
            async for event in stream:
                seen.append(event)

    async with open_pipeline(worker) as pipeline:
        with pytest.raises(ServerError):
            await read()
    assert seen == [TextDelta("part ")]
    assert spare.models == []


async def test_restart_needs_the_callers_opt_in() -> None:
    """With stream_fallback "restart" but no opt-in, a mid-stream failure still fails."""
    broken = Scripted(error=ServerError("lost", provider="a"), partial="part ")
    worker = router(
        (deployment("a", 1.0), broken),
        (deployment("b", 2.0), Scripted()),
        config=RoutingConfig(stream_fallback="restart"),
    )
    with pytest.raises(ServerError):
        await collect(worker, request("x"))


async def test_an_opted_in_restart_sends_a_marker_then_a_valid_whole_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An opted-in restart emits the marker, then the next answer; the grammar holds."""
    broken = Scripted(error=ServerError("lost", provider="a"), partial="part ")
    config = RoutingConfig(stream_fallback="restart", restart_marker="<restart>")
    worker = router(
        (deployment("a", 1.0), broken), (deployment("b", 2.0), Scripted()), config=config
    )
    req = request("x y", meta={"allow_stream_restart": "1"})
    completion = await collect(worker, req)  # collect checks the event grammar
    assert completion.text == "part <restart>x y"
    assert completion.text.rpartition("<restart>")[2] == "x y"
    async with open_pipeline(worker) as pipeline:
        assert (await pipeline.submit(req)).text == "part <restart>x y"
    assert worker.statistics().restarts == 2


async def test_a_request_error_is_not_retried_elsewhere() -> None:
    """A plain BadRequest is the request's fault: no other deployment is tried."""
    spare = Scripted()
    worker = router(
        (deployment("a", 1.0), Scripted(error=BadRequest("bad", provider="a"))),
        (deployment("b", 2.0), spare),
    )
    with pytest.raises(BadRequest):
        await collect(worker, request())
    assert spare.models == []


async def test_context_length_exceeded_upstream_falls_back() -> None:
    """A provider's ContextLengthExceeded (the estimate was short) moves to the next one."""
    worker = router(
        (deployment("a", 1.0), Scripted(error=ContextLengthExceeded("long", provider="a"))),
        (deployment("b", 2.0), Scripted()),
    )
    assert (await collect(worker, request("ok"))).text == "ok"


async def test_every_deployment_failing_raises_the_last_error_with_the_attempts() -> None:
    """When the whole chain fails, the last typed error is raised, noting each attempt."""
    worker = router(
        (deployment("a", 1.0), Scripted(error=ServerError("one", provider="a"))),
        (deployment("b", 2.0), Scripted(error=ServerError("two", provider="b"))),
    )
    with pytest.raises(ServerError, match="two") as caught:
        await collect(worker, request())
    assert any("a: ServerError: one" in note for note in caught.value.__notes__)
    assert worker.statistics().exhausted == 1


async def test_fallbacks_stay_within_the_request_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A fallback does not outlive the deadline: the request expires at it, not later."""
    late_failure = Scripted(error=ServerError("late", provider="a"), delay=8.0)
    spare = Scripted(delay=5.0)
    worker = router((deployment("a", 1.0), late_failure), (deployment("b", 2.0), spare))
    async with open_pipeline(worker) as pipeline:
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded):
            await pipeline.submit(request(timeout=10.0))
        assert trio.current_time() - start == pytest.approx(10.0)
    assert spare.models == ["b-upstream"]


async def test_the_pre_call_check_skips_a_window_too_small() -> None:
    """A deployment whose context window cannot hold prompt + max_tokens is never called."""
    small = Scripted()
    worker = router(
        (deployment("small", 1.0, context_window=64), small),
        (deployment("large", 2.0, context_window=100_000), Scripted()),
    )
    decision = worker.decide(request("word " * 200, max_tokens=16))
    assert decision.chosen.name == "large"
    assert decision.skipped[0][0] == "small"
    assert "context window 64" in decision.skipped[0][1]


async def test_no_window_large_enough_is_a_context_length_error_before_any_call() -> None:
    """When no deployment can hold the request, ContextLengthExceeded is raised uncalled."""
    small = Scripted()
    worker = router((deployment("small", 1.0, context_window=64), small))
    with pytest.raises(ContextLengthExceeded, match="shorten"):
        await collect(worker, request("word " * 200))
    assert small.models == []


async def test_tools_need_a_deployment_with_the_tools_capability() -> None:
    """A request offering tools skips deployments without ``tools``; none left is BadRequest."""
    plain = deployment("plain", 0.5, capabilities=("streaming",))
    worker = router((plain, Scripted()), (deployment("tooled", 2.0), Scripted()))
    params = GenerationParams(model="m", tools=(Tool("f"),))
    assert worker.decide(PromptRequest(input="x", params=params)).chosen.name == "tooled"
    alone = router((plain, Scripted()))
    with pytest.raises(BadRequest, match="lacks tools"):
        alone.decide(PromptRequest(input="x", params=params))


async def test_an_unknown_name_is_model_not_found_listing_the_known_names() -> None:
    """Asking for a name nothing answers to raises ModelNotFound naming what exists."""
    _, _, _, worker = three()
    with pytest.raises(ModelNotFound, match=r"'nope'; ask for one of: .*\bm\b"):
        worker.decide(request(model="nope"))


@attrs.define
class Down:
    """A health check declaring some deployments unavailable."""

    names: set[str]

    def is_available(self, deployment: ModelDeployment) -> bool:
        return deployment.name not in self.names


async def test_an_unavailable_deployment_is_skipped_while_another_is_available() -> None:
    """A health check's "unavailable" (open breaker, resting keys) moves the choice on."""
    _, _, _, worker = three()
    health = Down({"failing"})
    worker = router(*[(d, Scripted()) for d in worker.registry.deployments], health=[health])
    decision = worker.decide(request())
    assert decision.chosen.name == "limiting"
    assert "failing" not in [d.name for d in decision.chain]


async def test_with_nothing_available_every_candidate_is_tried_anyway() -> None:
    """When every deployment is unavailable, the chain still holds them (a last resort)."""
    pairs = [(deployment(n, p), Scripted()) for n, p in (("a", 1.0), ("b", 2.0))]
    worker = router(*pairs, health=[Down({"a", "b"})])
    decision = worker.decide(request())
    assert [d.name for d in decision.chain] == ["a", "b"]
    assert "no candidate is available" in decision.reason


async def test_latency_strategy_learns_the_faster_deployment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After measuring both, the latency strategy prefers the faster (pricier) one."""
    config = RoutingConfig(strategy="latency")
    worker = router(
        (deployment("slow", 1.0), Scripted(delay=4.0)),
        (deployment("fast", 9.0), Scripted(delay=1.0)),
        config=config,
    )
    for _ in range(2):
        await collect(worker, request())
    decision = worker.decide(request())
    assert decision.chosen.name == "fast"
    assert decision.predicted_latency == pytest.approx(1.0)


async def test_stream_requests_are_routed_by_time_to_first_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """For streams (meta stream=1) the latency strategy ranks by time to first event."""
    config = RoutingConfig(strategy="latency")
    quick_start = Scripted(delay=1.0, echo=EchoWorker(token_delay=3.0))
    slow_start = Scripted(delay=2.0)
    worker = router(
        (deployment("quick-start", 1.0), quick_start),
        (deployment("slow-start", 1.0), slow_start),
        config=config,
    )
    for _ in range(2):
        await collect(worker, request("a b c"))
    assert worker.decide(request("a b c")).chosen.name == "slow-start"
    assert worker.decide(request("a b c", meta={"stream": "1"})).chosen.name == "quick-start"


async def test_a_whole_answer_gives_no_time_to_first_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller that takes its answer whole is answered unstreamed by the provider (its
    first event comes with its last): such calls feed the latency, not the time to the
    first token that streams are ranked by."""
    worker = router(
        (deployment("only", 1.0), Scripted(delay=1.0, echo=EchoWorker(token_delay=3.0)))
    )
    await collect(worker, request("a b c").streamed(False))
    assert worker.tracker.latency("only") is not None
    assert worker.tracker.ttft("only") is None
    await collect(worker, request("a b c"))
    assert worker.tracker.ttft("only") is not None


async def test_reliability_strategy_avoids_the_deployment_that_errs() -> None:
    """The reliability strategy moves away from a deployment with recent errors."""
    config = RoutingConfig(strategy="reliability")
    worker = router(
        (deployment("flaky", 1.0), Scripted(error=ServerError("x", provider="f"))),
        (deployment("steady", 2.0), Scripted()),
        config=config,
    )
    assert worker.decide(request()).chosen.name == "flaky"
    await collect(worker, request())
    assert worker.decide(request()).chosen.name == "steady"


async def test_least_loaded_prefers_fewer_calls_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While one deployment is busy, least-loaded picks the idle one."""
    config = RoutingConfig(strategy="least-loaded")
    worker = router(
        (deployment("a", 1.0), Scripted(delay=10.0)),
        (deployment("b", 2.0), Scripted(delay=10.0)),
        config=config,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, worker, request())
        await trio.sleep(1)
        assert worker.decide(request()).chosen.name == "b"
        nursery.cancel_scope.cancel()
    assert worker.tracker.in_flight("a") == 0


async def test_weighted_strategy_follows_the_weights() -> None:
    """With weights 3:1, the heavier deployment is chosen about three times in four."""
    config = RoutingConfig(strategy="weighted")
    worker = router(
        (deployment("heavy", 1.0, weight=3.0), Scripted()),
        (deployment("light", 1.0, weight=1.0), Scripted()),
        config=config,
        rng=random.Random(7),
    )
    heavy = sum(worker.decide(request()).chosen.name == "heavy" for _ in range(2000))
    assert 0.70 < heavy / 2000 < 0.80


def auto_router() -> RouterWorker:
    return router(
        (deployment("local", 0.0, groups=("cheap",)), Scripted()),
        (deployment("cloud", 10.0, groups=("strong",)), Scripted()),
        config=RoutingConfig(auto=AutoConfig(threshold=0.4)),
    )


async def test_auto_sends_a_simple_request_to_the_cheap_pool() -> None:
    """``auto`` with a short chat message scores low and picks the cheap/local model."""
    decision = auto_router().decide(request("hi", model="auto"))
    assert decision.chosen.name == "local"
    assert decision.complexity is not None
    assert decision.complexity < 0.4
    assert [d.name for d in decision.fallbacks] == ["cloud"]


async def test_auto_sends_a_demanding_request_to_the_strong_pool() -> None:
    """``auto`` with code and reasoning words scores high and picks the strong/cloud model."""
    text = "Explain why this fails and how to optimize it, step by step:\n```\ndef f(): ...\n```"
    decision = auto_router().decide(request(text, model="auto"))
    assert decision.chosen.name == "cloud"
    assert "→ strong" in decision.reason


async def test_aliases_groups_and_built_ins_resolve() -> None:
    """A configured alias, a group name and the built-in ``cheap`` each route."""
    config = RoutingConfig(
        aliases={"best": AliasConfig(("premium",), strategy="reliability")}, strategy="latency"
    )
    worker = router(
        (deployment("a", 1.0, model="small", groups=("premium",)), Scripted()),
        (deployment("b", 5.0, model="big", groups=("premium",)), Scripted()),
        config=config,
    )
    assert worker.decide(request(model="best")).strategy == "reliability"
    assert {d.name for d in worker.decide(request(model="premium")).chain} == {"a", "b"}
    assert worker.decide(request(model="cheap")).chosen.name == "a"
    assert worker.decide(request(model="big")).chosen.name == "b"


async def test_a_decision_explains_itself() -> None:
    """The decision names the choice, the chain, its predicted cost and a reason."""
    _, _, _, worker = three()
    req = request("hello there", max_tokens=100)
    decision = worker.decide(req)
    chosen = decision.chosen
    expected = chosen.cost(decision.prompt_tokens, 100)
    assert decision.predicted_cost == pytest.approx(expected)
    assert decision.predicted_cost > 0
    assert decision.reason.startswith("failing: cheapest predicted cost")
    assert decision.predicted_latency is None
    assert worker.recent_decisions()[-1] is decision


def budget_router(config: BudgetConfig, *scripted: Scripted) -> RouterWorker:
    pairs = [
        (deployment("a", 1000.0), scripted[0]),
        (deployment("b", 2000.0, model="n"), scripted[1] if len(scripted) > 1 else Scripted()),
    ]
    return router(*pairs, config=RoutingConfig(budgets=config))


async def test_an_api_key_over_its_budget_is_refused_before_any_call() -> None:
    """Once a key has spent its budget, its next request raises BudgetExceeded uncalled."""
    first = Scripted(echo=EchoWorker())
    worker = budget_router(BudgetConfig(per_api_key={"k1": 0.05}), first)
    req = request("one two three", model="m", meta={"api_key_id": "k1"})
    await collect(worker, req)  # 3 in + 3 out tokens at $1000/M = $0.006
    spent = worker.ledger.statistics().per_api_key["k1"]
    assert spent == pytest.approx(0.006)
    worker.ledger.charge("k1", "m", 0.05)
    with pytest.raises(BudgetExceeded, match="api_key 'k1'") as caught:
        await collect(worker, req)
    assert caught.value.scope == "api_key"
    assert len(first.models) == 1
    other = request("one", meta={"api_key_id": "k2"})
    assert (await collect(worker, other)).text == "one"


async def test_a_model_over_its_budget_is_skipped_for_another_model() -> None:
    """A per-model budget sets that model's deployments aside when another fits."""
    worker = budget_router(BudgetConfig(per_model={"m": 0.0}), Scripted(), Scripted())
    config = RoutingConfig(aliases={"any": AliasConfig(("m", "n"))}, budgets=worker.ledger.config)
    worker = router(*[(d, Scripted()) for d in worker.registry.deployments], config=config)
    decision = worker.decide(request(model="any"))
    assert decision.chosen.name == "b"
    assert ("a", "would exceed m's budget") in decision.skipped


async def test_budgets_restart_each_period(autojump_clock: trio.testing.MockClock) -> None:
    """After the budget period, spending counts restart and the key may spend again."""
    worker = budget_router(BudgetConfig(per_api_key={"k": 0.03}, period=60.0), Scripted())
    req = request("one two three", meta={"api_key_id": "k"})
    await collect(worker, req)
    with pytest.raises(BudgetExceeded) as caught:
        await collect(worker, req)
    assert caught.value.retry_after == pytest.approx(60.0)
    await trio.sleep(60)
    assert (await collect(worker, req)).text == "one two three"


async def test_the_bandit_strategy_learns_to_avoid_a_failing_deployment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Through the pipeline, the bandit comes to choose the deployment that succeeds."""
    config = RoutingConfig(strategy="bandit", bandit=BanditConfig(seed=3), max_attempts=1)
    bad = Scripted(error=ServerError("x", provider="bad"))
    worker = router(
        (deployment("bad", 1.0), bad), (deployment("good", 1.0), Scripted()), config=config
    )
    async with open_pipeline(worker) as pipeline:
        for _ in range(60):
            try:
                await pipeline.submit(request())
            except ServerError:
                pass
    assert len(bad.models) < 15
    assert worker.statistics().chosen["good"] > 45


async def test_build_router_serves_deployments_from_config_through_their_providers() -> None:
    """build_router maps each deployment to its provider's worker, with upstream names."""
    openai, local = Scripted(), Scripted()
    config = Config(
        routing=RoutingConfig(
            deployments=(
                ModelDeployment("gpt@openai", "gpt", "openai", "gpt-4o", input_price=5.0),
                ModelDeployment("gpt@local", "gpt", "local", "llama3", input_price=0.1),
            )
        )
    )
    worker = build_router(config.routing, {"openai": openai, "local": local})
    assert (await collect(worker, request("hi", model="gpt"))).text == "hi"
    assert local.models == ["llama3"]
    with pytest.raises(ConfigError, match=r"routing.deployments\[1\].provider"):
        build_router(config.routing, {"openai": openai})


async def test_build_router_loads_saved_profiles(tmp_path: Path) -> None:
    """Profiles saved by one router are loaded by the next one built from the same config."""
    path = f"{tmp_path}/profiles.json"
    routing = RoutingConfig(
        deployments=(ModelDeployment("d", "m", "p"),), profile_path=path, strategy="latency"
    )
    first = build_router(routing, {"p": Scripted()})
    await collect(first, request())
    assert await first.save_profiles()
    second = build_router(routing, {"p": Scripted()})
    assert second.tracker.statistics().deployments[0].successes == 1


deployments_strategy = st.lists(
    st.builds(
        lambda i, window, tools, price: deployment(
            f"d{i}",
            price,
            context_window=window,
            capabilities=("tools",) if tools else (),
        ),
        st.integers(0, 1_000_000),
        st.integers(16, 400),
        st.booleans(),
        st.floats(0, 50),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda d: d.name,
)


@given(
    deployments=deployments_strategy,
    words=st.integers(0, 60),
    tools=st.booleans(),
    down=st.sets(st.integers(0, 7)),
    strategy=st.sampled_from(["cost", "latency", "reliability", "weighted", "least-loaded"]),
)
def test_the_router_never_picks_an_unfit_or_unavailable_deployment_needlessly(
    deployments: Sequence[ModelDeployment],
    words: int,
    tools: bool,
    down: set[int],
    strategy: str,
) -> None:
    """The choice passes the pre-call check, and is available whenever any fitting one is."""
    unavailable = {deployments[i].name for i in down if i < len(deployments)}
    worker = router(
        *[(d, Scripted()) for d in deployments],
        config=RoutingConfig(strategy=strategy),
        health=[Down(unavailable)],
        rng=random.Random(0),
    )
    params = GenerationParams(model="m", max_tokens=8, tools=(Tool("f"),) if tools else ())
    req = PromptRequest(messages=[Message("user", "word " * words)], params=params)
    tokens, needed = estimate_prompt_tokens(req), frozenset({"tools"} if tools else ())
    try:
        decision = worker.decide(req)
    except (ContextLengthExceeded, BadRequest):
        assert all(precheck(d, tokens, 8, needed) is not None for d in deployments)
        return
    assert precheck(decision.chosen, tokens, 8, needed) is None
    fitting = [d for d in deployments if precheck(d, tokens, 8, needed) is None]
    if any(d.name not in unavailable for d in fitting):
        assert decision.chosen.name not in unavailable
    for fallback in decision.fallbacks:
        assert precheck(fallback, tokens, 8, needed) is None


async def test_usage_and_done_carry_the_deployments_model() -> None:
    """Done.model names the upstream model when the worker leaves it out."""

    @attrs.define
    class Bare:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await emit(Usage(1, 1))
            await emit(Done("stop", "", Usage(1, 1), (), None))

    worker = router((deployment("a", 1.0), Bare()))
    completion = await collect(worker, request())
    assert completion.model == "a-upstream"


async def test_open_router_saves_profiles_periodically_and_on_exit(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Under open_router the profiles file appears after the interval and is final on exit."""
    path = tmp_path / "profiles.json"
    routing = RoutingConfig(
        deployments=(ModelDeployment("d", "m", "p"),),
        profile_path=str(path),
        profile_save_interval=60.0,
    )
    async with open_router(routing, {"p": Scripted()}) as worker:
        await collect(worker, request())
        assert not path.exists()
        await trio.sleep(61)
        # The save runs in a worker thread, which the mock clock cannot see (autojump skips
        # virtual waits at once): wait for the file in real time, boundedly, before reading.
        for _ in range(1000):
            if path.exists():
                break
            await trio.to_thread.run_sync(time.sleep, 0.01)
        assert OutcomeTracker().import_profiles(path) == 1
        await collect(worker, request())
    saved = OutcomeTracker()
    saved.import_profiles(path)
    assert saved.statistics().deployments[0].successes == 2


@attrs.define
class ToolThenFail:
    """Starts tool call 0, then loses the connection."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        await emit(ToolCallStart(0, "call_a", "f"))
        await emit(Usage(5, 1))
        raise ServerError("lost", provider="a")


async def test_a_restart_shifts_tool_call_indexes_and_adds_up_usage() -> None:
    """After a restart, the new tool calls do not collide with those sent, and usage sums."""
    config = RoutingConfig(stream_fallback="restart")
    worker = router(
        (deployment("a", 1.0), ToolThenFail()), (deployment("b", 2.0), Scripted()), config=config
    )
    params = GenerationParams(model="m", tools=(Tool("f"),), tool_choice="required")
    req = PromptRequest(input="go", params=params, meta={"allow_stream_restart": "1"})
    events: list[StreamEvent] = []

    async def keep(event: StreamEvent) -> None:
        events.append(event)

    await worker.generate(req, keep)
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [s.index for s in starts] == [0, 1]
    final = events[-1]
    assert isinstance(final, Done)
    assert final.usage == Usage(5 + 1, 1 + 1)


async def test_a_deployment_that_returns_without_done_is_a_crash() -> None:
    """A worker that returns without Done fails the request as WorkerCrashed, naming it."""

    @attrs.define
    class Quiet:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await trio.lowlevel.checkpoint()

    worker = router((deployment("a", 1.0), Quiet()), (deployment("b", 2.0), Scripted()))
    with pytest.raises(WorkerCrashed, match="'a' returned without emitting Done"):
        await collect(worker, request())


FAULTS = st.sampled_from(
    [
        None,
        ServerError("5xx", provider="x"),
        RateLimited("429", provider="x", retry_after=0.0),
        CircuitOpen("open", retry_after=0.0),
        ContextLengthExceeded("long", provider="x"),
        BadRequest("bad", provider="x"),
    ]
)


@given(
    faults=st.lists(st.tuples(FAULTS, st.booleans()), min_size=1, max_size=4),
    requests=st.integers(1, 6),
)
async def test_every_routed_request_ends_exactly_once_under_faults(
    faults: list[tuple[WorkerError | None, bool]], requests: int
) -> None:
    """Whatever the deployments do, each request completes or fails typed, counted once."""
    config = RoutingConfig(stream_fallback="restart", max_attempts=4)
    pairs = [
        (deployment(f"d{i}", float(i)), Scripted(error=error, partial="p " if partial else ""))
        for i, (error, partial) in enumerate(faults)
    ]
    worker = router(*pairs, config=config)
    outcomes: list[str] = []
    async with open_pipeline(worker) as pipeline:
        for i in range(requests):
            meta = {"allow_stream_restart": "1"} if i % 2 else {}
            try:
                await pipeline.submit(request("q", meta=meta))
                outcomes.append("completed")
            except WorkerError:
                outcomes.append("failed")
        stats = pipeline.statistics()
    assert stats.submitted == requests
    assert stats.completed == outcomes.count("completed")
    assert stats.failed == outcomes.count("failed")
    assert worker.tracker.statistics().deployments  # every request reached a deployment
    assert all(d.in_flight == 0 for d in worker.tracker.statistics().deployments)


async def test_an_alias_with_no_deployment_behind_it_is_refused_at_construction() -> None:
    """A router whose alias targets match no deployment is a configuration error."""
    config = RoutingConfig(aliases={"best": AliasConfig(("nothing",))})
    with pytest.raises(ValueError, match=r"aliases\.best\.targets: \['nothing'\]"):
        router((deployment("a", 1.0), Scripted()), config=config)


async def test_a_deployment_that_hangs_past_the_deadline_counts_as_slow_and_failing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call cut by the request deadline is a failure, and its time enters the latency."""
    config = RoutingConfig(strategy="latency")
    hanging = Scripted(delay=1000.0)
    worker = router(
        (deployment("hanging", 1.0), hanging),
        (deployment("other", 2.0), Scripted(delay=1.0)),
        config=config,
    )
    async with open_pipeline(worker) as pipeline:
        with pytest.raises(DeadlineExceeded):
            await pipeline.submit(request(timeout=10.0))
        stats = {d.name: d for d in worker.tracker.statistics().deployments}
        assert stats["hanging"].errors == {"DeadlineExceeded": 1}
        assert stats["hanging"].latency == pytest.approx(10.0)
        assert worker.decide(request()).chosen.name == "other"


async def test_a_caller_leaving_is_no_evidence_against_the_deployment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelled before its deadline, a call is neither a failure nor a success."""
    worker = router((deployment("a", 1.0), Scripted(delay=100.0)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, worker, request())
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    (stats,) = worker.tracker.statistics().deployments
    assert (stats.failures, stats.successes, stats.in_flight) == (0, 0, 0)
