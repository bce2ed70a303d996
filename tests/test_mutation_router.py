"""The router's bookkeeping and edges: what the mutation session found unpinned.

Written for the mutation session (scripts/mutation.py): tests/test_router.py shows the router's
choices and chains end to end; these pin the parts it left loose — which errors fall back,
the counters and notes, budgets at their edge, resting, reloads, profiles, and what a
cancelled or timed-out call is charged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from test_router import Down, Scripted, deployment, request, router

from trio_orchestrator import (
    AuthenticationError,
    BadRequest,
    ConfigError,
    ContentFiltered,
    ContextLengthExceeded,
    DeadlineExceeded,
    Done,
    EchoWorker,
    ModelNotFound,
    PermissionDenied,
    PromptRequest,
    RateLimited,
    ServerError,
    StreamEvent,
    TextDelta,
    Tool,
    ToolCallStart,
    Usage,
    WorkerError,
    collect,
    open_pipeline,
)
from trio_orchestrator.catalogue.facts import Catalogue, ModelFacts
from trio_orchestrator.resilience.adaptive_limiter import ConcurrencyLimited
from trio_orchestrator.routing import (
    BanditConfig,
    BudgetConfig,
    BudgetExceeded,
    ModelDeployment,
    OutcomeTracker,
    RoutingConfig,
    build_router,
)
from trio_orchestrator.routing.router import RouterWorker, falls_back
from trio_orchestrator.types import (
    GenerationParams,
    RequestNotes,
    reset_request_notes,
    set_request_notes,
)
from trio_orchestrator.workers import EventSink

# ------------------------------------------------------------------ which errors fall back


@pytest.mark.parametrize(
    "error",
    [
        ConcurrencyLimited("shed", provider="a"),
        ContextLengthExceeded("long", provider="a"),
        AuthenticationError("key", provider="a"),
        PermissionDenied("no", provider="a"),
        ModelNotFound("gone", provider="a"),
        ServerError("5xx", provider="a"),
    ],
)
async def test_a_deployment_specific_or_retryable_error_falls_back(error: WorkerError) -> None:
    """Errors that blame the deployment (or may pass elsewhere) move on to the next one."""
    assert falls_back(error)
    worker = router(
        (deployment("a", 1.0), Scripted(error=error)), (deployment("b", 2.0), Scripted())
    )
    assert (await collect(worker, request("ok"))).text == "ok"


@pytest.mark.parametrize(
    "error", [BadRequest("bad", provider="a"), ContentFiltered("filtered", provider="a")]
)
async def test_a_request_specific_error_does_not_fall_back(error: WorkerError) -> None:
    """Errors that blame the request are raised at once, the next deployment uncalled."""
    assert not falls_back(error)
    spare = Scripted()
    worker = router((deployment("a", 1.0), Scripted(error=error)), (deployment("b", 2.0), spare))
    with pytest.raises(type(error)):
        await collect(worker, request())
    assert spare.models == []


# ------------------------------------------------------------------ counters, log, notes


async def test_statistics_count_decisions_and_unroutable_requests() -> None:
    """A routed request counts as a decision; an unknown name or a misfit as unroutable."""
    worker = router((deployment("a", 1.0, context_window=64), Scripted()))
    await collect(worker, request())
    worker.decide(request())
    with pytest.raises(ModelNotFound):
        worker.decide(request(model="nope"))
    with pytest.raises(ContextLengthExceeded):
        worker.decide(request("word " * 200))
    stats = worker.statistics()
    assert (stats.decisions, stats.unroutable, stats.fallbacks, stats.exhausted) == (2, 2, 0, 0)
    assert stats.chosen == {"a": 1}
    assert len(worker.recent_decisions()) == 2


async def test_exhausted_counts_every_request_that_failed_everywhere() -> None:
    """Each request whose whole chain failed adds one to ``exhausted``."""
    worker = router((deployment("a", 1.0), Scripted(error=ServerError("x", provider="a"))))
    for _ in range(2):
        with pytest.raises(ServerError):
            await collect(worker, request())
    assert worker.statistics().exhausted == 2


async def test_each_routed_call_logs_its_reason_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A routed call logs "routing <request id>: <the decision's reason>" at DEBUG."""
    worker = router((deployment("a", 1.0), Scripted()))
    req = request()
    with caplog.at_level(logging.DEBUG, "trio_orchestrator.routing"):
        await collect(worker, req)
    (reason,) = [d.reason for d in worker.recent_decisions()]
    said = [r.getMessage() for r in caplog.records if r.name == "trio_orchestrator.routing"]
    assert said == [f"routing {req.request_id}: {reason}"]


