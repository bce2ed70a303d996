"""The numbers ``trio-orchestrator top`` shows, from fixtures of what the service answers:
Prometheus' histogram_quantile, rates over two scrapes, errors, providers' health and spend;
the frame rich draws from them; and one poll's reading of a service (httpx.MockTransport)."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from rich.console import Console

from trio_orchestrator.cli.top import poll_service, render, service_root
from trio_orchestrator.cli.top_model import (
    ErrorRow,
    Poll,
    ProviderRow,
    Scrape,
    build_screen,
    histogram_quantile,
    parse_metrics,
    parse_spend,
)

P = "trio_orchestrator"
INF = math.inf


def _histogram(name: str, labels: str, buckets: dict[str, int]) -> str:
    lines = [f"# TYPE {name} histogram"]
    for le, count in buckets.items():
        lines.append(f'{name}_bucket{{le="{le}",{labels}}} {count}')
    total = buckets["+Inf"]
    lines += [f"{name}_count{{{labels}}} {total}", f"{name}_sum{{{labels}}} 1.0"]
    return "\n".join(lines)


def _metrics(*, completed: int, fast: int, slow: int, errors: int = 0) -> Scrape:
    """A /metrics answer: ``fast`` requests under 50 ms, ``slow`` ones between 1 and 2.5 s."""
    labels = 'model="m",outcome="completed",provider="openai"'
    upstream = 'model="m",provider="openai"'
    text = "\n".join(
        [
            f"# TYPE {P}_pipeline_requests_total counter",
            f'{P}_pipeline_requests_total{{outcome="completed"}} {completed}',
            f'{P}_pipeline_requests_total{{outcome="shed"}} 2',
            f"# TYPE {P}_requests_total counter",
            f"{P}_requests_total{{{labels}}} {fast + slow}",
            _histogram(
                f"{P}_request_duration_seconds",
                labels,
                {"0.05": fast, "1.0": fast, "2.5": fast + slow, "+Inf": fast + slow},
            ),
            f"# TYPE {P}_upstream_errors_total counter",
            f'{P}_upstream_errors_total{{error="RateLimited",{upstream}}} {errors}',
            f'{P}_upstream_errors_total{{error="ServerError",{upstream}}} 1',
            f"# TYPE {P}_breaker_state gauge",
            f'{P}_breaker_state{{state="closed",target="openai/m"}} 0.0',
            f'{P}_breaker_state{{state="open",target="openai/m"}} 1.0',
            f'{P}_breaker_state{{state="closed",target="openai/n"}} 1.0',
            f'{P}_breaker_state{{state="open",target="openai/n"}} 0.0',
            "",
        ]
    )
    return parse_metrics(text)


STATS: dict[str, Any] = {
    "draining": False,
    "pipeline": {
        "submitted": 130,
        "completed": 120,
        "failed": 4,
        "shed": 2,
        "expired": 0,
        "cancelled": 0,
        "in_flight": 4,
        "stages": [
            {"name": "rag", "capacity": 512, "queue_depth": 0, "processed": 130, "shed": 0},
            {"name": "inference", "capacity": 1024, "queue_depth": 3, "processed": 126, "shed": 2},
        ],
        "inference_active": 1,
        "inference_concurrency": 256,
        "waiting_to_enter": 0,
    },
    "keys": {
        "openai": {
            "ready": 1,
            "keys": {
                "sk-…a1": {"state": "ready", "model_rests": {}, "rest_seconds": None},
                "sk-…b2": {"state": "resting", "model_rests": {}, "rest_seconds": 12.0},
                "sk-…c3": {"state": "ready", "model_rests": {"m": 3.0}, "rest_seconds": None},
            },
        }
    },
    "budgets": {"per_api_key": {"sha256:aa": 0.5, "sha256:bb": 2.0}, "per_model": {}},
}


def test_histogram_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    """The rank's bucket is found and the value interpolated linearly inside it."""
    buckets = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, INF: 40.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.98)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)


def test_histogram_quantile_edges() -> None:
    """The first bucket starts at 0, the +Inf bucket gives the highest finite bound, and a
    histogram without observations or without +Inf has no quantile."""
    assert histogram_quantile(0.5, {0.1: 10.0, INF: 10.0}) == pytest.approx(0.05)
    assert histogram_quantile(0.9, {1.0: 5.0, 2.0: 5.0, INF: 10.0}) == 2.0
    assert histogram_quantile(0.5, {1.0: 0.0, INF: 0.0}) is None
    assert histogram_quantile(0.5, {1.0: 3.0, 2.0: 3.0}) is None
    assert histogram_quantile(0.5, {-1.0: 4.0, INF: 4.0}) == -1.0


