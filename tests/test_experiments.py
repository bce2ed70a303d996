"""Experiments' parts on their own: the statistics against hand-computed values, assignment,
overrides, the guard rails and the storage of their sums (SQLite and PostgreSQL)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from postgres_fixture import postgres_cluster, postgres_server  # noqa: F401 - fixtures
from test_contract import contract

from trio_orchestrator.config.load import parse_config
from trio_orchestrator.errors import ConfigError
from trio_orchestrator.events import Usage
from trio_orchestrator.gateway import open_gateway
from trio_orchestrator.routing.experiment_config import (
    ExperimentConfig,
    ExperimentsConfig,
    GuardRails,
    VariantConfig,
)
from trio_orchestrator.routing.experiment_stats import (
    Moments,
    log_latency_worse_p,
    mean_interval,
    normal_sf,
    proportion_worse_p,
    wilson,
    z_for,
)
from trio_orchestrator.routing.experiments import (
    Assignment,
    ExperimentLayer,
    Experiments,
    unit_point,
)
from trio_orchestrator.storage import (
    ExperimentRecord,
    PostgresStore,
    SqliteStore,
    Store,
    VariantSums,
)
from trio_orchestrator.types import Message, PromptRequest
from trio_orchestrator.workers import EchoWorker


def experiment(**guard: object) -> ExperimentsConfig:
    """One experiment on model ``m``: control and ``b``, half each, sticky by key."""
    variants = (VariantConfig("control", 0.5), VariantConfig("b", 0.5, model="m-b"))
    rails = GuardRails(**guard)  # type: ignore[arg-type]
    return ExperimentsConfig((ExperimentConfig("e", ("m",), variants, guard=rails),))


def request(
    key: str = "k", model: str = "m", meta_extra: dict[str, str] | None = None
) -> PromptRequest:
    """A request for ``model`` from API key ``key`` (with more meta labels)."""
    from trio_orchestrator.types import GenerationParams

    meta = {"api_key_id": key, **(meta_extra or {})}
    return PromptRequest(input="hi", params=GenerationParams(model=model), meta=meta)


def on_echo() -> Experiments:
    """An experiment on every model name the contract's requests use, sticky by request."""
    variants = (VariantConfig("control"), VariantConfig("b", temperature=0.5))
    models = ("echo", "test-model", "m")
    return Experiments(ExperimentsConfig((ExperimentConfig("e", models, variants),)))


TestExperimentLayer = contract(lambda: ExperimentLayer(EchoWorker(), on_echo()), deterministic=True)


# ---------------------------------------------------------------------------- statistics


def test_wilson_interval_matches_the_hand_computed_one() -> None:
    """8 of 10: Wilson's 95 % interval is (0.4902, 0.9433), as computed by hand."""
    interval = wilson(8, 10)
    assert interval.estimate == 0.8
    assert interval.low == pytest.approx(0.4902, abs=1e-4)
    assert interval.high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_stays_in_the_unit_interval_at_the_edges() -> None:
    """0 of 20 and 20 of 20 keep their intervals within [0, 1], and 0 samples is NaN."""
    assert wilson(0, 20).low == 0.0
    assert wilson(20, 20).high == 1.0
    assert wilson(0, 20).high == pytest.approx(0.1611, abs=1e-4)
    assert math.isnan(wilson(0, 0).estimate)


def test_normal_tail_and_critical_values_are_the_tabled_ones() -> None:
    """P(Z > 1.6449) = 0.05, and the 95 % two-sided critical value is 1.95996."""
    assert normal_sf(1.6448536) == pytest.approx(0.05, abs=1e-7)
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_for(0.99) == pytest.approx(2.575829, abs=1e-6)


def test_the_error_test_is_the_shifted_one_sided_two_proportion_z_test() -> None:
    """30/100 against 5/100 with a margin of 0.05: z = 0.20 / 0.050744 = 3.9413, p = 4.05e-5
    (by hand); 6/100 against 5/100 is within the margin (p > 0.5)."""
    assert proportion_worse_p(30, 100, 5, 100, 0.05) == pytest.approx(4.0518e-5, rel=1e-3)
    assert proportion_worse_p(6, 100, 5, 100, 0.05) > 0.5