async def test_chosen_counts_every_answer_of_each_deployment() -> None:
    """Each answered request adds one to its deployment's count."""
    worker = router((deployment("a", 1.0), Scripted()))
    for _ in range(3):
        await collect(worker, request())
    assert worker.statistics().chosen == {"a": 3}


async def test_a_seeded_bandit_makes_the_same_choices() -> None:
    """Two routers with the same routing.bandit.seed choose alike, and not one arm only."""

    def choices() -> list[str]:
        config = RoutingConfig(strategy="bandit", bandit=BanditConfig(seed=11))
        worker = router((deployment("a"), Scripted()), (deployment("b"), Scripted()), config=config)
        return [worker.decide(request()).chosen.name for _ in range(40)]

    first = choices()
    assert first == choices()
    assert set(first) == {"a", "b"}


async def test_the_decision_log_keeps_the_last_decisions_oldest_first() -> None:
    """recent_decisions holds at most routing.decision_log decisions, the newest last."""
    worker = router((deployment("a", 1.0), Scripted()), config=RoutingConfig(decision_log=2))
    decisions = [worker.decide(request(str(i))) for i in range(3)]
    assert worker.recent_decisions() == tuple(decisions[1:])


async def test_request_notes_count_fallbacks_and_name_the_last_provider() -> None:
    """The router notes each further deployment tried and the provider that answered."""
    worker = router(
        (deployment("a", 1.0), Scripted(error=ServerError("x", provider="a"))),
        (deployment("b", 2.0), Scripted(error=ServerError("y", provider="b"))),
        (deployment("c", 3.0, provider="prov-c"), Scripted()),
    )
    notes = RequestNotes()
    token = set_request_notes(notes)
    try:
        await collect(worker, request())
    finally:
        reset_request_notes(token)
    assert (notes.fallbacks, notes.provider) == (2, "prov-c")
    assert worker.statistics().fallbacks == 2


@attrs.define(eq=False)
class Saboteur:
    """Fails, after declaring the named deployments unavailable (as a breaker would)."""

    down: Down
    names: set[str]

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.down.names |= self.names
        await trio.lowlevel.checkpoint()
        raise ServerError("boom", provider="a")


async def test_a_fallback_unavailable_by_its_turn_is_skipped_and_noted() -> None:
    """A deployment of the chain that became unavailable is skipped, not called or counted."""
    down = Down(set())
    skipped = Scripted()
    worker = router(
        (deployment("a", 1.0), Saboteur(down, {"b"})),
        (deployment("b", 2.0), skipped),
        (deployment("c", 3.0), Scripted(error=ServerError("last", provider="c"))),
        health=[down],
    )
    with pytest.raises(ServerError, match="last") as caught:
        await collect(worker, request())
    assert skipped.models == []
    assert worker.statistics().fallbacks == 1
    assert caught.value.__notes__ == [
        "routing attempts:\n  a: ServerError: boom\n  b: skipped, unavailable\n"
        "  c: ServerError: last"
    ]


async def ignore(event: StreamEvent) -> None:
    """An event sink that drops what it is sent."""


async def test_an_unroutable_call_cancelled_before_it_began_ends_cancelled() -> None:
    """A cancelled caller gets Cancelled, not the routing error, from a refused request."""
    worker = router((deployment("a", 1.0), Scripted()))
    with trio.CancelScope() as scope:
        scope.cancel()
        await worker.generate(request(model="nope"), ignore)
    assert scope.cancelled_caught


# ------------------------------------------------------------------ construction, reload


async def test_a_deployment_filed_under_another_name_is_refused() -> None:
    """The mapping's key must be its deployment's name."""
    with pytest.raises(ValueError, match="deployment 'a' is filed under 'b'"):
        RouterWorker({"b": (deployment("a"), Scripted())})


async def test_deployment_workers_lists_each_worker_once() -> None:
    """Deployments sharing a worker give it once; distinct workers are all listed."""
    shared, other = Scripted(), Scripted()
    worker = router((deployment("a"), shared), (deployment("b"), shared), (deployment("c"), other))
    assert worker.deployment_workers() == (shared, other)