def test_histogram_quantile_evens_out_counts_that_fall() -> None:
    """Bucket counts read mid-update that fall are raised to the one below, as Prometheus
    does, so the quantile stays within the histogram's bounds."""
    assert histogram_quantile(0.5, {0.1: 10.0, 0.5: 8.0, 1.0: 20.0, INF: 20.0}) == 0.1


def test_rates_and_percentiles_are_over_the_window_between_two_scrapes() -> None:
    """Requests per second is the counters' difference over the seconds between polls, and
    the percentiles are of the requests in that window: 100 slow ones before, 50 fast ones
    in it, so the window's p99 is fast while since start the p50 is slow."""
    before = Poll(10.0, metrics=_metrics(completed=100, fast=0, slow=100), stats=STATS)
    after = Poll(12.0, metrics=_metrics(completed=150, fast=50, slow=100), stats=STATS)
    first = build_screen("http://x", None, before)
    assert first.window is None
    assert first.throughput is not None
    assert first.throughput.requests_per_second is None
    assert first.latency[0].p50 == pytest.approx(1.75)
    screen = build_screen("http://x", before, after)
    assert screen.window == 2.0
    assert screen.throughput is not None
    assert screen.throughput.requests_per_second == pytest.approx(25.0)
    assert screen.throughput.outcomes["completed"] == 120  # /v1/stats' own count
    latency = screen.latency[0]
    assert (latency.name, latency.count) == ("request", 50)
    assert latency.p99 is not None
    assert latency.p99 < 0.05
    assert screen.providers[0].requests_per_second == pytest.approx(25.0)


def test_a_counter_that_fell_was_reset_and_counts_from_zero() -> None:
    """After a restart the counters are lower than before: the rate is of what they hold
    now, never negative, as Prometheus' rate() reads a reset."""
    before = Poll(0.0, metrics=_metrics(completed=500, fast=500, slow=0), stats=STATS)
    after = Poll(5.0, metrics=_metrics(completed=10, fast=10, slow=0), stats=STATS)
    screen = build_screen("http://x", before, after)
    assert screen.throughput is not None
    assert screen.throughput.requests_per_second == pytest.approx(2.0)
    assert screen.latency[0].count == 10


def test_errors_by_class_with_their_rates_then_requests_shed() -> None:
    """Upstream errors are added up by class, most first, with their rates; requests shed
    (an outcome, not an upstream error) follow."""
    before = Poll(0.0, metrics=_metrics(completed=1, fast=1, slow=0, errors=2), stats=STATS)
    after = Poll(2.0, metrics=_metrics(completed=1, fast=1, slow=0, errors=6), stats=STATS)
    screen = build_screen("http://x", before, after)
    assert screen.errors == (
        ErrorRow("RateLimited", 6, 2.0),
        ErrorRow("ServerError", 1, 0.0),
        ErrorRow("shed", 2, 0.0),
    )


def test_providers_health_breakers_and_resting_keys() -> None:
    """A provider shows its worst breaker (with how many targets are so), its ready keys,
    and each key resting whole or for a model, with the seconds left."""
    screen = build_screen(
        "http://x", None, Poll(0.0, metrics=_metrics(completed=1, fast=1, slow=0), stats=STATS)
    )
    assert screen.providers == (
        ProviderRow(
            name="openai",
            requests_per_second=None,
            breaker="open 1/2",
            keys_ready=1,
            keys_total=3,
            resting=("sk-…b2 resting 12s", "sk-…c3 ready (m 3s)"),
        ),
    )
    assert screen.in_flight == {
        "in_flight": 4,
        "waiting_to_enter": 0,
        "inference_active": 1,
        "inference_slots": 256,
    }
    assert [(s.name, s.queue_depth) for s in screen.stages] == [("rag", 0), ("inference", 3)]


def test_spenders_come_from_the_spend_endpoint_when_it_answers_else_the_ledger() -> None:
    """Persisted spend is ranked when the service has it; otherwise /v1/stats' budget
    ledger is; without either there is none."""
    ledger = build_screen("http://x", None, Poll(0.0, stats=STATS))
    assert ledger.spenders == (("sha256:bb", 2.0), ("sha256:aa", 0.5))
    assert ledger.spend_source == "budget ledger"
    spend = [("team-a", 1.0), ("team-b", 3.0)]
    persisted = build_screen("http://x", None, Poll(0.0, stats=STATS, spend=spend))
    assert persisted.spenders == (("team-b", 3.0), ("team-a", 1.0))
    assert persisted.spend_source == "/v1/admin/spend"
    bare = build_screen("http://x", None, Poll(0.0, stats={**STATS, "budgets": None}))
    assert (bare.spenders, bare.spend_source) == ((), None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"data": [{"key": "a", "cost_usd": 1.5}]}, [("a", 1.5)]),
        ([{"api_key_id": "b", "spend": 2}], [("b", 2.0)]),
        ({"data": []}, []),
        ({"data": [{"key": "a"}]}, None),
        ({"object": "spend"}, None),
        ("nonsense", None),
    ],
)
def test_parse_spend_reads_the_usual_shapes_and_refuses_others(
    body: object, expected: list[tuple[str, float]] | None
) -> None:
    """A list of key/dollars rows, bare or under data, is read; anything else is None."""
    assert parse_spend(body) == expected