def test_no_spread_decides_by_the_margin_alone() -> None:
    """With no variance at all, an excess beyond the margin is certain and within it is not."""
    assert proportion_worse_p(100, 100, 0, 100, 0.05) == 0.0
    assert proportion_worse_p(0, 100, 0, 100, 0.05) == 1.0


def test_the_latency_test_is_welch_on_log_latencies() -> None:
    """A variant twice as slow on five samples each: the log means differ by log 2, the
    margin is log 1.25, s² = 0.025675 (by hand), so z = 0.4700 / 0.10134 and p = 1.76e-6."""
    variant, control = Moments(), Moments()
    for x in (1.0, 1.2, 0.8, 1.1, 0.9):
        variant.add(math.log(2 * x))
        control.add(math.log(x))
    assert control.variance == pytest.approx(0.025675, abs=1e-6)
    assert log_latency_worse_p(variant, control, 0.25) == pytest.approx(1.7606e-6, rel=1e-3)
    assert log_latency_worse_p(variant, control, math.inf) == 1.0


def test_a_mean_interval_is_the_normal_approximation() -> None:
    """Scores 1, 2, 3, 4: mean 2.5, s = 1.29099, half width 1.96 · s / 2 = 1.2652."""
    moments = Moments()
    for score in (1, 2, 3, 4):
        moments.add(score)
    interval = mean_interval(moments)
    assert interval.estimate == 2.5
    assert interval.high - 2.5 == pytest.approx(1.2652, abs=1e-4)


# ---------------------------------------------------------------------------- assignment


def test_the_unit_hash_is_stable_and_not_pythons_hash() -> None:
    """SHA-256 over the experiment id and the unit: the same fraction in every process."""
    assert unit_point("exp", "alice") == pytest.approx(0.27596905139464095, abs=1e-15)


def test_a_unit_always_meets_the_same_variant_and_shares_are_kept() -> None:
    """The same key always gets one variant; 2000 keys split near 70/30 (binomial
    sd ≈ 20.5: within 4 sd)."""
    variants = (VariantConfig("control", 7), VariantConfig("b", 3))
    config = ExperimentsConfig((ExperimentConfig("e", ("m",), variants),))
    experiments = Experiments(config)
    first = experiments.assign(request("alice"))
    assert all(experiments.assign(request("alice")) == first for _ in range(10))
    picks = [experiments.assign(request(f"key-{i}")) for i in range(2000)]
    share_b = sum(p is not None and p.variant == "b" for p in picks)
    assert abs(share_b - 600) < 4 * math.sqrt(2000 * 0.3 * 0.7)


def test_a_stamp_is_honoured_and_a_forged_one_is_not() -> None:
    """The service's stamp holds even if the experiment stops meanwhile (the header already
    named it); labels a client wrote itself (without the process's token) pick nothing."""
    experiments = Experiments(experiment())
    stamped, assignment = experiments.stamp(request("alice"))
    assert assignment is not None
    experiments.stop("e")
    assert experiments.assignment_of(stamped) == assignment
    experiments.resume("e")
    other = "b" if assignment.variant == "control" else "control"
    forged = request("alice", meta_extra={"experiment": "e", "experiment_variant": other})
    assert experiments.assignment_of(forged) == assignment


def test_a_request_for_another_model_is_in_no_experiment() -> None:
    """Only the models an experiment names take part."""
    assert Experiments(experiment()).assign(request(model="other")) is None


def test_a_variant_overrides_model_parameters_and_prompt() -> None:
    """A variant's model, temperature, extra params, system prefix and template reach the
    request it is applied to."""
    variant = VariantConfig(
        "b",
        model="m-b",
        temperature=0.1,
        seed=7,
        params={"presence_penalty": 0.5},
        system_prefix="Be brief. ",
        template="Q: {prompt}",
    )
    config = ExperimentConfig("e", ("m",), (VariantConfig("control"), variant))
    experiments = Experiments(ExperimentsConfig((config,)))
    original = PromptRequest(
        messages=(Message("system", "You help."), Message("user", "why?")),
        params=request().params,
    )
    changed = experiments.apply(original, Assignment("e", "b"))
    assert changed.params.model == "m-b"
    assert changed.params.temperature == 0.1
    assert (changed.params.seed, changed.params.extra) == (7, {"presence_penalty": 0.5})
    assert [m.content for m in changed.chat()] == ["Be brief. You help.", "Q: why?"]
    assert experiments.apply(original, Assignment("e", "control")) is original