async def test_model_names_lists_what_the_router_answers_to() -> None:
    """model_names gives the public models and groups of the deployments."""
    worker = router((deployment("a", groups=("fast",)), Scripted()))
    names = worker.model_names()
    assert "m" in names
    assert "fast" in names
    assert "nope" not in names


async def test_with_no_deployment_every_name_is_unknown() -> None:
    """An empty router says no model is configured, as a 404 from the router."""
    with pytest.raises(ModelNotFound, match="ask for one of: none configured") as caught:
        RouterWorker({}).decide(request())
    assert (caught.value.provider, caught.value.status) == ("router", 404)


async def test_a_reload_changes_prices_for_the_next_decision() -> None:
    """A reloaded [routing] with new prices reorders the chain; nothing is refused."""
    worker = router((deployment("a", 1.0), Scripted()), (deployment("b", 2.0), Scripted()))
    cheaper_b = RoutingConfig(deployments=(deployment("a", 1.0), deployment("b", 0.5)))
    assert worker.reconfigure(cheaper_b) == []
    assert worker.decide(request()).chosen.name == "b"
    assert worker.registry.deployments[1].input_price == 0.5


@pytest.mark.parametrize(
    "deployments",
    [
        (deployment("a", 1.0),),
        (deployment("a", 1.0), deployment("b", 2.0), deployment("c", 3.0)),
        (deployment("a", 1.0), deployment("b", 2.0, provider="elsewhere")),
    ],
)
async def test_a_reload_that_moves_deployments_is_refused(
    deployments: tuple[ModelDeployment, ...],
) -> None:
    """Adding, removing or moving a deployment needs a restart; the old config stays."""
    worker = router((deployment("a", 1.0), Scripted()), (deployment("b", 0.5), Scripted()))
    problems = worker.reconfigure(RoutingConfig(deployments=deployments, strategy="latency"))
    assert problems == [
        "routing.deployments: adding, removing or moving deployments needs a restart"
    ]
    decision = worker.decide(request())
    assert (decision.chosen.name, decision.strategy) == ("b", "cost")


async def test_a_reload_keeps_what_was_spent() -> None:
    """Budgets reloaded keep the spending so far, and the new limits apply to it."""
    budgets = BudgetConfig(per_api_key={"k": 1.0})
    pairs = (deployment("a", 1000.0), Scripted())
    worker = router(pairs, config=RoutingConfig(budgets=budgets))
    req = request("one two", meta={"api_key_id": "k"})
    await collect(worker, req)
    spent = worker.ledger.statistics().per_api_key["k"]
    assert spent > 0
    tighter = RoutingConfig(deployments=(pairs[0],), budgets=BudgetConfig(per_api_key={"k": spent}))
    assert worker.reconfigure(tighter) == []
    assert worker.ledger.statistics().per_api_key == {"k": spent}
    with pytest.raises(BudgetExceeded):
        await collect(worker, req)


# ------------------------------------------------------------------ deciding


async def test_without_max_tokens_the_cost_assumes_the_default_output() -> None:
    """With no max_tokens, the predicted cost counts budgets.default_output_tokens of output."""
    config = RoutingConfig(budgets=BudgetConfig(default_output_tokens=1000))
    worker = router((deployment("a", 3.0, output_price=7.0), Scripted()), config=config)
    req = PromptRequest(input="hello", params=GenerationParams(model="m"))
    decision = worker.decide(req)
    assert decision.predicted_cost == pytest.approx(
        decision.chosen.cost(decision.prompt_tokens, 1000)
    )


async def test_an_embedding_request_fits_by_its_largest_input_and_costs_no_output() -> None:
    """Each input must fit the window alone (not their sum), and no output is priced."""
    capable = ("embeddings",)
    small = deployment("small", 1.0, context_window=10, capabilities=capable)
    tiny = deployment("tiny", 0.5, context_window=8, capabilities=capable)
    worker = router((small, Scripted()), (tiny, Scripted()))
    req = PromptRequest(
        embed=[tuple(range(9)), tuple(range(9))], params=GenerationParams(model="m")
    )
    decision = worker.decide(req)
    assert decision.chosen.name == "small"
    assert [name for name, _ in decision.skipped] == ["tiny"]
    assert decision.prompt_tokens == 18
    assert decision.predicted_cost == pytest.approx(small.cost(18, 0))


