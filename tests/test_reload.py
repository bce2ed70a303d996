"""Reloading the configuration of a running gateway: the pipeline's own section, files,
signals, and the parts registered for a section."""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
from pathlib import Path

import attrs
import httpx
import pytest
import trio
import trio.testing
from config_classes import Provider, Root, Window
from service_helpers import make_config, running_app, wait_for_statistic
from terminal import PROMPTLY

from trio_orchestrator.config import (
    Config,
    ConfigChange,
    PipelineConfig,
    ReloadReport,
    reload_on_signal,
)
from trio_orchestrator.config.reload import plan_reload
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig, ServiceConfig
from trio_orchestrator.errors import DeadlineExceeded
from trio_orchestrator.events import Done, TextDelta
from trio_orchestrator.gateway import open_gateway
from trio_orchestrator.pipeline import Outcome
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers.base import EventSink


@attrs.define(eq=False)
class SlowWorker:
    """Takes ``delay`` seconds per request and counts how many run at once."""

    delay: float = 5.0
    active: int = 0
    peak: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Wait, then echo the input."""
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await trio.sleep(self.delay)
            await emit(TextDelta(request.input or ""))
            await emit(Done("stop", request.input or ""))
        finally:
            self.active -= 1


@attrs.define(eq=False)
class PipelinePart:
    """A part registered for the ``pipeline`` section that records what it is given and
    refuses what it was told to."""

    seen: list[PipelineConfig] = attrs.field(factory=list)
    refuse: list[str] = attrs.field(factory=list)

    def reconfigure(self, section: PipelineConfig, /) -> list[str]:
        """Record the section; refuse what it was told to."""
        self.seen.append(section)
        return list(self.refuse)


def pipeline_config(**options: float) -> Config:
    """A Config whose pipeline section sets ``options``."""
    return Config(PipelineConfig(**options))  # type: ignore[arg-type]


async def test_reload_applies_inference_concurrency() -> None:
    """A new inference concurrency is in force at once and reported as applied."""
    async with open_gateway(
        pipeline_config(inference_concurrency=4), worker=SlowWorker()
    ) as gateway:
        report = gateway.reload(pipeline_config(inference_concurrency=2))
        assert gateway.pipeline.statistics().inference_concurrency == 2
    assert report == ReloadReport(
        applied=(ConfigChange("pipeline.inference_concurrency", 4, 2),), refused=()
    )
    assert report.ok


async def test_non_reloadable_change_is_refused_and_kept() -> None:
    """A channel capacity change is refused and reported; the reloadable part still applies."""
    async with open_gateway(worker=SlowWorker()) as gateway:
        report = gateway.reload(pipeline_config(rag_capacity=8, grace_period=1.0))
        assert gateway.config.pipeline.rag_capacity == 512
        assert gateway.config.pipeline.grace_period == 1.0
        assert gateway.pipeline.statistics().stages[0].capacity == 512
    assert [change.path for change in report.applied] == ["pipeline.grace_period"]
    [refusal] = report.refused
    assert refusal == "pipeline.rag_capacity: cannot change while running; restart to apply 512 → 8"
    assert not report.ok


async def test_same_configuration_changes_nothing() -> None:
    """Reloading the configuration in force reports no change."""
    async with open_gateway(worker=SlowWorker()) as gateway:
        report = gateway.reload(Config())
    assert report == ReloadReport()
    assert str(report) == "configuration unchanged"


async def test_new_request_timeout_applies_to_new_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After lowering request_timeout, a new request slower than it expires."""
    async with open_gateway(worker=SlowWorker(delay=5.0)) as gateway:
        await gateway.pipeline.submit(PromptRequest(input="before"))
        gateway.reload(pipeline_config(request_timeout=1.0))
        with pytest.raises(DeadlineExceeded):
            await gateway.pipeline.submit(PromptRequest(input="after"))


async def test_new_grace_period_applies_at_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A grace period raised by reload lets a request longer than the old one finish."""
    outcomes: list[Outcome] = []
    # The caller outlives the pipeline, so only shutdown's grace period limits the request.
    async with (
        trio.open_nursery() as callers,
        open_gateway(worker=SlowWorker(delay=30.0)) as gateway,  # grace_period 10 s
    ):
        gateway.pipeline.add_listener(lambda finished: outcomes.append(finished.outcome))
        gateway.reload(pipeline_config(grace_period=60.0))
        callers.start_soon(gateway.pipeline.submit, PromptRequest(input="long"))
        await trio.sleep(1)
    assert outcomes == [Outcome.COMPLETED]


async def test_no_request_in_flight_is_dropped_by_reloads_under_load(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests in flight while concurrency is lowered and raised all complete."""
    worker = SlowWorker(delay=3.0)
    config = pipeline_config(inference_concurrency=8)
    answers: list[str] = []

    async def call(i: int) -> None:
        answers.append((await gateway.pipeline.submit(PromptRequest(input=f"r{i}"))).text)

    async with open_gateway(config, worker=worker) as gateway, trio.open_nursery() as callers:
        for i in range(200):
            callers.start_soon(call, i)
        for concurrency in (2, 16, 1, 8):
            await trio.sleep(4)
            assert gateway.pipeline.statistics().in_flight > 0  # reloading mid-load, not after it
            gateway.reload(pipeline_config(inference_concurrency=concurrency))
    statistics = gateway.pipeline.statistics()
    assert sorted(answers) == sorted(f"r{i}" for i in range(200))
    assert (statistics.completed, statistics.submitted) == (200, 200)