def test_the_configuration_refuses_nonsense() -> None:
    """One variant, a template without {prompt}, an unknown control: refused, by key path."""
    with pytest.raises(ValueError, match="at least two"):
        ExperimentConfig("e", ("m",), (VariantConfig("a"),))
    with pytest.raises(ValueError, match="prompt"):
        VariantConfig("a", template="no slot")
    with pytest.raises(ConfigError, match="experiments"):
        parse_config(
            '[[experiments.experiments]]\nid = "e"\nmodels = ["m"]\ncontrol = "x"\n'
            '[[experiments.experiments.variants]]\nname = "a"\n'
            '[[experiments.experiments.variants]]\nname = "b"\n'
        )


# ---------------------------------------------------------------------------- guard rails


def run(experiments: Experiments, variant: str, n: int, fail_every: int = 0) -> None:
    """Record ``n`` outcomes of ``variant`` (every ``fail_every``-th one a failure)."""
    for i in range(n):
        ok = not (fail_every and i % fail_every == 0)
        usage = Usage(input_tokens=3, output_tokens=2)
        experiments.record(Assignment("e", variant), ok=ok, latency=0.1, usage=usage, model="m")


def test_a_variant_worse_beyond_the_error_margin_rolls_back() -> None:
    """30 % errors against none, after min samples: rolled back, every unit then on control."""
    experiments = Experiments(experiment(min_samples=50), clock=lambda: 1000.0)
    run(experiments, "control", 50)
    run(experiments, "b", 49, fail_every=3)
    assert experiments.status("e") == "running"  # b has not min_samples yet
    run(experiments, "b", 1, fail_every=1)
    report = experiments.report("e")
    assert report["status"] == "rolled_back"
    assert "error rate" in report["reason"]
    assert report["changed_at"] == 1000.0
    assert {experiments.assign(request(f"k{i}")).variant for i in range(50)} == {"control"}  # type: ignore[union-attr]


def test_a_variant_within_the_margins_keeps_running() -> None:
    """Errors 2 % against 1 %, well within a 5-point margin: still running."""
    experiments = Experiments(experiment(min_samples=50))
    run(experiments, "control", 100, fail_every=100)
    run(experiments, "b", 100, fail_every=50)
    assert experiments.status("e") == "running"


def test_a_slower_variant_rolls_back_on_latency() -> None:
    """A variant three times slower than control beyond a 25 % margin rolls back."""
    experiments = Experiments(experiment(min_samples=20))
    for i in range(20):
        jitter = 1 + (i % 5) / 50
        experiments.record(
            Assignment("e", "control"), ok=True, latency=0.1 * jitter, usage=None, model="m"
        )
        experiments.record(
            Assignment("e", "b"), ok=True, latency=0.3 * jitter, usage=None, model="m"
        )
    report = experiments.report("e")
    assert report["status"] == "rolled_back"
    assert "latency" in report["reason"]


def test_action_none_reports_the_verdict_and_keeps_the_split() -> None:
    """With ``action = "none"`` the verdict is shown and the experiment keeps running."""
    experiments = Experiments(experiment(min_samples=30, action="none"))
    run(experiments, "control", 30)
    run(experiments, "b", 30, fail_every=2)
    report = experiments.report("e")
    assert (report["status"], "error rate" in report["verdict"]) == ("running", True)


def test_feedback_goes_to_the_remembered_variant_and_old_ids_are_forgotten() -> None:
    """Feedback finds a request's variant; beyond the capacity the oldest id is forgotten."""
    config = ExperimentsConfig(experiment().experiments, feedback_capacity=2)
    experiments = Experiments(config)
    for rid in ("r1", "r2", "r3"):
        experiments.remember(rid, Assignment("e", "b"))
    assert experiments.feedback("r1", 1.0) is None
    assert experiments.feedback("r3", 4.0) == Assignment("e", "b")
    assert experiments.report("e")["variants"][1]["feedback"]["n"] == 1


def test_a_reload_changes_the_split_and_refuses_new_variants() -> None:
    """Shares change on a reload; a new variant is refused and needs a restart."""
    experiments = Experiments(experiment())
    moved = ExperimentsConfig(
        (ExperimentConfig("e", ("m",), (VariantConfig("control", 0), VariantConfig("b", 1))),)
    )
    assert experiments.reconfigure(moved) == []
    assert experiments.assign(request("x")) == Assignment("e", "b")
    grown = ExperimentConfig("e", ("m",), (*moved.experiments[0].variants, VariantConfig("c")))
    assert experiments.reconfigure(ExperimentsConfig((grown,))) != []