async def test_max_attempts_bounds_the_chain() -> None:
    """The chain holds at most routing.max_attempts deployments, cheapest first."""
    pairs = [(deployment(n, p), Scripted()) for n, p in (("a", 1.0), ("b", 2.0), ("c", 3.0))]
    worker = router(*pairs, config=RoutingConfig(max_attempts=2))
    decision = worker.decide(request())
    assert [d.name for d in decision.chain] == ["a", "b"]
    assert (decision.requested, decision.complexity) == ("m", None)


async def test_with_nothing_available_the_reason_says_so_after_the_strategys() -> None:
    """The strategy's reason is kept, and the fallback to every candidate is appended."""
    pairs = [(deployment(n, p), Scripted()) for n, p in (("a", 1.0), ("b", 2.0))]
    usual = router(*pairs).decide(request()).reason
    decision = router(*pairs, health=[Down({"a", "b"})]).decide(request(model="a"))
    assert decision.requested == "a"
    assert router(*pairs, health=[Down({"a", "b"})]).decide(request()).reason == (
        f"{usual}; no candidate is available, so all are tried anyway"
    )


async def test_a_misfit_for_mixed_reasons_is_a_bad_request_naming_each() -> None:
    """When one deployment is too small and another lacks a capability, it is BadRequest."""
    worker = router(
        (deployment("small", 1.0, context_window=64), Scripted()),
        (deployment("plain", 1.0, capabilities=("streaming",)), Scripted()),
    )
    params = GenerationParams(model="m", tools=(Tool("f"),), max_tokens=16)
    with pytest.raises(BadRequest) as caught:
        worker.decide(PromptRequest(input="word " * 200, params=params))
    error = caught.value
    assert not isinstance(error, ContextLengthExceeded)
    assert (error.provider, error.status) == ("router", 400)
    message = str(error)
    assert message.startswith("no deployment of 'm' can serve this request (small needs ~")
    assert message.endswith(
        "> context window 64; plain lacks tools); ask for a model that has what the request needs"
    )


async def test_a_request_too_long_everywhere_is_a_context_length_error_from_the_router() -> None:
    """Too long for every window (or max_tokens too high) is ContextLengthExceeded, a 400."""
    worker = router(
        (deployment("small", 1.0, context_window=64), Scripted()),
        (deployment("short", 1.0, max_output_tokens=8), Scripted()),
    )
    with pytest.raises(ContextLengthExceeded, match="shorten the conversation or lower") as caught:
        worker.decide(request("word " * 200, max_tokens=16))
    assert (caught.value.provider, caught.value.status) == ("router", 400)
    assert "can hold this request (small needs" in str(caught.value)
    assert "short max_tokens 16 > max_output_tokens 8" in str(caught.value)


async def test_streams_rank_by_first_event_and_whole_calls_by_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Under the latency strategy a stream goes where the first event comes soonest."""
    config = RoutingConfig(strategy="latency")
    early = Scripted(delay=1.0, echo=EchoWorker(token_delay=3.0))
    whole = Scripted(delay=2.0)
    worker = router(
        (deployment("whole", 1.0), whole), (deployment("early", 2.0), early), config=config
    )
    for _ in range(2):
        await collect(worker, request("a b c", model="whole"))
        await collect(worker, request("a b c", model="early"))
    assert worker.decide(request("a b c")).chosen.name == "whole"
    assert worker.decide(request("a b c", meta={"stream": "1"})).chosen.name == "early"


# ------------------------------------------------------------------ budgets at the edge


def exact_budget(model_budget: bool) -> tuple[RouterWorker, PromptRequest, float]:
    """A router with one deployment, a request, and that request's predicted cost."""
    req = request("one two three", meta={"api_key_id": "k"})
    cost = router((deployment("a", 1000.0), Scripted())).decide(req).predicted_cost
    budgets = (
        BudgetConfig(per_model={"m": cost})
        if model_budget
        else BudgetConfig(per_api_key={"k": cost})
    )
    worker = router((deployment("a", 1000.0), Scripted()), config=RoutingConfig(budgets=budgets))
    return worker, req, cost