async def test_lowered_concurrency_lets_in_flight_finish_then_bounds_new_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Below the number running, nothing is cancelled; new work waits until under the limit."""
    worker = SlowWorker(delay=10.0)
    async with open_gateway(pipeline_config(inference_concurrency=6), worker=worker) as gateway:
        async with trio.open_nursery() as callers:
            for i in range(12):
                callers.start_soon(gateway.pipeline.submit, PromptRequest(input=f"r{i}"))
            await trio.sleep(1)
            assert worker.active == 6
            gateway.reload(pipeline_config(inference_concurrency=2))
            await trio.sleep(1)
            assert worker.active == 6  # the six in flight carry on
            worker.peak = 0
            await trio.sleep(9)  # they finish; the rest start two at a time
            assert worker.active == 2
        assert worker.peak == 2
        assert gateway.pipeline.statistics().completed == 12


async def test_a_registered_part_gets_its_section_as_put_in_force() -> None:
    """A part registered for ``pipeline`` is reconfigured with the section put in force
    (the refused capacity change kept at its old value)."""
    part = PipelinePart()
    async with open_gateway(worker=SlowWorker()) as gateway:
        gateway.add(part, "pipeline")
        gateway.reload(pipeline_config(inference_concurrency=3, rag_capacity=7))
    assert part.seen == [PipelineConfig(inference_concurrency=3)]


async def test_part_refusals_are_reported_and_not_counted_as_applied() -> None:
    """What a registered part refuses appears in the report and not among applied changes."""
    refusal = "pipeline.stream_buffer: the part cannot take this now"
    part = PipelinePart(refuse=[refusal])
    async with open_gateway(worker=SlowWorker()) as gateway:
        gateway.add(part, "pipeline")
        report = gateway.reload(pipeline_config(stream_buffer=2, grace_period=1.0))
    assert report.refused == (refusal,)
    assert [change.path for change in report.applied] == ["pipeline.grace_period"]


async def test_reload_from_valid_file(tmp_path: Path) -> None:
    """A valid file is loaded and applied."""
    path = tmp_path / "new.toml"
    path.write_text("[pipeline]\ninference_concurrency = 5\n")
    async with open_gateway(worker=SlowWorker()) as gateway:
        report = await gateway.reload_from_file(path)
        assert gateway.pipeline.statistics().inference_concurrency == 5
    assert report.applied == (ConfigChange("pipeline.inference_concurrency", 256, 5),)


async def test_invalid_file_leaves_the_old_configuration_in_force(tmp_path: Path) -> None:
    """An invalid file changes nothing, and the report lists every problem."""
    path = tmp_path / "bad.toml"
    path.write_text('[pipeline]\ninference_concurrency = "5"\ngrace_period = -1\n')
    async with open_gateway(worker=SlowWorker()) as gateway:
        report = await gateway.reload_from_file(path)
        assert gateway.config == Config()
        assert gateway.pipeline.statistics().inference_concurrency == 256
    assert report.invalid == (
        "pipeline.inference_concurrency: expected a whole number, found the string '5'",
        "pipeline.grace_period: expected a number of seconds ≥ 0, found the number -1.0",
    )
    assert report.applied == ()
    assert str(report).startswith("configuration not reloaded (invalid):")


async def test_missing_file_leaves_the_old_configuration_in_force(tmp_path: Path) -> None:
    """A file that cannot be read changes nothing and says why."""
    async with open_gateway(worker=SlowWorker()) as gateway:
        report = await gateway.reload_from_file(tmp_path / "absent.toml")
        assert gateway.config == Config()
    [problem] = report.invalid
    assert problem.startswith("cannot read")


def test_reloadable_mark_covers_nested_options() -> None:
    """A field marked reloadable covers every option nested below it."""
    merged, applied, refused = plan_reload(Root(), Root(window=Window(1, 5)))
    assert merged == Root(window=Window(1, 5))
    assert [str(change) for change in applied] == ["window.low: 0 → 1", "window.high: 10 → 5"]
    assert refused == []


def test_nested_changes_are_refused_with_their_full_path() -> None:
    """A change deep in an unmarked section is refused with its full key path."""
    old = Root(providers={"p": Provider()})
    new = Root(providers={"p": Provider(enabled=False)}, window=Window(2, 3))
    merged, applied, refused = plan_reload(old, new)
    assert merged == Root(providers={"p": Provider()}, window=Window(2, 3))
    assert refused == [
        "providers.p.enabled: cannot change while running; restart to apply True → False"
    ]
    assert [change.path for change in applied] == ["window.low", "window.high"]


def test_added_and_removed_table_entries_are_changes() -> None:
    """Adding or removing an entry of a table of sections is a change at the entry's path."""
    old = Root(providers={"gone": Provider()})
    new = Root(providers={"new one": Provider()})
    merged, _, refused = plan_reload(old, new)
    assert merged == old
    assert [line.split(":")[0] for line in refused] == ['providers."new one"', "providers.gone"]