async def test_a_gateway_reload_moves_the_split_and_refuses_a_new_variant() -> None:
    """Through ``gateway.reload``: new shares are applied to the running layer; a new
    variant is refused and the split stays."""
    from trio_orchestrator.config import Config

    config = Config(experiments=experiment())
    async with open_gateway(config, worker=EchoWorker()) as gateway:
        assert gateway.experiments is not None
        moved = experiment()
        variants = (VariantConfig("control", 0), VariantConfig("b", 1))
        moved = ExperimentsConfig((attrs.evolve(moved.experiments[0], variants=variants),))
        report = gateway.reload(attrs.evolve(config, experiments=moved))
        assert report.refused == ()
        assert gateway.experiments.assign(request("anyone")) == Assignment("e", "b")
        grown = (*variants, VariantConfig("c"))
        bigger = ExperimentsConfig((attrs.evolve(moved.experiments[0], variants=grown),))
        report = gateway.reload(attrs.evolve(config, experiments=bigger))
        assert any("needs a restart" in line for line in report.refused)
        assert gateway.experiments.assign(request("anyone")) == Assignment("e", "b")


# ---------------------------------------------------------------------------- storage


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A fresh store of each backend (PostgreSQL skips when it is not installed)."""
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_server")
        return lambda: PostgresStore(dsn)
    return lambda: SqliteStore(str(tmp_path / "db.sqlite"))


async def test_stored_sums_add_up_and_the_status_is_replaced(
    make_store: Callable[[], Store],
) -> None:
    """Two writes of increments add up; the latest status wins; a new store reads it all."""
    store = make_store()
    first = ExperimentRecord("e", "running", "", None, (VariantSums("b", 3, 1, 0.3),))
    second = ExperimentRecord(
        "e", "rolled_back", "worse", 5.0, (VariantSums("b", 2, 2, 0.2, cost=0.5),)
    )
    await store.add_experiments([first])
    await store.add_experiments([second])
    await store.aclose()
    again = make_store()
    (record,) = await again.experiments()
    await again.aclose()
    assert (record.status, record.reason, record.changed_at) == ("rolled_back", "worse", 5.0)
    (sums,) = record.variants
    assert (sums.requests, sums.errors, sums.cost) == (5, 3, 0.5)
    assert sums.latency_sum == pytest.approx(0.5)


async def test_experiments_load_what_was_flushed(tmp_path: Path) -> None:
    """Outcomes flushed by one Experiments are the totals of the next one on the same file."""
    store = SqliteStore(str(tmp_path / "db.sqlite"))
    experiments = Experiments(experiment(min_samples=10))
    run(experiments, "control", 10)
    run(experiments, "b", 10, fail_every=1)
    await experiments.flush(store)
    assert experiments.take_unsaved() == []
    later = Experiments(experiment(min_samples=10))
    later.load(await store.experiments())
    await store.aclose()
    report = later.report("e")
    assert report["status"] == "rolled_back"
    assert [v["requests"] for v in report["variants"]] == [10, 10]
    assert report["variants"][0]["tokens"]["total"] == 50


async def test_processes_sharing_a_store_see_each_others_counts_and_rollback(
    tmp_path: Path,
) -> None:
    """Two processes' Experiments on one database: after a sync each counts both's requests,
    and a rollback decided by one holds in the other."""
    path = str(tmp_path / "db.sqlite")
    one, two = Experiments(experiment(min_samples=20)), Experiments(experiment(min_samples=20))
    store_one, store_two = SqliteStore(path), SqliteStore(path)
    run(one, "control", 10)
    run(two, "control", 10)
    await one.sync(store_one)
    await two.sync(store_two)
    await one.sync(store_one)
    assert [x.report("e")["variants"][0]["requests"] for x in (one, two)] == [20, 20]
    run(one, "b", 20, fail_every=2)  # one now holds 20 control (both's) and rolls back
    assert one.status("e") == "rolled_back"
    await one.sync(store_one)
    await two.sync(store_two)
    await store_one.aclose()
    await store_two.aclose()
    assert two.status("e") == "rolled_back"
    assert two.report("e")["reason"] == one.report("e")["reason"]