@pytest.mark.parametrize("model_budget", [False, True])
async def test_a_request_costing_exactly_what_is_left_is_allowed(model_budget: bool) -> None:
    """A budget is exceeded only by more than what is left, not by exactly that."""
    worker, req, _ = exact_budget(model_budget)
    assert worker.decide(req).chosen.name == "a"


async def test_a_key_with_exactly_enough_refused_by_a_model_budget_is_told_the_model() -> None:
    """A key able to pay exactly, asking a model out of budget, is refused for the model."""
    req = request("one two three", meta={"api_key_id": "k"})
    cost = router((deployment("a", 1000.0), Scripted())).decide(req).predicted_cost
    budgets = BudgetConfig(per_api_key={"k": cost}, per_model={"m": 0.0})
    worker = router((deployment("a", 1000.0), Scripted()), config=RoutingConfig(budgets=budgets))
    with pytest.raises(BudgetExceeded) as caught:
        worker.decide(req)
    assert caught.value.scope == "model"


async def test_a_key_over_budget_on_one_deployment_takes_a_cheaper_one() -> None:
    """A deployment that would overspend the key is set aside, saying so, for one that fits."""
    budgets = BudgetConfig(per_api_key={"k": 0.001})
    worker = router(
        (deployment("dear", 1000.0, weight=1.0), Scripted()),
        (deployment("cheap", 1.0), Scripted()),
        config=RoutingConfig(budgets=budgets, strategy="weighted"),
    )
    decision = worker.decide(request(meta={"api_key_id": "k"}))
    assert [d.name for d in decision.chain] == ["cheap"]
    assert decision.skipped == (("dear", "would exceed the API key's budget"),)


async def test_a_model_budget_refusal_names_the_model_even_for_a_keyed_request() -> None:
    """A key with money left, asking a model out of budget, is refused for the model."""
    budgets = BudgetConfig(per_api_key={"k": 100.0}, per_model={"m": 0.0})
    worker = router((deployment("a", 1000.0), Scripted()), config=RoutingConfig(budgets=budgets))
    with pytest.raises(BudgetExceeded, match="model 'm'") as caught:
        worker.decide(request(meta={"api_key_id": "k"}))
    assert caught.value.scope == "model"
    assert worker.statistics().unroutable == 1


async def test_the_refusal_prices_the_cheapest_candidate() -> None:
    """Over budget everywhere, the refusal quotes the cheapest deployment's predicted cost."""
    budgets = BudgetConfig(per_api_key={"k": 0.0})
    worker = router(
        (deployment("dear", 2000.0), Scripted()),
        (deployment("cheap", 1000.0), Scripted()),
        config=RoutingConfig(budgets=budgets),
    )
    req = request(meta={"api_key_id": "k"})
    cheapest = router((deployment("cheap", 1000.0), Scripted())).decide(req).predicted_cost
    with pytest.raises(BudgetExceeded) as caught:
        worker.decide(req)
    assert caught.value.needed == pytest.approx(cheapest)


# ------------------------------------------------------------------ resting and health


async def test_a_refusal_without_retry_after_rests_for_the_configured_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 429 with no Retry-After rests the deployment routing.rest_after_refusal seconds."""
    worker = router(
        (deployment("a", 1.0), Scripted(error=RateLimited("slow", provider="a"))),
        (deployment("b", 2.0), Scripted()),
        config=RoutingConfig(rest_after_refusal=5.0),
    )
    await collect(worker, request())
    await trio.sleep(4.5)
    assert worker.decide(request()).chosen.name == "b"
    await trio.sleep(0.5)
    assert worker.decide(request()).chosen.name == "a"


async def test_a_resting_deployment_is_back_exactly_when_its_rest_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Rest ends at refusal time + retry_after: available at that instant, not before."""
    worker = router(
        (deployment("a", 1.0), Scripted(error=RateLimited("slow", provider="a", retry_after=8))),
        (deployment("b", 2.0), Scripted()),
    )
    start = trio.current_time()
    await collect(worker, request())
    await trio.sleep(start + 8 - trio.current_time())
    assert worker.available(worker.registry.deployments[0])


async def test_every_health_check_must_agree() -> None:
    """One check saying unavailable is enough, whatever the others say."""
    worker = router(
        (deployment("a", 1.0), Scripted()),
        (deployment("b", 2.0), Scripted()),
        health=[Down(set()), Down({"a"})],
    )
    a, b = worker.registry.deployments
    assert (worker.available(a), worker.available(b)) == (False, True)