async def test_sighup_reloads_the_file(tmp_path: Path) -> None:
    """SIGHUP makes reload_on_signal read the file again and apply it."""
    path = tmp_path / "live.toml"
    path.write_text("[pipeline]\ninference_concurrency = 3\n")
    reports: list[ReloadReport] = []
    reloaded = trio.Event()

    def on_report(report: ReloadReport) -> None:
        reports.append(report)
        reloaded.set()

    async with open_gateway(worker=SlowWorker()) as gateway, trio.open_nursery() as nursery:
        await nursery.start(functools.partial(reload_on_signal, gateway, path, on_report=on_report))
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(10):
            await reloaded.wait()
        assert gateway.pipeline.statistics().inference_concurrency == 3
        nursery.cancel_scope.cancel()
    assert [change.path for change in reports[0].applied] == ["pipeline.inference_concurrency"]


@attrs.define(eq=False)
class ServicePart:
    """A part outside the worker stack that takes the ``service`` section (like the
    service's key ring)."""

    seen: list[ServiceConfig] = attrs.field(factory=list)

    def reconfigure(self, section: ServiceConfig, /) -> list[str]:
        """Record the section; refuse nothing."""
        self.seen.append(section)
        return []


def with_keys(*keys: str) -> Config:
    """The default configuration with ``service.api_keys`` set to ``keys``."""
    entries = tuple(ApiKeyConfig(name=f"k{i}", key=Secret(key)) for i, key in enumerate(keys))
    return Config(service=ServiceConfig(api_keys=entries))


async def test_a_section_nobody_takes_is_refused_and_kept() -> None:
    """With no part registered for ``service``, a reloadable change there is refused, named,
    and the old value stays in force."""
    async with open_gateway(with_keys("k-old"), worker=SlowWorker()) as gateway:
        report = gateway.reload(with_keys("k-new"))
        assert gateway.config == with_keys("k-old")
    assert report.applied == ()
    [refusal] = report.refused
    assert refusal.startswith("service.api_keys: no running part takes this option")


async def test_added_part_takes_its_section() -> None:
    """A part given to ``gateway.add`` for a path gets that section of the reloaded
    configuration, and the change is applied."""
    part = ServicePart()
    async with open_gateway(with_keys("k-old"), worker=SlowWorker()) as gateway:
        gateway.add(part, "service")
        report = gateway.reload(with_keys("k-new"))
        assert gateway.config == with_keys("k-new")
    assert part.seen == [with_keys("k-new").service]
    assert [change.path for change in report.applied] == ["service.api_keys"]


async def test_example_reloads_without_dropping_requests(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/config_reload.py reloads mid-burst and all 100 requests complete."""
    examples = Path(__file__).parent.parent / "examples"
    spec = importlib.util.spec_from_file_location("config_reload", examples / "config_reload.py")
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    await example.main(examples / "config.toml")
    printed = capsys.readouterr().out
    assert "applied  pipeline.inference_concurrency: 256 → 8" in printed
    assert "submitted=100, completed=100," in printed


@attrs.define(eq=False)
class HeldWorker:
    """Holds every request until ``release`` is set; ``running_reached`` fires once
    ``target`` requests are running at once."""

    target: int
    release: trio.Event = attrs.field(factory=trio.Event)
    running_reached: trio.Event = attrs.field(factory=trio.Event)
    running: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Wait for the release, then answer "ok"."""
        self.running += 1
        if self.running >= self.target:
            self.running_reached.set()
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        await emit(TextDelta("ok"))
        await emit(Done("stop", "ok"))


async def test_a_served_reload_raising_concurrency_starts_held_requests_at_once() -> None:
    """Over HTTP, with priority admission holding requests for the one slot, a reload to
    three slots starts the two held requests at once (not when the running one ends)."""
    worker = HeldWorker(target=3)
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    statuses: list[int] = []
    async with (
        running_app(make_config({"inference_concurrency": 1}), worker) as (url, app),
        httpx.AsyncClient(base_url=url, timeout=PROMPTLY) as http,
    ):

        async def call() -> None:
            statuses.append((await http.post("/v1/chat/completions", json=body)).status_code)

        gateway = app.state.service.gateway
        with trio.fail_after(PROMPTLY):
            async with trio.open_nursery() as clients:
                for _ in range(3):
                    clients.start_soon(call)
                await wait_for_statistic(http, "submitted", 3)
                await trio.testing.wait_all_tasks_blocked()  # the stage hops are in-process
                assert gateway.pipeline.statistics().stage("inference").held == 2
                assert worker.running == 1
                report = gateway.reload(make_config({"inference_concurrency": 3}))
                assert report.ok, report
                await worker.running_reached.wait()  # hangs (fail_after) if they stay held
                worker.release.set()
    assert statuses == [200, 200, 200]