def test_an_unreachable_service_is_one_error_and_the_next_rates_start_over() -> None:
    """A failed poll is a screen holding only its error; the poll after it has no window
    (the one before the failure is too old to rate against)."""
    down = Poll(1.0, error="cannot reach http://x: connection refused")
    screen = build_screen("http://x", None, down)
    assert screen.error == down.error
    assert screen.throughput is None
    back = build_screen("http://x", down, Poll(2.0, metrics=_metrics(completed=1, fast=1, slow=0)))
    assert back.window is None
    assert back.error is None


def test_the_frame_shows_the_numbers_and_the_error_line() -> None:
    """rich draws every section with the service's numbers, and an error as one line
    saying it retries."""
    console = Console(width=120, record=True, color_system=None)
    before = Poll(10.0, metrics=_metrics(completed=100, fast=0, slow=100), stats=STATS)
    after = Poll(12.0, metrics=_metrics(completed=150, fast=50, slow=100), stats=STATS)
    console.print(render(build_screen("http://x", before, after), 1.0))
    text = console.export_text()
    for shown in (
        "requests/s 25.0",
        "completed 120",
        "Latency (last 2.0 s)",
        "In flight 4 · inference 1/256",
        "RateLimited",
        "open 1/2",
        "sk-…b2 resting 12s",
        "Top keys by spend (budget ledger)",
        "$2.0000",
    ):
        assert shown in text, shown
    console.print(render(build_screen("http://x", None, Poll(0.0, error="cannot reach x")), 2.0))
    assert "✗ cannot reach x\nretrying every 2 s" in console.export_text()


def test_the_service_root_drops_v1_and_slashes() -> None:
    """--url takes the service's root or its OpenAI root alike."""
    assert service_root("http://h:1/v1/") == service_root("http://h:1/") == "http://h:1"


def _service(routes: dict[str, httpx.Response]) -> httpx.AsyncClient:
    """A client whose service answers each path from ``routes``, 404 otherwise."""

    def answer(request: httpx.Request) -> httpx.Response:
        return routes.get(request.url.path, httpx.Response(404))

    return httpx.AsyncClient(base_url="http://x", transport=httpx.MockTransport(answer))


async def test_a_poll_reads_stats_metrics_and_spend() -> None:
    """A poll takes /v1/stats, /metrics and /v1/admin/spend when they answer."""
    routes = {
        "/v1/stats": httpx.Response(200, json=STATS),
        "/metrics": httpx.Response(200, text=f"# TYPE {P}_x counter\n{P}_x_total 3.0\n"),
        "/v1/admin/spend": httpx.Response(200, json={"data": [{"key": "a", "cost_usd": 1}]}),
    }
    async with _service(routes) as client:
        poll = await poll_service(client, "http://x", 5.0)
    assert poll.error is None
    assert poll.stats == STATS
    assert poll.metrics is not None
    assert poll.metrics.total(f"{P}_x_total") == 3.0
    assert poll.spend == [("a", 1.0)]


async def test_a_poll_without_metrics_or_spend_still_has_the_stats() -> None:
    """Metrics switched off (404) and no spend endpoint leave the rest of the screen."""
    async with _service({"/v1/stats": httpx.Response(200, json=STATS)}) as client:
        poll = await poll_service(client, "http://x", 5.0)
    assert (poll.error, poll.metrics, poll.spend) == (None, None, None)
    assert poll.stats == STATS


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(401), "http://x refused the key (401): pass one with --api-key-env"),
        (httpx.Response(503), "http://x/v1/stats answered 503"),
        (httpx.Response(200, text="<html>"), "http://x/v1/stats answered no JSON object"),
        (httpx.Response(200, json=[1, 2]), "http://x/v1/stats answered no JSON object"),
    ],
)
async def test_a_poll_the_service_refuses_or_garbles_is_one_error(
    answer: httpx.Response, error: str
) -> None:
    """A refused key, a failing service or something that is not the gateway is a line."""
    async with _service({"/v1/stats": answer}) as client:
        poll = await poll_service(client, "http://x", 5.0)
    assert poll.error is not None
    assert poll.error.startswith(error)