# ------------------------------------------------------------------ outcomes and charges


@attrs.define
class Priced:
    """Sends usage (with the given tokens), then hangs, fails or finishes."""

    usage: Usage
    then: str = "done"
    text: str = "ok"
    model: str = ""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        await trio.sleep(1)
        await emit(TextDelta(self.text))
        await emit(self.usage)
        if self.then == "hang":
            await trio.sleep_forever()
        if self.then == "fail":
            raise ServerError("lost", provider="p")
        await trio.sleep(2)
        await emit(Done("stop", self.text if self.text else "", self.usage, (), self.model))


async def test_a_success_records_latency_ttft_cost_and_reward(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A success enters its latency, first-event time and cost, and earns a full reward."""
    d = deployment("a", 1000.0)
    worker = router((d, Priced(Usage(1000, 10))))
    await trio.sleep(100)  # a clock away from 0: latency is a difference of times
    await collect(worker, request(meta={"api_key_id": "k"}))
    (stats,) = worker.tracker.statistics().deployments
    assert stats.latency == pytest.approx(3.0)
    assert stats.ttft == pytest.approx(1.0)
    assert stats.total_cost == pytest.approx(d.cost(1000, 10))
    assert worker.ledger.statistics().per_api_key == {"k": pytest.approx(d.cost(1000, 10))}
    assert worker.ledger.statistics().per_model == {"m": pytest.approx(d.cost(1000, 10))}
    ((name, pulls, mean),) = [attrs.astuple(a) for a in worker.bandit.statistics()]
    assert (name, pulls) == ("a", 1)
    assert 0.0 < mean <= 1.0


async def test_a_failure_before_any_usage_costs_nothing() -> None:
    """A call that fails without reporting usage is charged nothing."""
    worker = router(
        (deployment("a", 1000.0), Scripted(error=ServerError("x", provider="a"))),
        (deployment("b", 1000.0), Scripted()),
        config=RoutingConfig(budgets=BudgetConfig(per_api_key={"k": 1.0})),
    )
    await collect(worker, request("hi", meta={"api_key_id": "k"}))
    stats = {d.name: d for d in worker.tracker.statistics().deployments}
    assert stats["a"].total_cost == 0.0
    assert worker.ledger.statistics().per_api_key["k"] == pytest.approx(stats["b"].total_cost)


async def test_a_failure_is_charged_and_earns_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call failing after usage is charged that usage and scores zero for the bandit."""
    d = deployment("a", 1000.0)
    worker = router((d, Priced(Usage(1000, 10), then="fail")))
    with pytest.raises(ServerError):
        await collect(worker, request(meta={"api_key_id": "k"}))
    assert worker.tracker.statistics().deployments[0].errors == {"ServerError": 1}
    assert worker.ledger.statistics().per_api_key == {"k": pytest.approx(d.cost(1000, 10))}
    assert worker.ledger.statistics().per_model == {"m": pytest.approx(d.cost(1000, 10))}
    (stats,) = worker.tracker.statistics().deployments
    assert stats.total_cost == pytest.approx(d.cost(1000, 10))
    assert [attrs.astuple(a) for a in worker.bandit.statistics()] == [("a", 1, 0.0)]


async def test_a_call_cut_at_the_deadline_is_a_timeout_charged_its_usage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At the request's deadline a hanging call is timed out: failed, charged, reward 0."""
    d = deployment("a", 1000.0)
    worker = router((d, Priced(Usage(1000, 10), then="hang")))
    await trio.sleep(100)  # a clock away from 0: latency is a difference of times
    async with open_pipeline(worker) as pipeline:
        with pytest.raises(DeadlineExceeded):
            await pipeline.submit(request(timeout=10.0, meta={"api_key_id": "k"}))
    (stats,) = worker.tracker.statistics().deployments
    assert stats.failures == 1
    assert stats.latency == pytest.approx(10.0)
    assert stats.total_cost == pytest.approx(d.cost(1000, 10))
    assert worker.ledger.statistics().per_model == {"m": pytest.approx(d.cost(1000, 10))}
    assert [attrs.astuple(a) for a in worker.bandit.statistics()] == [("a", 1, 0.0)]


async def test_a_caller_leaving_is_charged_but_not_held_against_the_deployment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelled before the deadline, the call's usage is charged; no failure, no reward."""
    d = deployment("a", 1000.0)
    worker = router((d, Priced(Usage(1000, 10), then="hang")))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, worker, request(meta={"api_key_id": "k"}))
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    (stats,) = worker.tracker.statistics().deployments
    assert (stats.failures, stats.successes, stats.in_flight) == (0, 0, 0)
    assert worker.ledger.statistics().per_api_key == {"k": pytest.approx(d.cost(1000, 10))}
    assert worker.bandit.statistics() == ()


async def test_cached_input_tokens_are_priced_at_the_cached_price(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The charge for a call uses its cached input tokens' price."""
    d = deployment("a", 1000.0, cached_input_price=100.0)
    worker = router((d, Priced(Usage(1000, 10, cached_input_tokens=800))))
    await collect(worker, request(meta={"api_key_id": "k"}))
    assert worker.ledger.statistics().per_api_key["k"] == pytest.approx(d.cost(1000, 10, 800))
    assert d.cost(1000, 10, 800) < d.cost(1000, 10)


@pytest.mark.parametrize(
    ("streamed", "final", "charged"),
    [
        (Usage(1000, 10), None, Usage(1000, 10)),
        (Usage(1, 1), Usage(1000, 10), Usage(1000, 10)),
    ],
)
async def test_the_charge_is_dones_usage_else_the_streamed_usage(
    streamed: Usage, final: Usage | None, charged: Usage
) -> None:
    """Done's usage is what the call cost; without one, the last streamed Usage is."""

    @attrs.define
    class Reporting:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await emit(streamed)
            await emit(Done("stop", "", final, (), None))

    d = deployment("a", 1000.0)
    worker = router((d, Reporting()))
    await collect(worker, request(meta={"api_key_id": "k"}))
    expected = d.cost(charged.input_tokens, charged.output_tokens)
    assert worker.ledger.statistics().per_api_key == {"k": pytest.approx(expected)}


async def test_done_keeps_the_workers_model_name_when_it_gives_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Done.model stays what the worker said; only a missing one becomes the upstream name."""
    worker = router((deployment("a", 1.0), Priced(Usage(1, 1), model="snapshot-2024")))
    assert (await collect(worker, request())).model == "snapshot-2024"


async def test_a_restarted_answer_with_no_text_and_no_usage_keeps_them_empty(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a restart, a Done without text or usage is not given the earlier text or usage."""

    @attrs.define
    class Bare:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await emit(Done("stop", "", None, (), None))

    config = RoutingConfig(stream_fallback="restart", restart_marker="|")
    broken = Priced(Usage(3, 4), then="fail", text="part")
    worker = router((deployment("a", 1.0), broken), (deployment("b", 2.0), Bare()), config=config)
    events: list[StreamEvent] = []

    async def keep(event: StreamEvent) -> None:
        events.append(event)

    await worker.generate(request(meta={"allow_stream_restart": "1"}), keep)
    final = events[-1]
    assert isinstance(final, Done)
    assert (final.text, final.usage, final.model) == ("", None, "b-upstream")


async def test_usage_adds_up_over_two_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each restart adds the failed attempt's usage; the answer's usage is the sum of all."""
    config = RoutingConfig(stream_fallback="restart", restart_marker="|")
    worker = router(
        (deployment("a", 1.0), Priced(Usage(1, 2), then="fail", text="x")),
        (deployment("b", 2.0), Priced(Usage(10, 20), then="fail", text="y")),
        (deployment("c", 3.0), Priced(Usage(100, 200), text="z")),
        config=config,
    )
    events: list[StreamEvent] = []

    async def keep(event: StreamEvent) -> None:
        events.append(event)

    await worker.generate(request(meta={"allow_stream_restart": "1"}), keep)
    usages = [e for e in events if isinstance(e, Usage)]
    assert usages == [Usage(1, 2), Usage(11, 22), Usage(111, 222)]
    final = events[-1]
    assert isinstance(final, Done)
    assert (final.text, final.usage) == ("x|y|z", Usage(111, 222))
    assert worker.statistics().restarts == 2


@attrs.define
class ToolThenFail:
    """Starts tool call 0, then fails (or, when ``finish``, answers with it)."""

    finish: bool = False

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        await emit(ToolCallStart(0, "call", "f"))
        if not self.finish:
            raise ServerError("lost", provider="p")
        await emit(Done("tool_calls", "", None, (), None))


async def test_tool_call_indexes_shift_past_every_earlier_attempts_calls() -> None:
    """After two restarts, the third attempt's tool call follows both earlier ones."""
    config = RoutingConfig(stream_fallback="restart")
    worker = router(
        (deployment("a", 1.0), ToolThenFail()),
        (deployment("b", 2.0), ToolThenFail()),
        (deployment("c", 3.0), ToolThenFail(finish=True)),
        config=config,
    )
    params = GenerationParams(model="m", tools=(Tool("f"),))
    req = PromptRequest(input="go", params=params, meta={"allow_stream_restart": "1"})
    events: list[StreamEvent] = []

    async def keep(event: StreamEvent) -> None:
        events.append(event)

    await worker.generate(req, keep)
    assert [e.index for e in events if isinstance(e, ToolCallStart)] == [0, 1, 2]


# ------------------------------------------------------------------ building, profiles


async def test_build_router_takes_the_given_catalogue_and_health_checks() -> None:
    """build_router fills unset facts from its catalogue (also on reload) and asks its checks."""
    catalogue = Catalogue({"m": ModelFacts(context_window=123, input_price=4.0)})
    routing = RoutingConfig(deployments=(ModelDeployment("d", "m", "p"),))
    worker = build_router(routing, {"p": Scripted()}, catalogue=catalogue, health=[Down({"d"})])
    (d,) = worker.registry.deployments
    assert (d.context_window, d.input_price) == (123, 4.0)
    assert not worker.available(d)
    assert worker.reconfigure(attrs.evolve(routing, strategy="latency")) == []
    assert worker.registry.deployments[0].context_window == 123


async def test_building_a_router_without_deployments_is_a_config_error() -> None:
    """build_router needs at least one deployment, and says so."""
    with pytest.raises(ConfigError) as caught:
        build_router(RoutingConfig(), {"p": Scripted()})
    assert caught.value.problems == [
        "routing.deployments: no deployment is declared; add at least one"
    ]


async def test_saving_profiles_without_a_path_writes_nothing() -> None:
    """With no routing.profile_path, save_profiles reports that nothing was written."""
    assert not await router((deployment("a"), Scripted())).save_profiles()


async def test_a_failed_profile_save_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A profile path that cannot be written gives False and a warning naming it and why."""
    path = str(tmp_path / "missing" / "profiles.json")
    routing = RoutingConfig(deployments=(ModelDeployment("d", "m", "p"),), profile_path=path)
    worker = build_router(routing, {"p": Scripted()})
    with pytest.raises(FileNotFoundError) as direct:
        worker.tracker.export_profiles(path)
    with caplog.at_level(logging.WARNING, "trio_orchestrator.routing"):
        assert not await worker.save_profiles()
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"could not save routing profiles to {path}: {direct.value}"]


@pytest.mark.parametrize(
    ("content", "level", "said"),
    [
        (None, logging.INFO, "no routing profiles at {path} yet; starting fresh"),
        ("not json", logging.WARNING, "routing profiles at {path} ignored: {error}"),
        (
            '{"version": 1, "deployments": {}}',
            logging.INFO,
            "loaded 0 routing profiles from {path}",
        ),
    ],
)
def test_loading_profiles_says_what_it_found(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    content: str | None,
    level: int,
    said: str,
) -> None:
    """A missing, unreadable or valid profile file is reported; the router is built anyway."""
    path = tmp_path / "profiles.json"
    if content is not None:
        path.write_text(content, "utf-8")
    error: Exception | None = None
    try:
        OutcomeTracker().import_profiles(path)
    except Exception as exc:  # what the router's loader will have caught
        error = exc
    routing = RoutingConfig(deployments=(ModelDeployment("d", "m", "p"),), profile_path=str(path))
    with caplog.at_level(logging.DEBUG, "trio_orchestrator.routing"):
        build_router(routing, {"p": Scripted()})
    (record,) = [r for r in caplog.records if "profiles" in r.getMessage()]
    assert record.levelno == level
    assert record.getMessage() == said.format(path=path, error=error)
